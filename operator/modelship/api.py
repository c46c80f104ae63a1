"""The ModelDeployment API (`modelship.io/v1alpha1`), defined once.

These pydantic models are the single source of the API: the CRD in `crds/` and the
reference in docs/reference.md are generated from them (`modelship crd`), and the operator
parses every object it reads with them. Field names are public API and follow Kubernetes'
own conventions (camelCase, `...Ref` for references, `...Seconds` for durations).

Cross-field rules are CEL expressions (`x-kubernetes-validations`) that the API server
enforces at `kubectl apply` time, each with a message that says what to fix. Strings and
lists carry a maximum length so the API server can bound the cost of those rules.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

GROUP = "modelship.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "ModelDeployment"
PLURAL = "modeldeployments"
SINGULAR = "modeldeployment"
SHORT_NAMES = ["md", "mdep"]

# The engines, by `engine.type`, and their names in messages.
ENGINES = ("tgi", "vllm", "sglang", "llamacpp")
ENGINE_NAMES = {"tgi": "TGI", "vllm": "vLLM", "sglang": "SGLang", "llamacpp": "llama.cpp"}
GPU_ENGINES = ("tgi", "vllm", "sglang")  # safetensors weights, at least one GPU
# The flags the operator sets on each engine itself; `engine.args` may not set them (vLLM's
# model is also its first positional argument, which CEL cannot tell from a flag's value).
# SGLang's --model and --tensor-parallel-size are its own aliases of --model-path and --tp-size.
MANAGED_FLAGS = {
    "llamacpp": ["-m", "--model", "--host", "--port", "--alias", "-hf", "--hf-repo"],
    "tgi": ["--model-id", "--port", "--hostname", "--num-shard"],
    "vllm": ["--model", "--host", "--port", "--served-model-name", "--tensor-parallel-size", "-tp"],
    "sglang": ["--model-path", "--model", "--host", "--port", "--served-model-name", "--tp-size",
               "--tensor-parallel-size"],
}
# Engines whose command line is read by Python's argparse, which takes any unambiguous
# abbreviation of a long flag (`--served-model` for --served-model-name); vLLM's parser also
# reads `_` as `-` in a flag's name and `--flag.key=value` as a part of the JSON flag --flag
# (vllm/utils/argparse_utils.py, FlexibleArgumentParser.parse_args).
ARGPARSE_ENGINES = ("vllm", "sglang")
SPELLINGS_ENGINES = ("vllm",)

DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
# (CEL string literals treat '\' as an escape, so the patterns avoid it: '[.]', not '\.'.)
DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?([.][a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
# A ModelDeployment's name: it names a Service (a DNS-1035 label: a letter first) and, with a
# suffix, a volume and Jobs, whose names are label values of their pods (at most 63
# characters): 48 leaves room for `-fetch-` and 8 hex digits (manifests/jobs.py fits the rest).
MD_NAME, MD_NAME_MAX = r"^[a-z]([-a-z0-9]*[a-z0-9])?$", 48
JOB_NAME_MAX = 63
SECRET_KEY = r"^[-._a-zA-Z0-9]+$"
# The pod fields the downward API offers as environment variables (besides labels and annotations).
POD_FIELDS = ["metadata.name", "metadata.namespace", "metadata.uid", "spec.nodeName", "spec.serviceAccountName",
              "status.hostIP", "status.hostIPs", "status.podIP", "status.podIPs"]
# Which engines honour each serving field: the one table the CRD's rules (a field the named
# engine lacks is refused), the operator's SettingNotForEngine (engine.type auto) and
# docs/serving.md follow. INSTEAD: what the engines without the field take for it.
SERVING_ENGINES = {
    "contextLength": ENGINES, "maxConcurrentRequests": GPU_ENGINES, "maxInputTokens": ("tgi",),
    "maxTotalTokens": ("tgi",), "dtype": GPU_ENGINES, "quantize": GPU_ENGINES,
    "gpuMemoryUtilization": ("vllm", "sglang"), "gpuLayers": ("llamacpp",), "threads": ("llamacpp",),
    "parallel": ("llamacpp",), "chatTemplate": ("llamacpp",), "generation": ENGINES,
}
INSTEAD = {"maxInputTokens": "serving.contextLength", "maxTotalTokens": "serving.contextLength",
           "maxConcurrentRequests": "serving.parallel", "parallel": "serving.maxConcurrentRequests",
           "quantize": "a GGUF file (model.quantization)"}
# Which engines take each `serving.quantize` value (TGI `--quantize`, vLLM and SGLang `--quantization`):
# vLLM's from QuantizationMethods in vllm 0.29.0 (no bitsandbytes, no plain marlin), SGLang's from
# QUANTIZATION_CHOICES in sglang 0.5.20 (no plain marlin): the pinned images' (tests/unit/engine_choices.py).
QUANTIZE_ENGINES = {
    "awq": GPU_ENGINES, "compressed-tensors": GPU_ENGINES, "eetq": ("tgi",), "exl2": ("tgi",),
    "fp8": GPU_ENGINES, "gptq": GPU_ENGINES, "marlin": ("tgi",), "bitsandbytes": ("tgi", "sglang"),
    "bitsandbytes-nf4": ("tgi",), "bitsandbytes-fp4": ("tgi",),
}
# The flags each serving field sets on each engine's command line: engine.args may not repeat
# them. By engine: the same flag may mean another thing elsewhere (SGLang's --max-total-tokens
# sizes its KV pool; TGI's is the context length).
SERVING_FLAGS = {
    "tgi": {"contextLength": ["--max-total-tokens"], "maxTotalTokens": ["--max-total-tokens"],
            "maxInputTokens": ["--max-input-tokens"], "maxConcurrentRequests": ["--max-concurrent-requests"],
            "quantize": ["--quantize"], "dtype": ["--dtype"]},
    "vllm": {"contextLength": ["--max-model-len"], "maxConcurrentRequests": ["--max-num-seqs"],
             "quantize": ["--quantization", "-q"], "dtype": ["--dtype"],
             "gpuMemoryUtilization": ["--gpu-memory-utilization"], "generation": ["--override-generation-config"]},
    "sglang": {"contextLength": ["--context-length"], "maxConcurrentRequests": ["--max-running-requests"],
               "quantize": ["--quantization"], "dtype": ["--dtype"], "gpuMemoryUtilization": ["--mem-fraction-static"],
               "generation": ["--preferred-sampling-params"]},
    "llamacpp": {"contextLength": ["-c", "--ctx-size"], "parallel": ["-np", "--parallel"],
                 "threads": ["-t", "--threads"], "gpuLayers": ["-ngl", "--gpu-layers", "--n-gpu-layers"],
                 "chatTemplate": ["--chat-template"]},
}


def names(engines, conjunction: str = "and") -> str:
    """`("vllm", "sglang")` as "vLLM and SGLang"."""
    items = [ENGINE_NAMES[e] for e in engines]
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} {conjunction} {items[-1]}"


def setting_message(field: str) -> str:
    """What the API server says when engine.type names an engine without serving.`field`."""
    owners = SERVING_ENGINES[field]
    others = [e for e in ENGINES if e not in owners]
    said = f"serving.{field} is a {names(owners)} setting"
    if field in INSTEAD:
        return f"{said}; {names(others)} take{'s' if len(others) == 1 else ''} {INSTEAD[field]}"
    return f"{said}, which {names(others)} do{'es' if len(others) == 1 else ''} not have: remove it"


def quantize_message(engine: str) -> str:
    """What the API server says when engine.type names an engine without that serving.quantize."""
    lacks = [f"{q} ({names(has)})" for q, has in QUANTIZE_ENGINES.items() if engine not in has]
    takes = [q for q, has in QUANTIZE_ENGINES.items() if engine in has]
    return (f"serving.quantize {', '.join(lacks[:-1])} and {lacks[-1]} are not {ENGINE_NAMES[engine]}'s: "
            f"{ENGINE_NAMES[engine]} takes {', '.join(takes[:-1])} and {takes[-1]}")

def rule(expr: str, message: str, *, field_path: str | None = None, reason: str | None = None) -> dict:
    r = {"rule": expr, "message": message}
    if field_path:
        r["fieldPath"] = field_path
    if reason:
        r["reason"] = reason
    return r


def rules(*items: dict) -> dict:
    return {"x-kubernetes-validations": list(items)}


def flag_name(var: str, engines) -> str:
    """CEL: the name of the flag that the argument `var` sets, as `engines` read it (before
    '='; for vLLM also before '.', with '_' as '-')."""
    name = f"{var}.split('=')[0]"
    if any(e in SPELLINGS_ENGINES for e in engines):
        name = f"{name}.split('.')[0].replace('_', '-')"
    return name


def sets_flag(var: str, flags: list[str], engines=ENGINES) -> str:
    """CEL: the argument `var` sets one of `flags` on one of `engines`: alone or as
    `flag=value`, and where argparse reads the command line, an abbreviation of a long flag."""
    name = flag_name(var, engines)
    same = f"{name} == f"
    if any(e in ARGPARSE_ENGINES for e in engines):
        same += f" || (f.startsWith('--') && {name}.startsWith('--') && {name}.size() > 2 && f.startsWith({name}))"
    return f"{list(flags)!r}.exists(f, {same})"


def spellings(engines) -> str:
    """What `sets_flag` also refuses for `engines`, said in a message."""
    said = [*(["an abbreviation"] if any(e in ARGPARSE_ENGINES for e in engines) else []),
            *(["a '_' spelling"] if any(e in SPELLINGS_ENGINES for e in engines) else [])]
    return f" (nor {' or '.join(said)} of one)" if said else ""


def as_quantity(x: str) -> str:
    """CEL: the int-or-string `x` as a quantity (call it only where `x` is one)."""
    return f"(type({x}) == int ? quantity(string({x})) : quantity({x}))"


def is_quantity(x: str) -> str:
    return f"(type({x}) == int || isQuantity({x}))"


def cel_string(max_length: int, *items: dict, **extra: Any) -> dict:
    """Schema extras for a string field with CEL rules (maxLength bounds their cost)."""
    return {"maxLength": max_length, **({"x-kubernetes-validations": list(items)} if items else {}), **extra}


class ApiType(BaseModel):
    """Base of every API type: camelCase on the wire, unknown fields refused."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid",
                              use_attribute_docstrings=False)

    def wire(self) -> dict:
        """The object as the API server holds it (camelCase, without unset optional fields)."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


# Quantities ("10Gi", "500m", 4) are int-or-string, checked with CEL's quantity library.
Quantity = Annotated[
    int | str,
    Field(json_schema_extra={"x-kubernetes-int-or-string": True, "x-modelship-quantity": True, "maxLength": 64}),
]


# --- spec -----------------------------------------------------------------------------------


def _secret_key_rule() -> dict:
    return rule(f"self.matches('{SECRET_KEY}')",
                "must be a key of a Secret or ConfigMap: letters, digits, '-', '_' and '.' (no '/' or spaces)")


class SecretKeyRef(ApiType):
    """A key of a Secret in the ModelDeployment's namespace."""

    name: str = Field(description="Name of the Secret.", json_schema_extra=cel_string(
        253, rule(f"self.matches('{DNS_SUBDOMAIN}')",
                  "must be a Secret name: lower-case letters, digits, '-' and '.'")))
    key: str = Field("token", description="Key in the Secret that holds the Hugging Face token.",
                     json_schema_extra=cel_string(253, _secret_key_rule(), minLength=1))


