"""The engines a target may be served by, as the router needs to know them: the name a user
reads in a message, whether the engine has TGI's own API, whether the router fills in the
model's generation defaults, and the metrics that say its load. One table: the app, forwarding,
the scraper and the docs read it.

Names are the operator's (`status.resolved.engine`, the pods' `modelship.io/engine` label).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Engine:
    name: str  # as the operator says it
    display: str  # as a message to a user says it
    tgi_api: bool = False  # /generate, /generate_stream, /info (the router's /models/{name}/...)
    # The router applies spec.serving.generation to the bodies it sends: TGI has no server-side
    # defaults, and SGLang's OpenAI routes fill every sampling field of a request in themselves
    # (the request's, else the model's generation_config.json, else OpenAI's) before its
    # --preferred-sampling-params could apply, which therefore reaches its native /generate only.
    # vLLM (--override-generation-config) and llama.cpp (--temp ...) apply them: bodies left as sent.
    router_defaults: bool = False
    openai_top_k: bool = False  # its OpenAI routes take top_k (an extension; TGI's take none)
    # Must be asked by its served name: the router writes it into `model` on the OpenAI routes.
    # vLLM answers 404 to any other name; SGLang reads a `model` with ':' as `base:adapter`
    # (a LoRA adapter) and answers 400 when LoRA is not enabled, so an alias like qwen2.5:7b
    # must not reach it. TGI and llama.cpp serve whatever `model` says.
    served_name: bool = False
    running: tuple[str, ...] = ()  # gauges: requests the engine is working on
    waiting: tuple[str, ...] = ()  # gauges: requests queued
    kv_usage: tuple[str, ...] = ()  # gauges: the KV cache's share in use, 0..1


ENGINES = {e.name: e for e in (
    Engine("tgi", "TGI", tgi_api=True, router_defaults=True,
           running=("tgi_batch_current_size",), waiting=("tgi_queue_size",)),
    Engine("vllm", "vLLM", served_name=True,
           running=("vllm:num_requests_running",), waiting=("vllm:num_requests_waiting",),
           kv_usage=("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc")),  # (the second: older, deprecated)
    Engine("sglang", "SGLang", router_defaults=True, openai_top_k=True, served_name=True,
           running=("sglang:num_running_reqs",), waiting=("sglang:num_queue_reqs",), kv_usage=("sglang:token_usage",)),
    Engine("llamacpp", "llama.cpp", running=("llamacpp:requests_processing",),
           waiting=("llamacpp:requests_deferred",)),
)}
UNKNOWN = Engine("", "an engine not known yet (its ModelDeployment is not resolved)")


def engine(name: str) -> Engine:
    """The engine of that name; UNKNOWN for a name the router does not know (a ModelDeployment
    the operator has not resolved yet, with `engine.type: auto`)."""
    return ENGINES.get(name, UNKNOWN)


def display(name: str) -> str:
    return engine(name).display
