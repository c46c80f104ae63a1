"""What the fakes read of the model and of their command lines, as the engines would."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

DEFAULT_CONTEXT = 4096


def context_length(model: str) -> int:
    """The model's own context length, from config.json as the engines derive it when not
    told (max_position_embeddings and its aliases), else DEFAULT_CONTEXT."""
    try:
        config = json.loads((Path(model) / "config.json").read_text())
    except (OSError, ValueError):
        return DEFAULT_CONTEXT
    for key in ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length", "max_sequence_length"):
        if isinstance(config.get(key), int):
            return config[key]
    return DEFAULT_CONTEXT


def parse_len(text: str) -> int:
    """vLLM's human-readable integers: 4096, 32k (32000), 32K (32768), 1m, 1M."""
    units = {"k": 10 ** 3, "K": 2 ** 10, "m": 10 ** 6, "M": 2 ** 20}
    if text and text[-1] in units:
        return int(float(text[:-1]) * units[text[-1]])
    return int(text)


def check_model_path(engine: str, model: str) -> None:
    """A model given as an absolute path must exist (the engines fail to start otherwise)."""
    if model.startswith("/") and not os.path.exists(model):
        raise SystemExit(f"fake {engine}: model path {model} does not exist")


def known_flags(p: argparse.ArgumentParser, switches: tuple[str, ...], valued: tuple[str, ...]) -> None:
    """Real flags of the engine that the fake takes and ignores (a switch, or one value), so
    that a command line the engine would take starts the fake; any other flag is an error
    (exit 2), as the engines' own argparse parsers make it."""
    for flag in switches:
        p.add_argument(flag, action="store_true", dest=f"ignored_{flag}", help=argparse.SUPPRESS)
    for flag in valued:
        p.add_argument(flag, dest=f"ignored_{flag}", help=argparse.SUPPRESS)