def _repo_path_rule() -> dict:
    return rule("!self.startsWith('/') && !('..' in self.split('/'))",
                "model.files and model.exclude are glob patterns of paths in the repository: no leading '/' and "
                "no '..'")


class ModelSource(ApiType):
    """Which model to serve: a Hugging Face Hub repository, pinned to a commit when resolved."""

    model_config = ConfigDict(json_schema_extra=rules(
        rule("!has(self.revisionPolicy) || self.revisionPolicy != 'Follow' || !has(self.revision) || "
             "!self.revision.matches('^[0-9a-f]{40}$')",
             "revisionPolicy Follow follows a branch, but model.revision is a commit sha, which never moves: set "
             "revision to a branch such as main, or revisionPolicy to Pin", field_path=".revisionPolicy")))

    repo: str = Field(
        description="Hub repository, as `org/name` (for example `HuggingFaceTB/SmolLM2-135M-Instruct-GGUF`).",
        json_schema_extra=cel_string(
            200, rule(r"self.matches('^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$')",
                      "must be a Hub repository as org/name, for example HuggingFaceTB/SmolLM2-135M-Instruct")))
    revision: str = Field(
        "main", description="Branch, tag or commit sha. It is resolved to a commit sha once, reported in "
                            "`status.resolved.sha`, and served until the spec changes.",
        json_schema_extra=cel_string(
            255, rule(r"self.matches('^[A-Za-z0-9][A-Za-z0-9_./-]*$') && !self.contains('..')",
                      "must be a branch, tag or commit sha: letters, digits, '_', '.', '-' and '/', no '..'")))
    files: list[Annotated[str, Field(max_length=512, json_schema_extra=rules(_repo_path_rule()))]] = Field(
        default_factory=list, description="Glob patterns of repository files to download in addition to (or, "
                                          "for repositories without weights the resolver recognises, instead "
                                          "of) the ones chosen automatically, for example `*.json`.",
        json_schema_extra={"maxItems": 64})
    exclude: list[Annotated[str, Field(max_length=512, json_schema_extra=rules(_repo_path_rule()))]] = Field(
        default_factory=list, description="Glob patterns of repository files never to download, applied last.",
        json_schema_extra={"maxItems": 64})
    quantization: str | None = Field(
        None, description="GGUF quantization to serve: a tag such as `Q4_K_M` (case-insensitive) or a file "
                          "name ending in `.gguf`. Unset: `Q4_K_M`, then `Q8_0`, then the first GGUF file. "
                          "Not used for safetensors models (see `serving.quantize`).",
        json_schema_extra=cel_string(
            255, rule(r"self.matches('^[A-Za-z0-9_./-]+$') && !self.contains('..')",
                      "must be a GGUF quantization tag such as Q4_K_M, or a .gguf file name")))
    token_secret_ref: SecretKeyRef | None = Field(
        None, description="Secret holding a Hugging Face token, for gated or private repositories. The operator "
                          "reads it to resolve the model; the download Job gets it as an environment variable "
                          "from the Secret. It never appears in status, events, logs or arguments.")
    revision_policy: Literal["Pin", "Follow"] = Field(
        "Pin", description="`Pin`: resolve `revision` to a commit once and serve it until the spec changes. "
                           "`Follow`: ask the Hub again every `followIntervalSeconds` (operator setting) and roll "
                           "to the branch's new commit; the `Resolved` condition says it moved, and to what.")
    endpoint: str | None = Field(
        None, description="Hub endpoint (a mirror such as olah in air-gapped clusters), overriding the "
                          "operator's `hubEndpoint`.",
        json_schema_extra=cel_string(
            2048, rule("isURL(self) && url(self).getScheme() in ['http', 'https'] && url(self).getHost() != ''",
                       "must be an http:// or https:// URL, for example http://hub-mirror.hub.svc:8090")))


