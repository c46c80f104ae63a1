"""Invalid ModelDeployments, sent with real `kubectl apply` to the real API server: each is
refused, and the message says what to fix. The rules live in the generated CRD (OpenAPI
validation and CEL), so this also proves the generated CRD is what the API server enforces."""

from __future__ import annotations

import subprocess

import pytest
import yaml

from ..conftest import wait_for

pytestmark = pytest.mark.integration

BASE = {"model": {"repo": "HuggingFaceTB/SmolLM2-135M-Instruct-GGUF"}}


def md(spec: dict | None = None, name: str = "bad", **top) -> dict:
    return {"apiVersion": "modelship.io/v1alpha1", "kind": "ModelDeployment", "metadata": {"name": name},
            "spec": spec if spec is not None else BASE, **top}


def with_(**spec) -> dict:
    return md({**BASE, **spec})


SHA = "0123456789abcdef0123456789abcdef01234567"
TGI = {"engine": {"type": "tgi"}}
CPP = {"engine": {"type": "llamacpp"}}
VLLM = {"engine": {"type": "vllm"}}
SGL = {"engine": {"type": "sglang"}}


def env(*items: dict) -> dict:
    return {"engine": {"env": list(items)}}


def from_(**source) -> dict:
    return {"name": "A", "valueFrom": source}


