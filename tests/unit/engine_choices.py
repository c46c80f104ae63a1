"""The pinned engines' own choice lists, copied from their wheels (`pip download --no-deps
vllm==0.29.0 sglang==0.5.20`), so that a test can hold modelship's tables to them without the
engines installed. Update with the image tags in operator/modelship/settings.py."""

from __future__ import annotations

# vllm 0.29.0, vllm/model_executor/layers/quantization/__init__.py: QuantizationMethods
# (`--quantization`/`-q` takes these).
VLLM_VERSION = "0.29.0"
VLLM_QUANTIZATION = (
    "awq", "auto_awq", "fp8", "fbgemm_fp8", "fp_quant", "modelopt", "modelopt_fp4", "modelopt_mxfp8",
    "modelopt_mixed", "auto_gptq", "gptq", "gptq_marlin", "awq_marlin", "humming", "compressed-tensors",
    "experts_int8", "quark", "moe_wna16", "torchao", "inc", "mxfp4", "gpt_oss_mxfp4", "deepseek_v4_fp8", "online",
    "fp8_per_tensor", "fp8_per_block", "fp8_per_channel", "int8_per_channel_weight_only", "nvfp4_per_token", "mxfp8",
)

# sglang 0.5.20, sglang/srt/arg_groups/choices.py: QUANTIZATION_CHOICES (`--quantization`).
SGLANG_VERSION = "0.5.20"
SGLANG_QUANTIZATION = (
    "awq", "fp8", "mxfp8", "gptq", "gptq_marlin", "awq_marlin", "bitsandbytes", "gguf", "modelopt", "modelopt_fp8",
    "modelopt_fp4", "nvfp4_online", "modelopt_mixed", "petit_nvfp4", "w8a8_int8", "w8a8_fp8", "moe_wna16", "w4afp8",
    "mxfp4", "auto-round", "auto-round-int8", "compressed-tensors", "modelslim", "mxfp_w4a8", "quark",
    "quark_int4fp8_moe", "quark_mxfp4", "mlx_q4", "mlx_q8", "unquant", "humming",
)