class KeySelector(ApiType):
    """A key of a Secret or ConfigMap."""

    name: str = Field(description="Name of the Secret or ConfigMap.", json_schema_extra=cel_string(
        253, rule(f"self.matches('{DNS_SUBDOMAIN}')",
                  "must be a Secret or ConfigMap name: lower-case letters, digits, '-' and '.'")))
    key: str = Field(description="The key to read.", json_schema_extra=cel_string(253, _secret_key_rule()))
    optional: bool | None = Field(None, description="Start even if the key is missing.")


class FieldSelector(ApiType):
    """A field of the pod (the downward API)."""

    field_path: str = Field(description="Path of the field, for example `metadata.name` or `status.podIP`.",
                            json_schema_extra=cel_string(256, rule(
                                f"self in {POD_FIELDS} || ((self.startsWith(\"metadata.labels['\") || "
                                f"self.startsWith(\"metadata.annotations['\")) && self.endsWith(\"']\"))",
                                "must be a pod field the downward API offers: " + ", ".join(POD_FIELDS) +
                                ", metadata.labels['<key>'] or metadata.annotations['<key>']")))


class EnvVarSource(ApiType):
    """Where an environment variable's value comes from."""

    model_config = ConfigDict(json_schema_extra=rules(
        rule("[has(self.secretKeyRef), has(self.configMapKeyRef), has(self.fieldRef)].filter(x, x).size() == 1",
             "set exactly one of secretKeyRef, configMapKeyRef and fieldRef")))

    secret_key_ref: KeySelector | None = Field(None, description="A key of a Secret.")
    config_map_key_ref: KeySelector | None = Field(None, description="A key of a ConfigMap.")
    field_ref: FieldSelector | None = Field(None, description="A field of the pod.")


class EnvVar(ApiType):
    """An environment variable of the serving container."""

    model_config = ConfigDict(json_schema_extra=rules(
        rule("has(self.value) != has(self.valueFrom)", "set exactly one of value and valueFrom")))

    name: str = Field(description="Name of the variable.", json_schema_extra=cel_string(
        256, rule(r"self.matches('^[A-Za-z_][A-Za-z0-9_]*$')",
                  "must be a variable name: letters, digits and '_', not starting with a digit")))
    value: str | None = Field(None, description="A literal value.", json_schema_extra={"maxLength": 32768})
    value_from: EnvVarSource | None = Field(None, description="A value read from a Secret, ConfigMap or the pod.")


def _no_managed_flags(engine: str) -> dict:
    flags = MANAGED_FLAGS[engine]
    return rule(f"!has(self.type) || !has(self.args) || self.type != '{engine}' || "
                f"!self.args.exists(a, {sets_flag('a', flags, [engine])})",
                f"engine.args must not set {', '.join(flags)}{spellings([engine])}: the operator sets them for "
                f"{engine}", field_path=".args")


def _no_managed_flags_auto() -> dict:
    flags = list(dict.fromkeys(f for engine in MANAGED_FLAGS for f in MANAGED_FLAGS[engine]))
    return rule(f"(has(self.type) && self.type != 'auto') || !has(self.args) || "
                f"!self.args.exists(a, {sets_flag('a', flags)})",
                f"engine.args must not set {', '.join(flags)}{spellings(ENGINES)}: the operator sets them for "
                f"whichever engine serves (engine.type auto)", field_path=".args")


class EngineSpec(ApiType):
    """The inference engine that serves the model."""

    model_config = ConfigDict(json_schema_extra=rules(
        *(_no_managed_flags(e) for e in ENGINES), _no_managed_flags_auto(),
        rule("!has(self.env) || self.env.all(e, self.env.exists_one(f, f.name == e.name))",
             "each name may appear once in engine.env (a second one would silently win over the first)",
             field_path=".env")))

    type: Literal["auto", "tgi", "vllm", "sglang", "llamacpp"] = Field(
        "auto", description="`auto`: llama.cpp for GGUF models, the operator's `defaultEngine` (TGI unless the "
                            "cluster admin chose vLLM or SGLang) for safetensors models. `tgi`, `vllm`, `sglang` "
                            "or `llamacpp` to choose.")
    image: str | None = Field(None, description="Container image, overriding the operator's image for the engine.",
                              json_schema_extra=cel_string(512, rule(
                                  "self.matches('^[a-z0-9][A-Za-z0-9._/:@-]*$')",
                                  "engine.image must be a container image such as "
                                  "ghcr.io/ggml-org/llama.cpp:server: lower-case registry and path, then an "
                                  "optional :tag or @sha256 digest, no spaces"), minLength=1))
    args: list[Annotated[str, Field(max_length=1024)]] = Field(
        default_factory=list, description="Extra command-line arguments, appended to the ones the operator sets.",
        json_schema_extra={"maxItems": 64})
    env: list[EnvVar] = Field(default_factory=list, description="Extra environment variables.",
                              json_schema_extra={"maxItems": 64})


