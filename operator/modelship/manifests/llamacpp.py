"""llama.cpp's `llama-server`: its image and command line (GGUF weights, CPU or GPU pools)."""

from __future__ import annotations

from .. import api
from ..api import ModelDeployment, ResolvedModel
from ..settings import Settings
from .pods import PORT, flag
from .volume import snapshot_dir

NAME = "llamacpp"
COMMAND = None  # the image's entrypoint, llama-server
LIVENESS = "/health", 5  # the liveness probe: path, timeoutSeconds


def image(md: ModelDeployment, gpus: int, settings: Settings) -> str:
    return md.spec.engine.image or (settings.images.llamacpp_cuda if gpus else settings.images.llamacpp_cpu)


def shared_memory(gpus: int) -> None:
    """One process: no shards to share memory between."""
    return None


def env() -> list[dict]:
    return []


def args(md: ModelDeployment, resolved: ResolvedModel, gpus: int) -> list[str]:
    s = md.spec.serving or api.ServingSpec()
    model_file = resolved.model_file or next(f.path for f in resolved.files if f.path.endswith(".gguf"))
    out = ["-m", f"{snapshot_dir(resolved)}/{model_file}", "--host", "0.0.0.0", "--port", str(PORT),
           "--alias", md.name, "--metrics"]
    if s.chat_template:
        out += ["--chat-template", s.chat_template]
    else:
        out.append("--jinja")
    # Default: the model's own context, at most 4096 (llama.cpp would take the trained length,
    # which can be 128k tokens and more memory than the pool has).
    flag(out, "-c", s.context_length or min(resolved.context_length or 4096, 4096))
    flag(out, "--parallel", s.parallel)
    flag(out, "-t", s.threads)
    if gpus:
        flag(out, "-ngl", s.gpu_layers if s.gpu_layers is not None else 999)
    g = s.generation or api.GenerationDefaults()
    flag(out, "--temp", g.temperature)
    flag(out, "--top-p", g.top_p)
    flag(out, "--top-k", g.top_k)
    flag(out, "-n", g.max_new_tokens)
    return out + list(md.spec.engine.args)