# (case id, manifest, the sentence the API server's message must contain). Each case is one
# rule, named by what it refuses; the rules live in the generated CRD (schema and CEL).
INVALID = [
    # --- schema: required, types, enums, ranges, lengths
    ("no-model", md({}), "spec.model: Required value"),
    ("unknown-field", with_(replica=2), 'unknown field "spec.replica"'),
    ("engine-unknown", with_(engine={"type": "triton"}), 'Unsupported value: "triton"'),
    ("access-mode", with_(storage={"accessMode": "ReadWriteAlways"}), 'Unsupported value: "ReadWriteAlways"'),
    ("access-mode-once-pod", with_(storage={"accessMode": "ReadWriteOncePod"}),
     'Unsupported value: "ReadWriteOncePod"'),
    ("strategy-unknown", with_(router={"loadBalancing": {"strategy": "random"}}), 'Unsupported value: "random"'),
    ("revision-policy-unknown", md({"model": {"repo": "a/b", "revisionPolicy": "Always"}}),
     'Unsupported value: "Always"'),
    ("quantize-unknown", with_(**TGI, serving={"quantize": "int4"}), 'Unsupported value: "int4"'),
    ("temperature-range", with_(serving={"generation": {"temperature": 3}}),
     "spec.serving.generation.temperature: Invalid value: 3: spec.serving.generation.temperature in body should "
     "be less than or equal to 2"),
    ("top-p-zero", with_(serving={"generation": {"topP": 0}}),
     "spec.serving.generation.topP in body should be greater than 0"),
    ("context-length-tiny", with_(serving={"contextLength": 8}),
     "spec.serving.contextLength in body should be greater than or equal to 16"),
    ("replicas-negative", with_(replicas=-1), "spec.replicas in body should be greater than or equal to 0"),
    ("max-replicas-zero", with_(maxReplicas=0), "spec.maxReplicas in body should be greater than or equal to 1"),
    ("gpus-above-64", with_(gpus=65), "spec.gpus in body should be less than or equal to 64"),
    ("target-zero", with_(maxReplicas=2, autoscaling={"metrics": [{"type": "InFlight", "targetPerReplica": 0}]}),
     "spec.autoscaling.metrics[0].targetPerReplica in body should be greater than 0"),
    ("window-one-second", with_(maxReplicas=2, autoscaling={"windowSeconds": 1}),
     "spec.autoscaling.windowSeconds in body should be greater than or equal to 2"),
    ("too-many-args", with_(engine={"args": ["-v"] * 65}), "spec.engine.args: Too many: 65: must have at most 64 items"),
    ("repo-too-long", md({"model": {"repo": "a/" + "b" * 199}}), "spec.model.repo: Too long: may not be more than 200 bytes"),
    ("alias-twice", with_(router={"aliases": ["smol", "smol"]}), 'spec.router.aliases[1]: Duplicate value: "smol"'),
    # --- the model
    ("repo-not-org-name", md({"model": {"repo": "SmolLM2"}}),
     "must be a Hub repository as org/name, for example HuggingFaceTB/SmolLM2-135M-Instruct"),
    ("revision-dotdot", md({"model": {"repo": "a/b", "revision": "../main"}}),
     "must be a branch, tag or commit sha: letters, digits, '_', '.', '-' and '/', no '..'"),
    ("quantization-path", md({"model": {"repo": "a/b", "quantization": "../x.gguf"}}),
     "must be a GGUF quantization tag such as Q4_K_M, or a .gguf file name"),
    ("endpoint-not-http", md({"model": {"repo": "a/b", "endpoint": "ftp://mirror"}}),
     "must be an http:// or https:// URL, for example http://hub-mirror.hub.svc:8090"),
    ("secret-name", md({"model": {"repo": "a/b", "tokenSecretRef": {"name": "HF_Token"}}}),
     "must be a Secret name: lower-case letters, digits, '-' and '.'"),
    ("secret-key", md({"model": {"repo": "a/b", "tokenSecretRef": {"name": "hf", "key": "hf/token"}}}),
     "spec.model.tokenSecretRef.key: Invalid value: \"hf/token\": must be a key of a Secret or ConfigMap: letters, "
     "digits, '-', '_' and '.' (no '/' or spaces)"),
    ("files-dotdot", md({"model": {"repo": "a/b", "files": ["../../etc/*"]}}),
     "model.files and model.exclude are glob patterns of paths in the repository: no leading '/' and no '..'"),
    ("exclude-absolute", md({"model": {"repo": "a/b", "exclude": ["/weights/*.bin"]}}),
     "spec.model.exclude[0]: Invalid value: \"/weights/*.bin\": model.files and model.exclude are glob patterns"),
    ("follow-a-commit", md({"model": {"repo": "a/b", "revision": SHA, "revisionPolicy": "Follow"}}),
     "revisionPolicy Follow follows a branch, but model.revision is a commit sha, which never moves: set revision "
     "to a branch such as main, or revisionPolicy to Pin"),
    # --- the engine
    ("engine-managed-flag", with_(engine={"type": "llamacpp", "args": ["--port=9000"]}),
     "engine.args must not set -m, --model, --host, --port, --alias, -hf, --hf-repo: the operator sets them for "
     "llamacpp"),
    ("tgi-managed-flag", with_(engine={"type": "tgi", "args": ["--model-id", "x"]}),
     "engine.args must not set --model-id, --port, --hostname, --num-shard: the operator sets them for tgi"),
    ("auto-managed-flag", with_(engine={"args": ["--num-shard", "2"]}),
     "engine.args must not set -m, --model, --host, --port, --alias, -hf, --hf-repo, --model-id, --hostname, "
     "--num-shard, --served-model-name, --tensor-parallel-size, -tp, --model-path, --tp-size (nor an abbreviation or "
     "a '_' spelling of one): the operator sets them for whichever engine serves (engine.type auto)"),
    ("auto-managed-flag-spelling", with_(engine={"args": ["--served_model=x"]}),
     "the operator sets them for whichever engine serves (engine.type auto)"),
    ("args-repeat-serving", with_(serving={"contextLength": 2048}, engine={"type": "llamacpp", "args": ["-c", "8192"]}),
     "engine.args must not repeat a flag that a serving field sets on llama.cpp (-c or --ctx-size with "
     "serving.contextLength, -np or --parallel with serving.parallel, -t or --threads with serving.threads, -ngl or "
     "--gpu-layers or --n-gpu-layers with serving.gpuLayers, --chat-template with serving.chatTemplate): set the "
     "value in one place"),
    ("args-repeat-serving-auto", with_(serving={"contextLength": 2048}, engine={"args": ["--max-model-len", "8192"]}),
     "engine.args must not repeat a flag that a serving field sets on whichever engine serves (engine.type auto; for "
     "example -c or --max-model-len with serving.contextLength): set the value in one place, or name the engine"),
    ("engine-image", with_(engine={"image": "my image:latest"}),
     "engine.image must be a container image such as ghcr.io/ggml-org/llama.cpp:server: lower-case registry and "
     "path, then an optional :tag or @sha256 digest, no spaces"),
    ("env-both", with_(**env({"name": "A", "value": "1", "valueFrom": {"fieldRef": {"fieldPath": "x"}}})),
     "set exactly one of value and valueFrom"),
    ("env-name", with_(**env({"name": "1A", "value": "1"})),
     "must be a variable name: letters, digits and '_', not starting with a digit"),
    ("env-twice", with_(**env({"name": "A", "value": "1"}, {"name": "A", "value": "2"})),
     "each name may appear once in engine.env (a second one would silently win over the first)"),
    ("env-empty-source", with_(**env(from_())), "set exactly one of secretKeyRef, configMapKeyRef and fieldRef"),
    ("env-secret-name", with_(**env(from_(secretKeyRef={"name": "My_S", "key": "k"}))),
     "must be a Secret or ConfigMap name: lower-case letters, digits, '-' and '.'"),
    ("env-configmap-key", with_(**env(from_(configMapKeyRef={"name": "c", "key": "a key"}))),
     "spec.engine.env[0].valueFrom.configMapKeyRef.key: Invalid value: \"a key\": must be a key of a Secret or "
     "ConfigMap"),
    ("env-field-path", with_(**env(from_(fieldRef={"fieldPath": "spec.containers"}))),
     "must be a pod field the downward API offers: metadata.name, metadata.namespace, metadata.uid, "
     "spec.nodeName, spec.serviceAccountName, status.hostIP, status.hostIPs, status.podIP, status.podIPs, "
     "metadata.labels['<key>'] or metadata.annotations['<key>']"),
    # --- engine against serving settings and GPUs
    ("tgi-with-gguf-quant", md({"model": {"repo": "a/b", "quantization": "Q4_K_M"}, **TGI}),
     "model.quantization picks a GGUF file, which TGI cannot serve: remove it, or set engine.type to llamacpp "
     "(TGI's own quantization is serving.quantize)"),
    ("tgi-without-gpus", with_(**TGI, gpus=0),
     "TGI needs at least one GPU: set gpus to 1 or more, or use engine.type llamacpp"),
    ("tgi-settings-on-llamacpp", with_(**CPP, serving={"dtype": "bfloat16"}),
     "serving.dtype is a TGI, vLLM and SGLang setting, which llama.cpp does not have: remove it"),
    ("max-concurrent-on-llamacpp", with_(**CPP, serving={"maxConcurrentRequests": 8}),
     "spec.serving.maxConcurrentRequests: Invalid value: serving.maxConcurrentRequests is a TGI, vLLM "
     "and SGLang setting; llama.cpp takes serving.parallel"),
    ("llamacpp-settings-on-tgi", with_(**TGI, serving={"parallel": 4}),
     "serving.parallel is a llama.cpp setting; TGI, vLLM and SGLang take serving.maxConcurrentRequests"),
    ("max-input-on-vllm", with_(**VLLM, serving={"maxInputTokens": 2048}),
     "serving.maxInputTokens is a TGI setting; vLLM, SGLang and llama.cpp take serving.contextLength"),
    ("max-total-on-sglang", with_(**SGL, serving={"maxTotalTokens": 2048}),
     "serving.maxTotalTokens is a TGI setting; vLLM, SGLang and llama.cpp take serving.contextLength"),
    ("threads-on-vllm", with_(**VLLM, serving={"threads": 4}),
     "serving.threads is a llama.cpp setting, which TGI, vLLM and SGLang do not have: remove it"),
    ("gpu-memory-on-tgi", with_(**TGI, serving={"gpuMemoryUtilization": 0.8}),
     "serving.gpuMemoryUtilization is a vLLM and SGLang setting, which TGI and llama.cpp do not have: remove it"),
    ("gpu-memory-range", with_(**VLLM, serving={"gpuMemoryUtilization": 1.5}),
     "spec.serving.gpuMemoryUtilization in body should be less than or equal to 1"),
    ("quantize-not-vllms", with_(**VLLM, serving={"quantize": "exl2"}),
     "serving.quantize eetq (TGI), exl2 (TGI), marlin (TGI), bitsandbytes (TGI and SGLang), bitsandbytes-nf4 (TGI) "
     "and bitsandbytes-fp4 (TGI) are not vLLM's: vLLM takes awq, compressed-tensors, fp8 and gptq"),
    # (vLLM 0.29.0 has no bitsandbytes method; SGLang 0.5.20 has no plain marlin: tests/unit/engine_choices.py)
    ("quantize-bitsandbytes-on-vllm", with_(**VLLM, serving={"quantize": "bitsandbytes"}),
     "are not vLLM's: vLLM takes awq, compressed-tensors, fp8 and gptq"),
    ("quantize-not-sglangs", with_(**SGL, serving={"quantize": "marlin"}),
     "serving.quantize eetq (TGI), exl2 (TGI), marlin (TGI), bitsandbytes-nf4 (TGI) and bitsandbytes-fp4 (TGI) are "
     "not SGLang's: SGLang takes awq, compressed-tensors, fp8, gptq and bitsandbytes"),
    ("vllm-with-gguf-quant", md({"model": {"repo": "a/b", "quantization": "Q4_K_M"}, **VLLM}),
     "model.quantization picks a GGUF file, which modelship serves with llama.cpp only: remove it, or set "
     "engine.type to llamacpp (vLLM's own quantization is serving.quantize)"),
    ("sglang-with-gguf-quant", md({"model": {"repo": "a/b", "quantization": "Q4_K_M"}, **SGL}),
     "model.quantization picks a GGUF file, which modelship serves with llama.cpp only: remove it, or set "
     "engine.type to llamacpp (SGLang's own quantization is serving.quantize)"),
    ("vllm-without-gpus", with_(**VLLM, gpus=0),
     "vLLM needs at least one GPU: set gpus to 1 or more, or use engine.type llamacpp"),
    ("sglang-without-gpus", with_(**SGL, gpus=0),
     "SGLang needs at least one GPU: set gpus to 1 or more, or use engine.type llamacpp"),
    ("vllm-managed-flag", with_(engine={"type": "vllm", "args": ["--served-model-name=x"]}),
     "engine.args must not set --model, --host, --port, --served-model-name, --tensor-parallel-size, -tp (nor an "
     "abbreviation or a '_' spelling of one): the operator sets them for vllm"),
    # vLLM's parser reads '_' as '-'; argparse takes an unambiguous abbreviation of a long flag
    ("vllm-managed-underscore", with_(engine={"type": "vllm", "args": ["--tensor_parallel_size", "4"]}),
     "the operator sets them for vllm"),
    ("vllm-managed-abbreviation", with_(engine={"type": "vllm", "args": ["--served-model=x"]}),
     "the operator sets them for vllm"),
    ("sglang-managed-flag", with_(engine={"type": "sglang", "args": ["--tensor-parallel-size", "2"]}),
     "engine.args must not set --model-path, --model, --host, --port, --served-model-name, --tp-size, "
     "--tensor-parallel-size (nor an abbreviation of one): the operator sets them for sglang"),
    ("sglang-managed-abbreviation", with_(engine={"type": "sglang", "args": ["--tp", "2"]}),
     "the operator sets them for sglang"),
    ("args-repeat-vllm-serving", with_(serving={"contextLength": 2048},
                                       engine={"type": "vllm", "args": ["--max-model-len=8192"]}),
     "engine.args must not repeat a flag that a serving field sets on vLLM (--max-model-len with "
     "serving.contextLength, --max-num-seqs with serving.maxConcurrentRequests, --quantization or -q with "
     "serving.quantize, --dtype with serving.dtype, --gpu-memory-utilization with serving.gpuMemoryUtilization, "
     "--override-generation-config with serving.generation) (nor an abbreviation or a '_' spelling of one): set the "
     "value in one place"),
    ("args-repeat-vllm-underscore", with_(serving={"contextLength": 2048},
                                          engine={"type": "vllm", "args": ["--max_model_len=4096"]}),
     "engine.args must not repeat a flag that a serving field sets on vLLM"),
    ("args-repeat-vllm-dotted", with_(serving={"generation": {"temperature": 0.2}}, engine={
        "type": "vllm", "args": ["--override-generation-config.temperature=0.5"]}),
     "engine.args must not repeat a flag that a serving field sets on vLLM"),
    ("args-repeat-sglang-serving", with_(serving={"contextLength": 2048},
                                         engine={"type": "sglang", "args": ["--context-length", "8192"]}),
     "engine.args must not repeat a flag that a serving field sets on SGLang (--context-length with "
     "serving.contextLength"),
    ("args-repeat-tgi-serving", with_(serving={"contextLength": 2048},
                                      engine={"type": "tgi", "args": ["--max-total-tokens=8192"]}),
     "engine.args must not repeat a flag that a serving field sets on TGI (--max-total-tokens with "
     "serving.contextLength"),
    ("gpu-layers-without-gpus", with_(serving={"gpuLayers": 20}),
     "serving.gpuLayers offloads layers to a GPU: set gpus to 1 or more"),
    ("chat-template-name", with_(serving={"chatTemplate": "Chat ML"}),
     "must be a llama.cpp built-in template name such as chatml"),
    # --- token limits that contradict each other
    ("input-over-total", with_(serving={"maxInputTokens": 4096, "maxTotalTokens": 2048}),
     "serving.maxInputTokens must be less than serving.maxTotalTokens (the total includes the new tokens)"),
    ("context-and-total", with_(**TGI, serving={"contextLength": 4096, "maxTotalTokens": 4096}),
     "serving.contextLength and serving.maxTotalTokens both set TGI's --max-total-tokens: set only "
     "maxTotalTokens (contextLength is its default)"),
    ("input-over-context", with_(**TGI, serving={"maxInputTokens": 4096, "contextLength": 2048}),
     "serving.maxInputTokens must be less than serving.contextLength, which is TGI's total (the prompt plus the "
     "new tokens)"),
    ("new-tokens-over-total", with_(**TGI, serving={"maxTotalTokens": 2048, "generation": {"maxNewTokens": 2048}}),
     "serving.generation.maxNewTokens must be less than serving.maxTotalTokens: the prompt needs room too"),
    ("new-tokens-over-context", with_(serving={"contextLength": 2048, "generation": {"maxNewTokens": 4096}}),
     "serving.generation.maxNewTokens must be less than serving.contextLength: the prompt needs room too"),
    # --- replicas and autoscaling
    ("replicas-above-max", with_(replicas=5, maxReplicas=2), "replicas must be at most maxReplicas"),
    ("min-above-max", with_(minReplicas=3, maxReplicas=2, replicas=2), "minReplicas must not exceed maxReplicas"),
    ("min-without-max", with_(minReplicas=0),
     "minReplicas needs maxReplicas: set maxReplicas to turn autoscaling on"),
    ("autoscaling-without-max", with_(autoscaling={"priority": 5}),
     "autoscaling needs maxReplicas: set maxReplicas (and minReplicas) to turn autoscaling on"),
    ("metric-twice", with_(maxReplicas=2, autoscaling={"metrics": [{"type": "InFlight", "targetPerReplica": 2},
                                                                     {"type": "InFlight", "targetPerReplica": 4}]}),
     "each metric type may appear once in autoscaling.metrics"),
    # --- resources
    ("gpus-in-resources", with_(resources={"limits": {"nvidia.com/gpu": 1}}),
     "set GPUs with spec.gpus, not resources.limits"),
    ("gpus-in-requests", with_(resources={"requests": {"amd.com/gpu": 1}}),
     "set GPUs with spec.gpus, not resources.requests"),
    ("request-above-limit", with_(resources={"requests": {"memory": "8Gi", "cpu": 2},
                                             "limits": {"memory": "4Gi", "cpu": "2000m"}}),
     "resources.requests must not be above resources.limits for the same resource: lower the request or raise "
     "the limit"),
    ("resource-name", with_(resources={"requests": {"mem": "4Gi"}}),
     "resources.requests names cpu, memory, ephemeral-storage, hugepages-<size> or an extended resource with a "
     "domain such as example.com/device"),
    ("resource-negative", with_(resources={"limits": {"cpu": "-1"}}), "resources.limits must not be negative"),
    ("resource-not-quantity", with_(resources={"requests": {"memory": "lots"}}),
     "spec.resources.requests[memory]: Invalid value: \"lots\": must be a quantity such as 20Gi, 500m or 4"),
    # --- storage
    ("size-not-quantity", with_(storage={"size": "ten gigs"}), "must be a quantity such as 20Gi, 500m or 4"),
    ("size-zero", with_(storage={"size": "0Gi"}),
     "spec.storage.size: Invalid value: \"0Gi\": storage.size must be a size of at least 1 byte, for example 20Gi "
     "(not zero, negative, or a fraction such as 500m)"),
    ("size-negative-int", with_(storage={"size": -5}),
     "spec.storage.size: Invalid value: -5: storage.size must be a size of at least 1 byte"),
    ("size-fraction", with_(storage={"size": "500m"}),
     "spec.storage.size: Invalid value: \"500m\": storage.size must be a size of at least 1 byte"),
    ("existing-claim-and-size", with_(storage={"existingClaim": "weights", "size": "10Gi"}),
     "storage.existingClaim uses a volume that exists already; do not set size or storageClassName with it"),
    ("existing-claim-name", with_(storage={"existingClaim": "My_Claim"}), "must be a PersistentVolumeClaim name"),
    ("storage-class-name", with_(storage={"storageClassName": "Fast_SSD"}),
     "must be a StorageClass name: lower-case letters, digits, '-' and '.'"),
    ("shared-cache-and-claim", with_(storage={"sharedCache": True, "existingClaim": "weights"}),
     "storage.sharedCache and storage.existingClaim both choose the volume: set one of them"),
    ("shared-cache-endpoint", md({"model": {"repo": "a/b", "endpoint": "http://my-hub:8080"},
                                  "storage": {"sharedCache": True}}),
     "storage.sharedCache holds files from the operator's hubEndpoint only; remove model.endpoint or set "
     "storage.sharedCache: false"),
    # --- placement and the router
    ("pool-name", with_(pool="GPU Pool"),
     "must be a pool name from the operator's configuration: lower-case letters, digits and '-'"),
    ("alias-name", with_(router={"aliases": ["my model"]}),
     "aliases are model names: letters, digits, '_', '.', ':', '/' and '-'"),
    ("task-name", with_(router={"tasks": ["Chat"]}), "task names are lower-case words joined by '-'"),
    ("alias-and-task", with_(router={"aliases": ["chat"], "tasks": ["chat"]}),
     "a name cannot be both an alias and a task"),
    ("fallback-to-itself", with_(router={"fallback": ["bad"]}),
     "spec.router.fallback must name other ModelDeployments, not this one"),
    ("fallback-name", with_(router={"fallback": ["Other_Model"]}),
     "router.fallback names ModelDeployments: a lower-case letter first, then lower-case letters, digits and '-', "
     "at most 48 characters"),
    # --- the name, which names the Service, the volume and the Jobs
    ("name-too-long", md(name="m" * 49),
     "metadata.name must start with a lower-case letter, contain only lower-case letters, digits and '-', and be "
     "at most 48 characters: it names the Service, Deployment and download Job"),
    ("name-starts-with-digit", md(name="1smol"), "metadata.name must start with a lower-case letter"),
    ("name-with-a-dot", md(name="smol.v2"), "metadata.name must start with a lower-case letter"),
]