def _resource_map_rules(field: str) -> dict:
    return rules(
        rule("self.all(k, k in ['cpu', 'memory', 'ephemeral-storage'] || k.startsWith('hugepages-') || "
             "k.contains('/'))",
             f"resources.{field} names cpu, memory, ephemeral-storage, hugepages-<size> or an extended resource "
             f"with a domain such as example.com/device"),
        rule("self.all(k, type(self[k]) == int ? self[k] >= 0 : (!isQuantity(self[k]) || "
             "!quantity(self[k]).isLessThan(quantity('0'))))",
             f"resources.{field} must not be negative"))


class ResourceRequirements(ApiType):
    """Compute resources of the serving container (see Kubernetes' ResourceRequirements). GPUs come from
    `gpus`, not from here."""

    model_config = ConfigDict(json_schema_extra=rules(
        rule("!has(self.requests) || !has(self.limits) || self.requests.all(k, !(k in self.limits) || "
             f"!{is_quantity('self.requests[k]')} || !{is_quantity('self.limits[k]')} || "
             f"{as_quantity('self.requests[k]')}.compareTo({as_quantity('self.limits[k]')}) <= 0)",
             "resources.requests must not be above resources.limits for the same resource: lower the request or "
             "raise the limit", field_path=".requests"),
        rule("!has(self.limits) || !self.limits.exists(k, k.endsWith('/gpu'))",
             "set GPUs with spec.gpus, not resources.limits", field_path=".limits"),
        rule("!has(self.requests) || !self.requests.exists(k, k.endsWith('/gpu'))",
             "set GPUs with spec.gpus, not resources.requests", field_path=".requests")))

    requests: dict[str, Quantity] | None = Field(
        None, description="Minimum resources, for example `{cpu: \"2\", memory: 4Gi}`.",
        json_schema_extra={"maxProperties": 16, **_resource_map_rules("requests")})
    limits: dict[str, Quantity] | None = Field(None, description="Maximum resources.",
                                               json_schema_extra={"maxProperties": 16, **_resource_map_rules("limits")})


class GenerationDefaults(ApiType):
    """Defaults for requests that do not set them. llama.cpp and vLLM apply them in the server (vLLM:
    `--override-generation-config`, over the model's own generation_config.json); SGLang gets them as
    `--preferred-sampling-params`, which its OpenAI routes do not apply (their requests carry every
    key), so the router applies them for SGLang, as for TGI, which has none of its own."""

    temperature: float | None = Field(None, ge=0, le=2, description="Sampling temperature; 0 is greedy.")
    top_p: float | None = Field(None, gt=0, le=1, description="Nucleus sampling: keep the most likely tokens "
                                                             "whose probabilities add up to this.")
    top_k: int | None = Field(None, ge=0, le=1000, description="Keep only the k most likely tokens; 0 turns it off.")
    max_new_tokens: int | None = Field(None, ge=1, le=1048576, description="Tokens to generate at most.")


class ServingSpec(ApiType):
    """How the engine serves: limits, precision and generation defaults. Unset fields keep the
    engine's own defaults."""

    model_config = ConfigDict(json_schema_extra=rules(
        rule("!has(self.maxInputTokens) || !has(self.maxTotalTokens) || self.maxInputTokens < self.maxTotalTokens",
             "serving.maxInputTokens must be less than serving.maxTotalTokens (the total includes the new "
             "tokens)", field_path=".maxInputTokens"),
        rule("!has(self.contextLength) || !has(self.maxTotalTokens)",
             "serving.contextLength and serving.maxTotalTokens both set TGI's --max-total-tokens: set only "
             "maxTotalTokens (contextLength is its default)", field_path=".contextLength"),
        rule("!has(self.maxInputTokens) || !has(self.contextLength) || has(self.maxTotalTokens) || "
             "self.maxInputTokens < self.contextLength",
             "serving.maxInputTokens must be less than serving.contextLength, which is TGI's total (the prompt "
             "plus the new tokens)", field_path=".maxInputTokens"),
        rule("!has(self.generation) || !has(self.generation.maxNewTokens) || !has(self.maxTotalTokens) || "
             "self.generation.maxNewTokens < self.maxTotalTokens",
             "serving.generation.maxNewTokens must be less than serving.maxTotalTokens: the prompt needs room too",
             field_path=".generation.maxNewTokens"),
        rule("!has(self.generation) || !has(self.generation.maxNewTokens) || !has(self.contextLength) || "
             "self.generation.maxNewTokens < self.contextLength",
             "serving.generation.maxNewTokens must be less than serving.contextLength: the prompt needs room too",
             field_path=".generation.maxNewTokens")))

    context_length: int | None = Field(
        None, ge=16, le=4194304, description="Context window in tokens. llama.cpp: `-c`, shared by the "
                                             "parallel slots (default: the model's trained context, at most "
                                             "4096); TGI: the default of `maxTotalTokens`; vLLM "
                                             "`--max-model-len`; SGLang `--context-length`.")
    max_concurrent_requests: int | None = Field(
        None, ge=1, le=65536, description="Requests a replica runs at once. TGI refuses more with 429 "
                                          "(`--max-concurrent-requests`); vLLM (`--max-num-seqs`) and SGLang "
                                          "(`--max-running-requests`) queue them.")
    max_input_tokens: int | None = Field(None, ge=1, le=4194304, description="Longest prompt, in tokens (TGI).")
    max_total_tokens: int | None = Field(None, ge=2, le=4194304,
                                         description="Longest prompt plus generation, in tokens (TGI).")
    dtype: Literal["float16", "bfloat16"] | None = Field(None, description="Weights' precision (`--dtype` of TGI, "
                                                                           "vLLM and SGLang).")
    quantize: Literal["awq", "compressed-tensors", "eetq", "exl2", "fp8", "gptq", "marlin", "bitsandbytes",
                      "bitsandbytes-nf4", "bitsandbytes-fp4"] | None = Field(
        None, description="On-the-fly or pre-quantized weights format (TGI `--quantize`, vLLM and SGLang "
                          "`--quantization`; docs/serving.md says which engine takes which).")
    gpu_memory_utilization: float | None = Field(
        None, ge=0.05, le=1.0, description="Fraction of each GPU's memory the engine may use for the weights and "
                                           "the KV cache (vLLM `--gpu-memory-utilization`, default 0.9; SGLang "
                                           "`--mem-fraction-static`).")
    gpu_layers: int | None = Field(
        None, ge=0, le=100000, description="Layers to offload to the GPU (llama.cpp `-ngl`). Default: all of "
                                           "them when `gpus` > 0.")
    threads: int | None = Field(None, ge=1, le=1024, description="CPU threads for generation (llama.cpp `-t`).")
    parallel: int | None = Field(None, ge=1, le=1024,
                                 description="Parallel decoding slots (llama.cpp `--parallel`).")
    chat_template: str | None = Field(
        None, description="llama.cpp: a built-in chat template name (for example `chatml`, `llama3`) instead "
                          "of the template shipped in the GGUF (which is used, with `--jinja`, by default).",
        json_schema_extra=cel_string(64, rule(r"self.matches('^[a-z0-9][a-z0-9._-]*$')",
                                               "must be a llama.cpp built-in template name such as chatml")))
    generation: GenerationDefaults | None = Field(None, description="Generation defaults.")


