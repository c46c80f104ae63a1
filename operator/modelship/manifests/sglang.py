"""SGLang's server (`python3 -m sglang.launch_server`): its image and command line
(safetensors weights, GPU pools). Its radix cache (prefix reuse) is on by default."""

from __future__ import annotations

import json

from .. import api
from ..api import ModelDeployment, ResolvedModel
from ..settings import Settings
from .pods import PORT, flag
from .volume import snapshot_dir

NAME = "sglang"
COMMAND = ["python3", "-m", "sglang.launch_server"]
# SGLang's /health runs a one-token generation and waits up to SGLANG_HEALTH_CHECK_TIMEOUT
# (20 s) for the scheduler to answer (sglang 0.5.20, entrypoints/http_server.py,
# health_generate), longer than a probe's 5 s under a long prefill. With
# SGLANG_ENABLE_HEALTH_ENDPOINT_GENERATION=false (env() below) /health answers from the server's
# state alone (503 while it starts and warms up, or shuts down): startup and readiness ask it.
# Liveness asks /health_generate, which still generates (a wedged scheduler restarts the pod),
# with a timeout past SGLang's own budget.
LIVENESS = "/health_generate", 25  # path, timeoutSeconds


def image(md: ModelDeployment, gpus: int, settings: Settings) -> str:
    return md.spec.engine.image or settings.images.sglang


def shared_memory(gpus: int) -> str:
    """/dev/shm: the tensor-parallel workers' NCCL buffers and SGLang's own IPC (2Gi a GPU)."""
    return f"{2 * max(gpus, 1)}Gi"


def env() -> list[dict]:
    """The weights are on the volume: never ask the Hub. /health without a generation (see
    LIVENESS). Every cache (Triton's, PyTorch's, FlashInfer's JIT, outlines') goes to /tmp:
    the root file system is read-only."""
    return [{"name": "HF_HUB_OFFLINE", "value": "1"}, {"name": "HF_HOME", "value": "/tmp/hf"},
            {"name": "SGLANG_ENABLE_HEALTH_ENDPOINT_GENERATION", "value": "false"},
            {"name": "XDG_CACHE_HOME", "value": "/tmp/cache"}, {"name": "TRITON_CACHE_DIR", "value": "/tmp/triton"},
            {"name": "TORCHINDUCTOR_CACHE_DIR", "value": "/tmp/inductor"},
            {"name": "FLASHINFER_WORKSPACE_BASE", "value": "/tmp"},
            {"name": "OUTLINES_CACHE_DIR", "value": "/tmp/outlines"}]


def generation(g: api.GenerationDefaults | None) -> str | None:
    """`serving.generation` as `--preferred-sampling-params` (SGLang's own names; its top_k
    turns off at -1, not 0)."""
    given = g.model_dump(exclude_none=True) if g else {}
    if given.get("top_k") == 0:
        given["top_k"] = -1
    return json.dumps(given, separators=(",", ":"), sort_keys=True) if given else None


def args(md: ModelDeployment, resolved: ResolvedModel, gpus: int) -> list[str]:
    s = md.spec.serving or api.ServingSpec()
    out = ["--model-path", snapshot_dir(resolved), "--served-model-name", md.name, "--host", "0.0.0.0",
           "--port", str(PORT), "--tp-size", str(max(gpus, 1)), "--enable-metrics"]
    flag(out, "--context-length", s.context_length)
    flag(out, "--max-running-requests", s.max_concurrent_requests)
    flag(out, "--dtype", s.dtype)
    flag(out, "--quantization", s.quantize)
    flag(out, "--mem-fraction-static", s.gpu_memory_utilization)
    flag(out, "--preferred-sampling-params", generation(s.generation))
    return out + list(md.spec.engine.args)
