"""Decisions that depend on the spec, the resolved model and the operator's settings alone
(none on what runs): which engine, which pool, whether the volume can hold the files. Each
raises `SpecError` with a message that says what to fix."""

from __future__ import annotations

from ..api import (ENGINE_NAMES, GPU_ENGINES, QUANTIZE_ENGINES, SERVING_ENGINES, ModelDeployment, ResolvedModel,
                   names)
from ..manifests import Placement
from ..settings import Settings
from ..units import GIB, quantity_bytes
from .types import SpecError


def choose_engine(requested: str, fmt: str, default: str = "tgi", kept: str | None = None) -> str:
    """The engine for `engine.type` and the weights' format; `default`: the operator's
    `defaultEngine`, which `auto` takes for safetensors weights; `kept`: the engine of the last
    resolution of this same spec.model and engine.type (a revisionPolicy Follow re-check),
    which `auto` keeps while the weights stay safetensors: a new defaultEngine applies when
    spec.model or engine.type changes, never to a model that serves (docs/serving.md)."""
    if fmt == "gguf":
        if requested in ("auto", "llamacpp"):
            return "llamacpp"
        raise SpecError("EngineMismatch", f"engine.type is {requested}, but the resolved files are GGUF, which "
                                          f"llama.cpp serves: use engine.type llamacpp (or auto), or a "
                                          f"safetensors repo")
    if requested == "auto":
        return kept if kept in GPU_ENGINES else default
    if requested == "llamacpp":
        raise SpecError("EngineMismatch", "engine.type is llamacpp, which serves GGUF files, but this repository "
                                          "has safetensors weights: use engine.type auto, tgi, vllm or sglang, "
                                          "or a GGUF repo")
    return requested


def place(md: ModelDeployment, engine: str, settings: Settings) -> Placement:
    spec = md.spec
    gpus = spec.gpus if spec.gpus is not None else (1 if engine in GPU_ENGINES else 0)
    if engine in GPU_ENGINES and gpus == 0:
        raise SpecError("GPUsRequired", f"{ENGINE_NAMES[engine]} needs at least one GPU: set gpus to 1 or more")
    name = spec.pool or (settings.default_gpu_pool if gpus else settings.default_cpu_pool)
    profile = settings.pools.get(name)
    if profile is None:
        raise SpecError("PoolNotFound", f"pool {name!r} is not configured in the operator; known pools: "
                                        f"{', '.join(sorted(settings.pools))}")
    if gpus and not profile.gpu_resource:
        raise SpecError("PoolHasNoGPUs", f"pool {name!r} has no GPUs (no gpuResource in the operator's "
                                         f"configuration), but {gpus} GPU(s) were asked for: set gpus to 0 or "
                                         f"choose a GPU pool")
    if gpus and profile.max_gpus is not None and gpus > profile.max_gpus:
        raise SpecError("TooManyGPUs", f"pool {name!r} has at most {profile.max_gpus} GPUs per node, but gpus "
                                       f"is {gpus}: lower gpus or choose a larger pool")
    return Placement(name, profile, gpus)


def check_settings(md: ModelDeployment, engine: str) -> None:
    """Serving fields the chosen engine cannot honour (the API server refuses them where
    engine.type names the engine; with `auto` only the resolved format, and the operator's
    defaultEngine, tell)."""
    serving = md.spec.serving.wire() if md.spec.serving else {}
    unused = [f for f, owners in SERVING_ENGINES.items() if f in serving and engine not in owners]
    if not unused:
        check_quantize(serving.get("quantize"), engine)
        return
    groups: dict[tuple, list[str]] = {}
    for f in unused:
        groups.setdefault(SERVING_ENGINES[f], []).append(f"serving.{f}")
    said = "; ".join(f"{', '.join(fs)} {'is a' if len(fs) == 1 else 'are'} {names(owners)} "
                     f"setting{'s' if len(fs) > 1 else ''}" for owners, fs in groups.items())
    one = len(unused) == 1
    if engine == "llamacpp":
        served, fix = "llama.cpp (GGUF weights)", "choose a model in the other format"
    else:
        owners = [e for e in GPU_ENGINES if any(e in SERVING_ENGINES[f] for f in unused)]
        served = f"{ENGINE_NAMES[engine]} (safetensors weights)"
        fix = f"set engine.type to {' or '.join(owners)}" if owners else "choose a model in the other format"
    raise SpecError("SettingNotForEngine", f"{said}, but the model is served by {served}, which would ignore "
                                           f"{'it' if one else 'them'}: remove {'it' if one else 'them'}, or {fix}")


def check_quantize(quantize: str | None, engine: str) -> None:
    """A serving.quantize method the chosen GPU engine does not have (the API server refuses it
    where engine.type names the engine)."""
    if quantize is None or engine not in GPU_ENGINES or engine in QUANTIZE_ENGINES[quantize]:
        return
    owners = QUANTIZE_ENGINES[quantize]
    raise SpecError("SettingNotForEngine", f"serving.quantize {quantize} is a {names(owners)} method, but the model "
                                           f"is served by {ENGINE_NAMES[engine]} (safetensors weights), which does "
                                           f"not have it: choose another, or set engine.type to "
                                           f"{' or '.join(owners)}")


def check_storage(md: ModelDeployment, resolved: ResolvedModel) -> None:
    if md.spec.storage.shared_cache and md.spec.model.endpoint:
        # Paths in the cache name a repo and a commit, not where they came from: a Hub of one's
        # own could otherwise put other bytes under a name others trust.
        raise SpecError("SharedCacheEndpoint", "storage.sharedCache holds files from the operator's hubEndpoint "
                                               "only; remove model.endpoint or set storage.sharedCache: false")
    size = md.spec.storage.size
    if size is not None and quantity_bytes(size) < resolved.total_bytes:
        need = f"{-(-resolved.total_bytes // GIB)}Gi"
        raise SpecError("StorageTooSmall", f"storage.size {size} is smaller than the model's files "
                                           f"({resolved.total_bytes} bytes): set it to at least {need}, or "
                                           f"remove it to size the volume automatically")


def check_ownership(conflicts: list[str]) -> None:
    if conflicts:
        raise SpecError("ResourceConflict", f"{', '.join(conflicts)} already exist(s) and do(es) not belong to this "
                                            f"ModelDeployment; the operator does not take over objects it did not "
                                            f"create: delete or rename them, or give the ModelDeployment another "
                                            f"name")
