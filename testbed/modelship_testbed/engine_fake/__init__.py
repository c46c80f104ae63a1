"""Stand-ins for the GPU inference engines (test code only): one shared core (`core`:
tokenizer stand-in, deterministic output, prefix cache, batching, KV blocks, timing) and one
protocol module per engine, each runnable with `python -m`: `tgi`, `vllm`, `sglang`."""