class StorageSpec(ApiType):
    """The volume that holds the weights."""

    model_config = ConfigDict(json_schema_extra=rules(
        rule("!has(self.existingClaim) || (!has(self.size) && !has(self.storageClassName))",
             "storage.existingClaim uses a volume that exists already; do not set size or storageClassName "
             "with it"),
        rule("!has(self.existingClaim) || !has(self.sharedCache) || !self.sharedCache",
             "storage.sharedCache and storage.existingClaim both choose the volume: set one of them",
             field_path=".sharedCache"),
        rule("has(self.storageClassName) == has(oldSelf.storageClassName) && (!has(self.storageClassName) || "
             "self.storageClassName == oldSelf.storageClassName)",
             "storage.storageClassName cannot be set, changed or removed after creation (a volume's class is "
             "fixed); delete and re-create the ModelDeployment", field_path=".storageClassName"),
        rule("has(self.existingClaim) == has(oldSelf.existingClaim) && (!has(self.existingClaim) || "
             "self.existingClaim == oldSelf.existingClaim)",
             "storage.existingClaim cannot be set, changed or removed after creation; delete and re-create the "
             "ModelDeployment", field_path=".existingClaim")))

    storage_class_name: str | None = Field(
        None, description="StorageClass of the volume. Default: the cluster's default class.",
        json_schema_extra=cel_string(253, rule(f"self.matches('{DNS_SUBDOMAIN}')",
                                               "must be a StorageClass name: lower-case letters, digits, '-' and "
                                               "'.'")))
    access_mode: Literal["ReadWriteOnce", "ReadWriteMany", "ReadOnlyMany"] = Field(
        "ReadWriteOnce", description="Access mode of the volume. Replicas on several nodes need `ReadWriteMany` "
                                     "(or `ReadOnlyMany`); with `ReadWriteOnce` the serving pods and the download "
                                     "Job share one node, and rollouts replace pods one at a time.",
        json_schema_extra=rules(rule("self == oldSelf", "storage.accessMode cannot change; delete and re-create "
                                                        "the ModelDeployment")))
    size: Quantity | None = Field(
        None, description="Size of the volume, for example `20Gi`. Default: the resolved files' total plus "
                          "10% (at least 1Gi more). A size too small for the files is an error. It can be "
                          "raised later; a volume cannot shrink, so a lower size leaves it as it is (the "
                          "Downloaded condition says so).",
        json_schema_extra=rules(
            rule("type(self) == int ? self >= 1 : (!isQuantity(self) || !quantity(self).isLessThan(quantity('1')))",
                 "storage.size must be a size of at least 1 byte, for example 20Gi (not zero, negative, or a "
                 "fraction such as 500m)")))
    shared_cache: bool = Field(
        False, description="Keep the weights on the namespace's shared, content-addressed cache volume "
                           "(`modelship-cache`) instead of a volume of its own: ModelDeployments of the same "
                           "repo@sha download once and read the same files, and the volume goes with the last "
                           "of them. Serving pods on several nodes need `accessMode: ReadWriteMany`.")
    existing_claim: str | None = Field(
        None, description="Use this PersistentVolumeClaim, which exists already (for example pre-loaded in an "
                          "air-gapped cluster), instead of creating one. Files already there in the Hub cache "
                          "layout are checked, not downloaded again. ModelDeployments that name one claim share "
                          "the Job that puts (or checks) a repo@sha there.",
        json_schema_extra=cel_string(253, rule(f"self.matches('{DNS_SUBDOMAIN}')",
                                               "must be a PersistentVolumeClaim name")))


class LoadBalancing(ApiType):
    """How the router spreads requests over the replicas."""

    strategy: Literal["least-load", "prefix-cache", "queue-aware"] = Field(
        "prefix-cache", description="`least-load`: fewest in-flight requests (power of two choices). "
                                    "`prefix-cache`: the conversation's home replica, which every router replica "
                                    "agrees on (rendezvous hashing of the messages up to and including the first user "
                                    "message; of a completion's first 512 characters), or one this router knows to "
                                    "hold more of the prompt, unless it is too busy, so the engine's prefix cache "
                                    "hits. "
                                    "`queue-aware`: scores from the engines' own queue metrics.")
    prefix_block_size: int = Field(128, ge=16, le=65536,
                                   description="Prefix-cache strategy: characters per hashed prompt block.")
    max_imbalance: int = Field(
        2, ge=0, le=100000, description="Prefix-cache strategy: load above the mean beyond which a replica is "
                                        "passed over for the next in the conversation's order. A replica's load: this "
                                        "router's requests in flight to it, or the engine's own running count where "
                                        "that is larger, plus the engine's queue.")


