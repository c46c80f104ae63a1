"""vLLM's OpenAI-compatible server (`vllm serve`): its image and command line (safetensors
weights, GPU pools)."""

from __future__ import annotations

import json

from .. import api
from ..api import ModelDeployment, ResolvedModel
from ..settings import Settings
from .pods import PORT, flag
from .volume import snapshot_dir

NAME = "vllm"
COMMAND = ["vllm", "serve"]  # the image's entrypoint is `vllm serve` too; said here, not relied on
LIVENESS = "/health", 5  # the liveness probe: path, timeoutSeconds


def image(md: ModelDeployment, gpus: int, settings: Settings) -> str:
    return md.spec.engine.image or settings.images.vllm


def shared_memory(gpus: int) -> str:
    """/dev/shm: vLLM's workers pass tensors and NCCL its buffers through it (2Gi a GPU)."""
    return f"{2 * max(gpus, 1)}Gi"


def env() -> list[dict]:
    """The weights are on the volume: never ask the Hub, nor report usage (an air-gapped
    cluster has no route out). Every cache goes to /tmp: the root file system is read-only."""
    return [{"name": "HF_HUB_OFFLINE", "value": "1"}, {"name": "HF_HOME", "value": "/tmp/hf"},
            {"name": "VLLM_NO_USAGE_STATS", "value": "1"}, {"name": "DO_NOT_TRACK", "value": "1"},
            {"name": "VLLM_CACHE_ROOT", "value": "/tmp/vllm"}, {"name": "VLLM_CONFIG_ROOT", "value": "/tmp/vllm"},
            {"name": "XDG_CACHE_HOME", "value": "/tmp/cache"}, {"name": "TRITON_CACHE_DIR", "value": "/tmp/triton"},
            {"name": "TORCHINDUCTOR_CACHE_DIR", "value": "/tmp/inductor"}]


def generation(g: api.GenerationDefaults | None) -> str | None:
    """`serving.generation` as `--override-generation-config`: keys of generation_config.json
    (vLLM maps max_new_tokens to max_tokens; top_k 0 is off there too)."""
    given = g.model_dump(exclude_none=True) if g else {}
    return json.dumps(given, separators=(",", ":"), sort_keys=True) if given else None


def args(md: ModelDeployment, resolved: ResolvedModel, gpus: int) -> list[str]:
    s = md.spec.serving or api.ServingSpec()
    out = [snapshot_dir(resolved), "--served-model-name", md.name, "--host", "0.0.0.0", "--port", str(PORT),
           "--tensor-parallel-size", str(max(gpus, 1)), "--enable-prefix-caching"]
    flag(out, "--max-model-len", s.context_length)
    flag(out, "--max-num-seqs", s.max_concurrent_requests)
    flag(out, "--dtype", s.dtype)
    flag(out, "--quantization", s.quantize)
    flag(out, "--gpu-memory-utilization", s.gpu_memory_utilization)
    flag(out, "--override-generation-config", generation(s.generation))
    return out + list(md.spec.engine.args)