# Each rule's neighbour that is admitted: a rule that refused everything would fail here.
VALID = [
    ("defaults", md()),
    ("name-of-48", md(name="m" * 48)),
    ("secret-key", md({"model": {"repo": "a/b", "tokenSecretRef": {"name": "hf", "key": "hf.token_v-1"}}})),
    ("files-and-exclude", md({"model": {"repo": "a/b", "files": ["*.json", "sub/dir/*.gguf"],
                                        "exclude": ["original/*", "*..bin"]}})),
    ("pin-a-commit", md({"model": {"repo": "a/b", "revision": SHA}})),
    ("follow-a-branch", md({"model": {"repo": "a/b", "revision": "main", "revisionPolicy": "Follow"}})),
    ("llamacpp-args", with_(engine={"type": "llamacpp", "args": ["--flash-attn", "-c", "8192"],
                                    "image": "localhost:5000/llama.cpp@sha256:0123abcd"})),
    ("auto-args", with_(engine={"args": ["--verbose"], "image": "ghcr.io/ggml-org/llama.cpp:server-b4800"})),
    ("tgi-args-and-serving", with_(engine={"type": "tgi", "args": ["--max-batch-prefill-tokens", "4096"]},
                                   serving={"maxTotalTokens": 4096, "maxInputTokens": 2048,
                                            "maxConcurrentRequests": 64, "generation": {"maxNewTokens": 1024}})),
    ("tgi-context-length", with_(**TGI, serving={"contextLength": 4096, "maxInputTokens": 2048})),
    ("vllm-serving", md({"model": {"repo": "a/b"}, **VLLM, "gpus": 2, "serving": {
        "contextLength": 8192, "maxConcurrentRequests": 64, "dtype": "bfloat16", "quantize": "fp8",
        "gpuMemoryUtilization": 0.85, "generation": {"temperature": 0.2, "maxNewTokens": 1024}}})),
    ("sglang-serving", md({"model": {"repo": "a/b"}, "engine": {"type": "sglang", "args": ["--schedule-policy", "lpm"]},
                           "serving": {"contextLength": 4096, "maxConcurrentRequests": 32, "quantize": "bitsandbytes",
                                       "gpuMemoryUtilization": 0.8, "generation": {"topK": 20}}})),
    # SGLang's --max-total-tokens sizes its KV pool (TGI's is the context length)
    ("sglang-kv-pool-and-context", with_(serving={"contextLength": 32768}, engine={
        "type": "sglang", "args": ["--max-total-tokens", "200000"]})),
    ("sglang-compressed-tensors", with_(**SGL, serving={"quantize": "compressed-tensors"})),
    ("vllm-other-dotted-flag", with_(serving={"generation": {"temperature": 0.2}}, engine={
        "type": "vllm", "args": ["--compilation-config.mode=3", "--max-num-batched-tokens", "8192"]})),
    ("llamacpp-serving", with_(**CPP, gpus=1, serving={"contextLength": 4096, "parallel": 4, "gpuLayers": 20,
                                                       "generation": {"maxNewTokens": 1024}})),
    ("env", with_(**env({"name": "A", "value": "1"}, {"name": "B", "valueFrom": {"fieldRef": {
        "fieldPath": "metadata.labels['app']"}}}, {"name": "C", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
        {"name": "D", "valueFrom": {"configMapKeyRef": {"name": "c", "key": "settings.yaml"}}}))),
    ("resources", with_(resources={"requests": {"cpu": "500m", "memory": "4Gi", "hugepages-2Mi": "1Gi",
                                                "example.com/device": 1},
                                   "limits": {"cpu": 1, "memory": "4Gi", "ephemeral-storage": "10Gi"}})),
    ("sizes", with_(storage={"size": "1.5Gi", "storageClassName": "fast-ssd.example"})),
    ("size-of-one-byte", with_(storage={"size": "1"})),
    ("size-int", with_(storage={"size": 1073741824})),
    ("shared-cache", with_(storage={"sharedCache": True, "accessMode": "ReadWriteMany"})),
    ("own-endpoint", md({"model": {"repo": "a/b", "endpoint": "http://my-hub:8080"}})),
    ("existing-claim", with_(storage={"existingClaim": "weights"})),
    ("autoscaling", with_(replicas=0, minReplicas=0, maxReplicas=3, autoscaling={"metrics": [
        {"type": "InFlight", "targetPerReplica": 2}, {"type": "EngineQueue", "targetPerReplica": 4}]})),
    ("router", with_(router={"aliases": ["smol:latest"], "tasks": ["chat"], "fallback": ["other-model"]})),
]


def kubectl_apply(cluster, manifest: dict, namespace: str, *flags: str) -> subprocess.CompletedProcess:
    return subprocess.run([cluster.kubectl_bin, f"--kubeconfig={cluster.kubeconfig}", "apply", "-n", namespace,
                           *flags, "-f", "-"], input=yaml.safe_dump(manifest), capture_output=True, text=True,
                          timeout=60)


TINY, TINY_GGUF = "modelship-test/tiny-llama", "modelship-test/tiny-llama-GGUF"  # the operator's catalogue


def tiny(repo: str = TINY, **spec) -> dict:
    return {"model": {"repo": repo}, **spec}


# Specs the API server admits but the operator refuses, because only it knows the pools, the
# resolved model, or what exists in the namespace: (case id, spec, condition, reason, message).
OPERATOR_REFUSES = [
    ("pool-not-found", tiny(TINY_GGUF, pool="nope"), "Ready", "PoolNotFound",
     "pool 'nope' is not configured in the operator; known pools: cpu, gpu, local"),
    ("pool-has-no-gpus", tiny(TINY_GGUF, pool="cpu", gpus=1), "Ready", "PoolHasNoGPUs",
     "pool 'cpu' has no GPUs (no gpuResource in the operator's configuration), but 1 GPU(s) were asked for: set "
     "gpus to 0 or choose a GPU pool"),
    ("too-many-gpus", tiny(gpus=9), "Ready", "TooManyGPUs",
     "pool 'gpu' has at most 8 GPUs per node, but gpus is 9: lower gpus or choose a larger pool"),
    ("tgi-without-gpus-auto", tiny(gpus=0), "Ready", "GPUsRequired", "TGI needs at least one GPU: set gpus to 1 or more"),
    ("llamacpp-on-safetensors", tiny(engine={"type": "llamacpp"}), "Ready", "EngineMismatch",
     "engine.type is llamacpp, which serves GGUF files, but this repository has safetensors weights: use "
     "engine.type auto, tgi, vllm or sglang, or a GGUF repo"),
    ("vllm-on-gguf", tiny(TINY_GGUF, engine={"type": "vllm"}), "Ready", "EngineMismatch",
     "engine.type is vllm, but the resolved files are GGUF, which llama.cpp serves: use engine.type llamacpp (or "
     "auto), or a safetensors repo"),
    ("tgi-on-gguf", tiny(TINY_GGUF, engine={"type": "tgi"}), "Ready", "EngineMismatch",
     "engine.type is tgi, but the resolved files are GGUF, which llama.cpp serves: use engine.type llamacpp (or "
     "auto), or a safetensors repo"),
    ("tgi-setting-on-gguf", tiny(TINY_GGUF, serving={"dtype": "bfloat16"}), "Ready", "SettingNotForEngine",
     "serving.dtype is a TGI, vLLM and SGLang setting, but the model is served by llama.cpp (GGUF weights), which "
     "would ignore it: remove it, or choose a model in the other format"),
    ("llamacpp-setting-on-safetensors", tiny(serving={"threads": 4, "chatTemplate": "chatml"}), "Ready",
     "SettingNotForEngine", "serving.threads, serving.chatTemplate are llama.cpp settings, but the model is served "
     "by TGI (safetensors weights), which would ignore them: remove them, or choose a model in the other format"),
    ("storage-too-small", tiny(TINY_GGUF, storage={"size": 3}), "Ready", "StorageTooSmall",
     "storage.size 3 is smaller than the model's files (4 bytes): set it to at least 1Gi, or remove it to size "
     "the volume automatically"),
    ("claim-not-found", tiny(TINY_GGUF, storage={"existingClaim": "absent"}), "Ready", "ClaimNotFound",
     "storage.existingClaim 'absent' does not exist in namespace {namespace}: create it, or remove existingClaim to "
     "let the operator create a volume"),
    ("service-taken", tiny(TINY_GGUF), "Ready", "ResourceConflict",
     "Service service-taken already exist(s) and do(es) not belong to this ModelDeployment; the operator does not take "
     "over objects it did not create: delete or rename them, or give the ModelDeployment another name"),
    ("repo-not-found", tiny("modelship-test/absent"), "Resolved", "RepoNotFound", "modelship-test/absent"),
]


def test_the_catalogue_names_each_case_once():
    ids = [i for i, _, _ in INVALID] + [f"operator-{i}" for i, *_ in OPERATOR_REFUSES]
    assert len(ids) == len(set(ids)) and len(ids) >= 60, len(ids)


@pytest.mark.parametrize("manifest", [pytest.param(m, id=i) for i, m in VALID])
def test_each_rules_valid_neighbour_is_admitted(cluster, crd_installed, manifest):
    proc = kubectl_apply(cluster, manifest, "default", "--dry-run=server")
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("manifest,expected", [pytest.param(m, e, id=i) for i, m, e in INVALID])
def test_invalid_model_deployment_is_refused_with_a_message(cluster, crd_installed, manifest, expected):
    # (a server-side dry run: the API server validates all of it and stores nothing)
    proc = kubectl_apply(cluster, manifest, "default", "--dry-run=server")
    assert proc.returncode != 0, f"accepted: {proc.stdout}"
    assert expected in proc.stderr, proc.stderr


def test_valid_model_deployment_is_defaulted_by_the_api_server(cluster, crd_installed, namespace):
    cluster.apply(md(name="good"), namespace)
    import json

    spec = json.loads(cluster.kubectl("get", "md", "good", "-n", namespace, "-o", "json"))["spec"]
    assert spec["model"]["revision"] == "main" and spec["engine"] == {"type": "auto"}
    assert spec["replicas"] == 1 and spec["storage"]["accessMode"] == "ReadWriteOnce"


def test_storage_class_and_access_mode_cannot_change(cluster, crd_installed, namespace):
    cluster.apply(with_(storage={"storageClassName": "modelship-local"}) | {"metadata": {"name": "pinned"}},
                  namespace)
    changed = with_(storage={"storageClassName": "other"}) | {"metadata": {"name": "pinned"}}
    proc = subprocess.run([cluster.kubectl_bin, f"--kubeconfig={cluster.kubeconfig}", "apply", "-n", namespace,
                           "-f", "-"], input=yaml.safe_dump(changed), capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "storage.storageClassName cannot be set, changed or removed" in proc.stderr, \
        proc.stderr
    changed = with_(storage={"storageClassName": "modelship-local", "accessMode": "ReadWriteMany"}) | {
        "metadata": {"name": "pinned"}}
    proc = subprocess.run([cluster.kubectl_bin, f"--kubeconfig={cluster.kubeconfig}", "apply", "-n", namespace,
                           "-f", "-"], input=yaml.safe_dump(changed), capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "storage.accessMode cannot change" in proc.stderr, proc.stderr


def test_storage_size_may_be_lowered_as_well_as_raised(cluster, crd_installed, namespace):
    """Not refused at admission: the API server cannot tell whether the volume exists (a size
    over a quota never made it, and lowering it is the fix); when it does exist, the operator
    says that it stays at its size (test_plan: `...a volume cannot shrink: it stays at...`)."""
    sized = lambda size: with_(storage={"size": size}) | {"metadata": {"name": "sized"}}
    cluster.apply(sized("10Gi"), namespace)
    assert kubectl_apply(cluster, sized("5Gi"), namespace).returncode == 0
    assert kubectl_apply(cluster, sized(20 * 1024 ** 3), namespace).returncode == 0  # 20Gi, as a number


def test_kubectl_explain_reads_the_descriptions(cluster, crd_installed):
    # kubectl explain reads the OpenAPI document, which the API server publishes a while after
    # the CRD is Established: until then explain fails (it does not know the resource).
    out = wait_for(lambda: cluster.kubectl("explain", "modeldeployment.spec.model"), 60,
                   "the CRD's OpenAPI document to be published (kubectl explain to know the resource)")
    assert "Hub repository, as `org/name`" in out and "tokenSecretRef" in out
    assert "Default: `main`" in cluster.kubectl("explain", "md.spec.model.revision")


def test_specs_the_operator_cannot_honour_get_a_condition_that_says_what_to_fix(cluster, namespace,
                                                                                 local_operator):
    from .conftest import condition, md_status, wait_phase

    cluster.apply({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "service-taken"},
                   "spec": {"selector": {"app": "mine"}, "ports": [{"port": 80}]}}, namespace)
    local_operator.start(config={"resyncSeconds": 3600})
    for name, spec, *_ in OPERATOR_REFUSES:
        cluster.apply(md(spec, name=name), namespace)
    for name, _, type_, reason, message in OPERATOR_REFUSES:
        st = wait_phase(cluster, local_operator, name, "Pending" if reason == "ClaimNotFound" else "Failed")
        said = condition(st, type_)
        assert (said["status"], said["reason"]) == ("False", reason), (name, said)
        assert message.format(namespace=namespace) in said["message"], (name, said["message"])
        assert not md_status(cluster, namespace, name).get("readyReplicas"), name


# With the operator's defaultEngine vllm, engine.type auto serves safetensors with vLLM: what
# only TGI has is refused by the operator (the API server cannot know), and so are no GPUs.
DEFAULT_VLLM_REFUSES = [
    ("tgi-setting-on-default-vllm", tiny(serving={"maxInputTokens": 100}), "SettingNotForEngine",
     "serving.maxInputTokens is a TGI setting, but the model is served by vLLM (safetensors weights), which would "
     "ignore it: remove it, or set engine.type to tgi"),
    ("default-vllm-without-gpus", tiny(gpus=0), "GPUsRequired", "vLLM needs at least one GPU: set gpus to 1 or more"),
    ("quantize-not-default-vllms", tiny(serving={"quantize": "eetq"}), "SettingNotForEngine",
     "serving.quantize eetq is a TGI method, but the model is served by vLLM (safetensors weights), which does not "
     "have it: choose another, or set engine.type to tgi"),
]


def test_the_default_engine_setting_decides_auto_and_what_it_refuses(cluster, namespace, local_operator):
    from .conftest import condition, md_status, wait_phase

    local_operator.start(config={"resyncSeconds": 3600, "defaultEngine": "vllm"})
    for name, spec, *_ in DEFAULT_VLLM_REFUSES:
        cluster.apply(md(spec, name=name), namespace)
    for name, _, reason, message in DEFAULT_VLLM_REFUSES:
        st = wait_phase(cluster, local_operator, name, "Failed")
        said = condition(st, "Ready")
        assert (said["status"], said["reason"], said["message"]) == ("False", reason, message), (name, said)
        assert md_status(cluster, namespace, name)["resolved"]["engine"] == "vllm"