class RouterSpec(ApiType):
    """How the router exposes this ModelDeployment."""

    model_config = ConfigDict(json_schema_extra=rules(
        rule("!has(self.aliases) || !has(self.tasks) || !self.aliases.exists(a, a in self.tasks)",
             "a name cannot be both an alias and a task", field_path=".tasks")))

    aliases: list[Annotated[str, Field(max_length=128, json_schema_extra=rules(rule(
        r"self.matches('^[A-Za-z0-9][A-Za-z0-9_.:/-]*$')",
        "aliases are model names: letters, digits, '_', '.', ':', '/' and '-'")))]] = Field(
        default_factory=list, description="Other names that select this ModelDeployment in the `model` field of "
                                          "a request.",
        json_schema_extra={"maxItems": 32, "x-kubernetes-list-type": "set"})
    tasks: list[Annotated[str, Field(max_length=63, json_schema_extra=rules(rule(
        f"self.matches('{DNS_LABEL}')", "task names are lower-case words joined by '-'")))]] = Field(
        default_factory=list, description="Task names this ModelDeployment serves (for example `chat`); a request "
                                          "whose `model` is a task name goes to one of the ModelDeployments that "
                                          "serve it.",
        json_schema_extra={"maxItems": 32, "x-kubernetes-list-type": "set"})
    fallback: list[Annotated[str, Field(max_length=253, json_schema_extra=rules(rule(
        f"self.size() <= {MD_NAME_MAX} && self.matches('{MD_NAME}')",
        f"router.fallback names ModelDeployments: a lower-case letter first, then lower-case letters, digits and "
        f"'-', at most {MD_NAME_MAX} characters")))]] = Field(
        default_factory=list, description="ModelDeployments in this namespace to use, in order, when this one has "
                                          "no ready replica.",
        json_schema_extra={"maxItems": 8, "x-kubernetes-list-type": "set"})
    load_balancing: LoadBalancing | None = Field(None, description="Load-balancing strategy and its parameters.")


class AutoscalingMetric(ApiType):
    """A load signal and the value of it one replica is meant to carry."""

    type: Literal["InFlight", "EngineQueue"] = Field(
        description="`InFlight`: requests open through the router for this model (answered or held), summed over "
                    "every router replica. `EngineQueue`: the engines' own count of requests running and waiting "
                    "(llama.cpp `requests_processing` + `requests_deferred`; TGI `tgi_batch_current_size` + "
                    "`tgi_queue_size`; vLLM `vllm:num_requests_running` + `vllm:num_requests_waiting`; SGLang "
                    "`sglang:num_running_reqs` + `sglang:num_queue_reqs`), as the router scrapes them.")
    target_per_replica: float = Field(gt=0, le=100000, description="The signal's mean over `windowSeconds` that one "
                                                                   "replica should carry; replicas = ceil(mean / "
                                                                   "target).")


class AutoscalingSpec(ApiType):
    """How the operator scales this model when `maxReplicas` is set. It sets the serving Deployment's
    replicas itself and never writes this spec (see docs/autoscaling.md)."""

    model_config = ConfigDict(json_schema_extra=rules(
        rule("self.metrics.all(m, self.metrics.filter(n, n.type == m.type).size() == 1)",
             "each metric type may appear once in autoscaling.metrics", field_path=".metrics")))

    metrics: list[AutoscalingMetric] = Field(
        default_factory=lambda: [AutoscalingMetric(type="InFlight", target_per_replica=4)],
        description="Signals and their targets; with several, the one that asks for the most replicas wins. "
                    "Default: `InFlight` with 4 per replica.",
        json_schema_extra={"maxItems": 2, "minItems": 1,
                           "default": [{"type": "InFlight", "targetPerReplica": 4}]})
    window_seconds: int = Field(60, ge=2, le=3600, description="The signals are averaged over this many seconds.")
    scale_down_delay_seconds: int = Field(
        300, ge=0, le=86400, description="Replicas are removed only when no decision over this many seconds asked "
                                         "for more (and not sooner than this after the last change, or after the "
                                         "operator started): no flapping, and no scale-down after a restart.")
    idle_seconds: int = Field(600, ge=5, le=604800,
                              description="With `minReplicas: 0`: no request for this long scales the model to "
                                          "zero (the weights stay on the volume; the next request wakes it).")
    min_residency_seconds: int = Field(
        120, ge=0, le=86400, description="With `minReplicas: 0`: after waking, the model is not scaled to zero to "
                                         "make room for another model before this many seconds.")
    priority: int = Field(0, ge=-1000, le=1000,
                          description="When its pool is full: a model that cannot be placed makes idle models of "
                                      "its pool with `minReplicas: 0` and a priority no higher than its own yield "
                                      "(scaled to zero, least recently used first). Higher is more important.")


def _args_repeat_serving(engine: str) -> dict:
    """engine.args repeating a flag that a serving field sets on `engine`."""
    fields = SERVING_FLAGS[engine]
    repeats = " || ".join(f"(has(self.serving.{field}) && {sets_flag('a', flags, [engine])})"
                          for field, flags in fields.items())
    said = ", ".join(f"{' or '.join(flags)} with serving.{field}" for field, flags in fields.items())
    return rule(f"!has(self.serving) || !has(self.engine) || !has(self.engine.args) || "
                f"!has(self.engine.type) || self.engine.type != '{engine}' || !self.engine.args.exists(a, {repeats})",
                f"engine.args must not repeat a flag that a serving field sets on {ENGINE_NAMES[engine]} ({said})"
                f"{spellings([engine])}: set the value in one place", field_path=".engine.args")


def _args_repeat_serving_auto() -> dict:
    """With engine.type auto any engine may serve: a flag any of them takes for the field."""
    fields: dict[str, list[str]] = {}
    for by_field in SERVING_FLAGS.values():
        for field, flags in by_field.items():
            fields.setdefault(field, []).extend(f for f in flags if f not in fields.get(field, []))
    repeats = " || ".join(f"(has(self.serving.{field}) && {sets_flag('a', flags)})" for field, flags in fields.items())
    return rule(f"!has(self.serving) || !has(self.engine) || !has(self.engine.args) || "
                f"(has(self.engine.type) && self.engine.type != 'auto') || !self.engine.args.exists(a, {repeats})",
                "engine.args must not repeat a flag that a serving field sets on whichever engine serves (engine.type "
                "auto; for example -c or --max-model-len with serving.contextLength): set the value in one place, "
                "or name the engine", field_path=".engine.args")


def _named(engines) -> str:
    """CEL: engine.type is one of `engines`."""
    return f"has(self.engine) && self.engine.type in {list(engines)}"


