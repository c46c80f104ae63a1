"""The local node's command line: `python -m modelship_testbed.localnode --state-dir D --name N`
runs the test bed's local node (the supervisor starts it); with another name and the flags
below, an extra process-backed node beside it (see `extra.py`)."""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import logging
import os
import signal
from pathlib import Path

from ..config import TestbedConfig
from .agent import Agent


def parse_taint(text: str) -> dict:
    """`key=value:Effect` (or `key:Effect`), as `kubectl taint` writes one."""
    spec, sep, effect = text.rpartition(":")
    if not sep or effect not in ("NoSchedule", "PreferNoSchedule", "NoExecute") or not spec:
        raise argparse.ArgumentTypeError(f"taint {text!r}: write key=value:Effect (NoSchedule, PreferNoSchedule "
                                         "or NoExecute)")
    key, _, value = spec.partition("=")
    return {"key": key, "value": value, "effect": effect} if value else {"key": key, "effect": effect}


def parse_label(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"label {text!r}: write key=value")
    return key, value


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="modelship_testbed.localnode")
    parser.add_argument("--state-dir", required=True)
    parser.add_argument("--name", required=True)
    # For an extra node beside the test bed's local node (each defaults to the test bed's setting):
    parser.add_argument("--gpus", type=int, help="GPUs the node declares (>0: a gpu pool node, tainted)")
    parser.add_argument("--pod-cidr", help="its pods' loopback addresses, apart from every other node's")
    parser.add_argument("--kubelet-port", type=int, help="the port its Node names (its kubelet-streaming's)")
    parser.add_argument("--kubelet-local-port", type=int, help="the agent's own plain HTTP API, on 127.0.0.1")
    parser.add_argument("--label", type=parse_label, action="append", default=[], help="key=value (repeat)")
    parser.add_argument("--taint", type=parse_taint, action="append", default=[], help="key=value:Effect (repeat)")
    parser.add_argument("--pass-env", action="append", default=[], metavar="NAME",
                        help="a variable of this environment that every container gets too (repeat)")
    return parser.parse_args(argv)


def node_config(cfg: TestbedConfig, args: argparse.Namespace) -> TestbedConfig:
    """The test bed's configuration with the node's own overrides."""
    if args.gpus is not None:
        cfg.local_node_gpus = args.gpus
    if args.pod_cidr:
        net = ipaddress.ip_network(args.pod_cidr)
        if not net.subnet_of(ipaddress.ip_network("127.0.0.0/8")):
            raise SystemExit(f"--pod-cidr {args.pod_cidr}: pods stay on loopback, in 127.0.0.0/8")
        cfg.local_pod_cidr = str(net)
    if args.kubelet_port:
        cfg.ports.kubelet = args.kubelet_port
    if args.kubelet_local_port:
        cfg.ports.kubelet_local = args.kubelet_local_port
    return cfg


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    os.environ["MODELSHIP_TESTBED_DIR"] = args.state_dir
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per probe is noise
    cfg = node_config(TestbedConfig.load(Path(args.state_dir) / "config.json"), args)

    async def amain() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await Agent(cfg, args.name, dict(args.label), args.taint, args.pass_env).run(stop)

    asyncio.run(amain())
