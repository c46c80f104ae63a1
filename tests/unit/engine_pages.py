"""Metrics pages as the engines write them (Prometheus's text format, prometheus_client's
layout), for the router's scraper: vLLM's (v1 engine: `engine` and `model_name` labels, about
300 lines, histograms mostly), SGLang's (`model_name`, ranks, `engine_type`), with the load
figures given. Names and label sets from the engines' own sources (vllm/v1/metrics/loggers.py,
sglang/srt/metrics/collector.py)."""

from __future__ import annotations

LATENCY = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0,
           80.0)
TOKENS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000)


def _process() -> list[str]:
    out = []
    for gen in range(3):
        out += [f'python_gc_objects_collected_total{{generation="{gen}"}} {1000 * (gen + 1)}.0']
    out += ["# HELP process_virtual_memory_bytes Virtual memory size in bytes.",
            "# TYPE process_virtual_memory_bytes gauge", "process_virtual_memory_bytes 3.4e+10",
            "# HELP process_resident_memory_bytes Resident memory size in bytes.",
            "# TYPE process_resident_memory_bytes gauge", "process_resident_memory_bytes 2.1e+09",
            "process_start_time_seconds 1.76e+09", "process_cpu_seconds_total 1234.5", "process_open_fds 97.0",
            "process_max_fds 1.048576e+06"]
    return out


def _histogram(name: str, labels: str, buckets: tuple, what: str) -> list[str]:
    out = [f"# HELP {name} {what}", f"# TYPE {name} histogram"]
    for i, le in enumerate(buckets):
        out.append(f'{name}_bucket{{{labels},le="{float(le)}"}} {float(i * 3)}')
    out += [f'{name}_bucket{{{labels},le="+Inf"}} 60.0', f"{name}_count{{{labels}}} 60.0",
            f"{name}_sum{{{labels}}} 123.25", f"# HELP {name}_created {what}", f"# TYPE {name}_created gauge",
            f"{name}_created{{{labels}}} 1.7600000012e+09"]
    return out


def vllm_page(running: float = 0, waiting: float = 0, kv: float = 0.0, model: str = "m", engines: int = 1,
              legacy: bool = False) -> str:
    """vLLM's /metrics: `engines` data-parallel engines (a series each); `legacy`: KV usage under
    its older name, `vllm:gpu_cache_usage_perc`, as releases before the rename wrote it."""
    out = _process()
    kv_name = "vllm:gpu_cache_usage_perc" if legacy else "vllm:kv_cache_usage_perc"
    for e in range(engines):
        labels = f'engine="{e}",model_name="{model}"'
        out += ["# HELP vllm:num_requests_running Number of requests in model execution batches.",
                "# TYPE vllm:num_requests_running gauge", f"vllm:num_requests_running{{{labels}}} {float(running)}",
                "# HELP vllm:num_requests_waiting Number of requests waiting to be processed.",
                "# TYPE vllm:num_requests_waiting gauge", f"vllm:num_requests_waiting{{{labels}}} {float(waiting)}",
                f"# HELP {kv_name} KV-cache usage. 1 means 100 percent usage.", f"# TYPE {kv_name} gauge",
                f"{kv_name}{{{labels}}} {kv}",
                "# TYPE vllm:prefix_cache_queries_total counter",
                f"vllm:prefix_cache_queries_total{{{labels}}} 52311.0",
                f"vllm:prefix_cache_hits_total{{{labels}}} 40960.0",
                "# TYPE vllm:num_preemptions_total counter", f"vllm:num_preemptions_total{{{labels}}} 0.0",
                f"vllm:prompt_tokens_total{{{labels}}} 52311.0", f"vllm:generation_tokens_total{{{labels}}} 9000.0"]
        for reason in ("stop", "length", "abort"):
            out.append(f'vllm:request_success_total{{{labels},finished_reason="{reason}"}} 20.0')
        for name in ("vllm:time_to_first_token_seconds", "vllm:inter_token_latency_seconds",
                     "vllm:e2e_request_latency_seconds", "vllm:request_queue_time_seconds",
                     "vllm:request_inference_time_seconds", "vllm:request_prefill_time_seconds"):
            out += _histogram(name, labels, LATENCY, "Histogram of a time in seconds.")
        for name in ("vllm:request_prompt_tokens", "vllm:request_generation_tokens"):
            out += _histogram(name, labels, TOKENS, "Number of tokens per request.")
        out.append(f'vllm:cache_config_info{{block_size="16",cache_dtype="auto",enable_prefix_caching="True",'
                   f'engine="{e}",gpu_memory_utilization="0.9",num_gpu_blocks="27000"}} 1.0')
    return "\n".join(out) + "\n"


def sglang_page(running: float = 0, waiting: float = 0, usage: float = 0.0, model: str = "m", ranks: int = 1) -> str:
    """SGLang's /metrics (with `--enable-metrics`): a series per data-parallel rank."""
    out = _process()
    for r in range(ranks):
        labels = f'dp_rank="{r}",engine_type="unified",model_name="{model}",pp_rank="0",tp_rank="0"'
        out += ["# HELP sglang:num_running_reqs The number of running requests.",
                "# TYPE sglang:num_running_reqs gauge",
                f"sglang:num_running_reqs{{{labels}}} {float(running)}",
                "# HELP sglang:num_queue_reqs The number of requests in the waiting queue.",
                "# TYPE sglang:num_queue_reqs gauge", f"sglang:num_queue_reqs{{{labels}}} {float(waiting)}",
                "# HELP sglang:token_usage The token usage.", "# TYPE sglang:token_usage gauge",
                f"sglang:token_usage{{{labels}}} {usage}",
                f"sglang:num_used_tokens{{{labels}}} 1234.0", f"sglang:gen_throughput{{{labels}}} 88.5",
                f"sglang:cache_hit_rate{{{labels}}} 0.61"]
        out += _histogram("sglang:time_to_first_token_seconds", labels, LATENCY, "Histogram of time to first token.")
        out += _histogram("sglang:e2e_request_latency_seconds", labels, LATENCY, "Histogram of latency.")
    return "\n".join(out) + "\n"
