"""text-generation-inference: its image and command line (safetensors weights, GPU pools)."""

from __future__ import annotations

from .. import api
from ..api import ModelDeployment, ResolvedModel
from ..settings import Settings
from .pods import PORT, flag
from .volume import snapshot_dir

NAME = "tgi"
COMMAND = None  # the image's entrypoint, text-generation-launcher
LIVENESS = "/health", 5  # the liveness probe: path, timeoutSeconds


def image(md: ModelDeployment, gpus: int, settings: Settings) -> str:
    return md.spec.engine.image or settings.images.tgi


def shared_memory(gpus: int) -> str:
    """/dev/shm: NCCL shares memory between shards through it."""
    return "1Gi"


def env() -> list[dict]:
    """The weights are on the volume: never ask the Hub."""
    return [{"name": "HF_HUB_OFFLINE", "value": "1"}, {"name": "HF_HOME", "value": "/tmp/hf"}]


def args(md: ModelDeployment, resolved: ResolvedModel, gpus: int) -> list[str]:
    s = md.spec.serving or api.ServingSpec()
    out = ["--model-id", snapshot_dir(resolved), "--port", str(PORT), "--hostname", "0.0.0.0",
           "--num-shard", str(max(gpus, 1))]
    flag(out, "--max-concurrent-requests", s.max_concurrent_requests)
    flag(out, "--max-input-tokens", s.max_input_tokens)
    flag(out, "--max-total-tokens", s.max_total_tokens or s.context_length)
    flag(out, "--quantize", s.quantize)
    flag(out, "--dtype", s.dtype)
    return out + list(md.spec.engine.args)