def _engine_rules() -> list[dict]:
    """What each named engine refuses: GGUF files (but llama.cpp), no GPU, a serving field or a
    quantization it does not have (generated from SERVING_ENGINES and QUANTIZE_ENGINES)."""
    out = [rule("!has(self.engine) || self.engine.type != 'tgi' || !has(self.model.quantization)",
                "model.quantization picks a GGUF file, which TGI cannot serve: remove it, or set engine.type to "
                "llamacpp (TGI's own quantization is serving.quantize)", field_path=".model.quantization")]
    out += [rule(f"!({_named([e])}) || !has(self.model.quantization)",
                 f"model.quantization picks a GGUF file, which modelship serves with llama.cpp only: remove it, or "
                 f"set engine.type to llamacpp ({ENGINE_NAMES[e]}'s own quantization is serving.quantize)",
                 field_path=".model.quantization") for e in ("vllm", "sglang")]
    out += [rule(f"!({_named([e])}) || !has(self.gpus) || self.gpus > 0",
                 f"{ENGINE_NAMES[e]} needs at least one GPU: set gpus to 1 or more, or use engine.type llamacpp",
                 field_path=".gpus") for e in GPU_ENGINES]
    out += [rule(f"!has(self.serving) || !has(self.serving.{f}) || "
                 f"!({_named([e for e in ENGINES if e not in owners])})", setting_message(f),
                 field_path=f".serving.{f}") for f, owners in SERVING_ENGINES.items() if owners != ENGINES]
    out += [rule(f"!has(self.serving) || !has(self.serving.quantize) || !({_named([e])}) || "
                 f"self.serving.quantize in {[q for q, has in QUANTIZE_ENGINES.items() if e in has]}",
                 quantize_message(e), field_path=".serving.quantize") for e in ("vllm", "sglang")]
    return out


class ModelDeploymentSpec(ApiType):
    """The desired state: a model, the engine that serves it, where, and how many replicas."""

    model_config = ConfigDict(json_schema_extra=rules(
        rule("!has(self.minReplicas) || !has(self.maxReplicas) || self.minReplicas <= self.maxReplicas",
             "minReplicas must not exceed maxReplicas", field_path=".minReplicas"),
        rule("!has(self.minReplicas) || has(self.maxReplicas)",
             "minReplicas needs maxReplicas: set maxReplicas to turn autoscaling on", field_path=".minReplicas"),
        rule("!has(self.autoscaling) || has(self.maxReplicas)",
             "autoscaling needs maxReplicas: set maxReplicas (and minReplicas) to turn autoscaling on",
             field_path=".autoscaling"),
        rule("!has(self.maxReplicas) || self.replicas <= self.maxReplicas",
             "replicas must be at most maxReplicas", field_path=".replicas"),
        *_engine_rules(),
        rule("!has(self.serving) || !has(self.serving.gpuLayers) || self.serving.gpuLayers == 0 || "
             "(has(self.gpus) && self.gpus > 0)",
             "serving.gpuLayers offloads layers to a GPU: set gpus to 1 or more", field_path=".serving.gpuLayers"),
        rule("!has(self.storage) || !has(self.storage.sharedCache) || !self.storage.sharedCache || "
             "has(self.storage.existingClaim) || !has(self.model.endpoint)",
             "storage.sharedCache holds files from the operator's hubEndpoint only; remove model.endpoint or set "
             "storage.sharedCache: false", field_path=".model.endpoint"),
        *(_args_repeat_serving(e) for e in ENGINES), _args_repeat_serving_auto(),
    ))

    model: ModelSource = Field(description="The model to serve.")
    engine: EngineSpec = Field(default_factory=EngineSpec, description="The inference engine.",
                               json_schema_extra={"default": {}})
    pool: str | None = Field(
        None, description="Node pool profile (from the operator's configuration) to run on: its node selector, "
                          "tolerations, affinity and GPU resource. Default: the operator's GPU pool when `gpus` "
                          "> 0 or the engine is TGI, vLLM or SGLang, its CPU pool otherwise.",
        json_schema_extra=cel_string(63, rule(f"self.matches('{DNS_LABEL}')",
                                              "must be a pool name from the operator's configuration: "
                                              "lower-case letters, digits and '-'")))
    gpus: int | None = Field(None, ge=0, le=64, description="GPUs per replica. Default: 1 for TGI, vLLM "
                                                            "and SGLang, 0 for llama.cpp. TGI, vLLM and SGLang shard "
                                                            "the model over them (tensor parallelism).")
    resources: ResourceRequirements | None = Field(
        None, description="CPU and memory of each replica, overriding the pool's defaults.")
    replicas: int = Field(1, ge=0, le=1000, description="Serving replicas. 0 keeps the weights and stops serving. "
                                                         "With autoscaling on: the count to start at, and to jump "
                                                         "to when it changes (`kubectl scale`); the autoscaler "
                                                         "moves on from there.")
    min_replicas: int | None = Field(None, ge=0, le=1000,
                                     description="Autoscaling: fewest replicas (default 1). 0 lets an idle model "
                                                 "sleep, and yield its place in a full pool; the router holds "
                                                 "requests while it wakes.")
    max_replicas: int | None = Field(None, ge=1, le=1000,
                                     description="Autoscaling: most replicas. Setting it turns autoscaling on.")
    autoscaling: AutoscalingSpec | None = Field(None, description="Autoscaling's signals, timings and priority "
                                                                  "(defaults apply when `maxReplicas` is set).")
    serving: ServingSpec | None = Field(None, description="Engine settings.")
    storage: StorageSpec = Field(default_factory=StorageSpec, description="The weights' volume.",
                                 json_schema_extra={"default": {}})
    router: RouterSpec | None = Field(None, description="How the router exposes this ModelDeployment.")

    @property
    def autoscaled(self) -> bool:
        return self.max_replicas is not None

    def bounds(self) -> tuple[int, int]:
        """(fewest, most) replicas with autoscaling on."""
        most = self.max_replicas or self.replicas
        return (1 if self.min_replicas is None else self.min_replicas), most

    def scaling(self) -> AutoscalingSpec:
        return self.autoscaling or AutoscalingSpec()


# --- status ---------------------------------------------------------------------------------

PHASES = ("Pending", "Resolving", "Downloading", "Starting", "Ready", "Degraded", "Failed")
Phase = Literal["Pending", "Resolving", "Downloading", "Starting", "Ready", "Degraded", "Failed"]
CONDITION_TYPES = ("Resolved", "Downloaded", "Available", "Ready", "Autoscaled")


class Condition(ApiType):
    """An aspect of the state, following the Kubernetes convention."""

    type: str = Field(description="`Resolved`, `Downloaded`, `Available`, `Ready`, and `Autoscaled` with "
                                  "autoscaling on.", json_schema_extra={
        "maxLength": 316})
    status: Literal["True", "False", "Unknown"] = Field(description="`True`, `False` or `Unknown`.")
    reason: str = Field(description="Why, in one CamelCase word (docs/reference.md explains each reason).",
                        json_schema_extra={"maxLength": 1024})
    message: str = Field("", description="What is happening, and what to do about it.",
                         json_schema_extra={"maxLength": 32768})
    observed_generation: int = Field(0, description="The `metadata.generation` this condition describes.")
    last_transition_time: str = Field(description="When `status` last changed.",
                                      json_schema_extra={"format": "date-time"})


class ResolvedFile(ApiType):
    """A file of the resolved model."""

    path: str = Field(description="Path in the repository.")
    size: int = Field(description="Size in bytes.")
    sha256: str | None = Field(None, description="SHA-256 of the content, where the Hub gives one (LFS files).")
    git_sha1: str | None = Field(None, description="Git blob SHA-1 of a file kept in git rather than LFS (of "
                                 "`blob <size>\\0` and the content), where the Hub or mirror gives one: it verifies "
                                 "the file when there is no SHA-256.")


class ResolvedModel(ApiType):
    """What the operator serves: the model resolved on the Hub."""

    repo: str = Field(description="Hub repository.")
    revision: str = Field(description="The revision asked for.")
    sha: str = Field(description="The commit it resolved to; this is what is served.")
    short_sha: str = Field("", description="The first 7 characters of `sha`, for display.")
    engine: Literal["tgi", "vllm", "sglang", "llamacpp"] = Field(description="The engine that serves it.")
    format: Literal["gguf", "safetensors"] = Field(description="Weights' format.")
    model_file: str | None = Field(None, description="GGUF: the file (first shard) the engine loads.")
    quantization: str | None = Field(None, description="GGUF: the quantization chosen.")
    files: list[ResolvedFile] = Field(default_factory=list, description="The files downloaded.")
    total_bytes: int = Field(0, description="Their total size.")
    architecture: str | None = Field(None, description="Model architecture, where known.")
    context_length: int | None = Field(None, description="The model's trained context length, where known.")
    resolved_at: str | None = Field(None, description="When the Hub was last asked.",
                                    json_schema_extra={"format": "date-time"})
    moved_from: str | None = Field(None, description="With `revisionPolicy: Follow`, the commit served before the "
                                                     "branch last moved.")
    source_hash: str | None = Field(None, description="Hash of the `spec.model` and `spec.engine.type` this was "
                                                      "resolved from: a change there resolves again, nothing else "
                                                      "does (the revision stays pinned).")


class DownloadStatus(ApiType):
    """Progress of the weights' download."""

    job: str | None = Field(None, description="The download Job.")
    completed_job: str | None = Field(None, description="The download Job that last completed: its files are on "
                                                        "the volume, even after the Job itself is deleted.")
    volume_uid: str | None = Field(None, alias="volumeUID", description="The uid of the volume (claim) that Job "
                                   "filled: a claim deleted and made again is empty, and is downloaded to again.")
    bytes_done: int = Field(0, description="Bytes on the volume so far.")
    bytes_total: int = Field(0, description="Bytes to download in all.")
    percent: int = Field(0, description="Done, in percent.")
    eta_seconds: int | None = Field(None, description="Estimated seconds left.")


class EndpointStatus(ApiType):
    """Where to call the model from inside the cluster."""

    url: str = Field(description="Base URL of the engine's Service (TGI's native API and `/health`).")
    openai_base_url: str = Field(description="Base URL of the OpenAI-compatible API (`.../v1`).",
                                 alias="openAIBaseURL")
    model: str = Field(description="The value for the `model` field of requests.")


class AutoscalingStatus(ApiType):
    """What the autoscaler decided last, and why. Kept in the status so that a restarted
    operator goes on from there."""

    desired_replicas: int = Field(description="The replicas the autoscaler set on the serving Deployment.")
    reason: str = Field(description="Its last decision, in one CamelCase word (docs/autoscaling.md).",
                        json_schema_extra={"maxLength": 64})
    message: str = Field("", description="Why, with the signal's value and its target.",
                         json_schema_extra={"maxLength": 4096})
    metric: str | None = Field(None, description="The signal that decided (`InFlight`, `EngineQueue`).")
    value: float | None = Field(None, description="That signal's mean over the window, at the decision, in all.")
    target: float | None = Field(None, description="Its target per replica.")
    spec_replicas: int | None = Field(None, description="The `spec.replicas` it last started from (a change is "
                                                        "`kubectl scale`).")
    last_scale_time: str | None = Field(None, description="When the replicas last changed.",
                                        json_schema_extra={"format": "date-time"})
    last_request_time: str | None = Field(None, description="The last request the routers reported, as of the "
                                                            "last decision.", json_schema_extra={"format": "date-time"})
    woken_time: str | None = Field(None, description="When it last woke from zero.",
                                   json_schema_extra={"format": "date-time"})
    yielded_to: str | None = Field(None, description="The ModelDeployment it last made room for.")


class ModelDeploymentStatus(ApiType):
    """The observed state, written only by the operator."""

    observed_generation: int | None = Field(None, description="The `metadata.generation` last acted upon.")
    phase: Phase | None = Field(None, description="One word for where it stands: Pending, Resolving, "
                                                  "Downloading, Starting, Ready, Degraded or Failed.")
    conditions: list[Condition] = Field(
        default_factory=list, description="Resolved, Downloaded, Available, Ready, Reconciling and Stalled "
                                          "(and Autoscaled, with autoscaling on).",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]})
    resolved: ResolvedModel | None = Field(None, description="The model as resolved on the Hub.")
    download: DownloadStatus | None = Field(None, description="Download progress.")
    replicas: int | None = Field(None, description="Serving replicas that exist.")
    ready_replicas: int | None = Field(None, description="Serving replicas that are ready.")
    selector: str | None = Field(None, description="Label selector of the serving pods (for the scale "
                                                   "subresource and autoscalers).")
    endpoint: EndpointStatus | None = Field(None, description="How to call the model.")
    autoscaling: AutoscalingStatus | None = Field(None, description="The autoscaler's last decision, with "
                                                                    "autoscaling on.")


class ModelDeployment(BaseModel):
    """A Hugging Face model served in the cluster: resolved to a commit, downloaded to a volume, served by
    TGI, vLLM, SGLang or llama.cpp, and exposed through a Service."""

    model_config = ConfigDict(extra="ignore")

    api_version: str = Field(API_VERSION, alias="apiVersion")
    kind: str = KIND
    metadata: dict = Field(default_factory=dict)
    spec: ModelDeploymentSpec
    status: ModelDeploymentStatus = Field(default_factory=ModelDeploymentStatus)

    @property
    def name(self) -> str:
        return self.metadata["name"]

    @property
    def namespace(self) -> str:
        return self.metadata.get("namespace", "default")

    @property
    def generation(self) -> int:
        return int(self.metadata.get("generation") or 0)
