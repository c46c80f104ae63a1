"""The pure builders, against golden YAML files.

A golden file is the exact object the operator would apply. When a change is intended,
regenerate them with `MODELSHIP_UPDATE_GOLDEN=1 pytest tests/unit/test_builders.py` and
review the diff like any other change.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from modelship import manifests, units
from modelship.api import ModelDeployment, ResolvedModel
from modelship.reconcile.policy import place
from modelship.settings import Settings

GOLDEN = Path(__file__).with_name("golden")
SHA = "0123456789abcdef0123456789abcdef01234567"


def md(spec: dict, name: str = "m") -> ModelDeployment:
    return ModelDeployment.model_validate({"apiVersion": "modelship.io/v1alpha1", "kind": "ModelDeployment",
                                           "metadata": {"name": name, "namespace": "ns", "uid": "uid-1",
                                                        "generation": 1}, "spec": spec})


GGUF = ResolvedModel(repo="org/tiny-GGUF", revision="main", sha=SHA, short_sha=SHA[:7], engine="llamacpp",
                     format="gguf", model_file="tiny-Q4_K_M-00001-of-00002.gguf", quantization="Q4_K_M",
                     files=[{"path": "tiny-Q4_K_M-00001-of-00002.gguf", "size": 3 * 2**30, "sha256": "a" * 64},
                            {"path": "tiny-Q4_K_M-00002-of-00002.gguf", "size": 2 * 2**30, "sha256": "b" * 64}],
                     total_bytes=5 * 2**30)
SAFETENSORS = ResolvedModel(repo="org/tiny", revision="v1", sha=SHA, short_sha=SHA[:7], engine="tgi",
                            format="safetensors",
                            files=[{"path": "config.json", "size": 700},
                                   {"path": "model.safetensors", "size": 14 * 2**30, "sha256": "c" * 64}],
                            total_bytes=14 * 2**30 + 700)

CASES = {
    "llamacpp-cpu": ({"model": {"repo": "org/tiny-GGUF", "quantization": "Q4_K_M"},
                      "serving": {"contextLength": 8192, "parallel": 4, "threads": 8,
                                  "generation": {"temperature": 0.2, "topP": 0.9, "topK": 40, "maxNewTokens": 256}},
                      "engine": {"args": ["--no-webui"], "env": [{"name": "LLAMA_ARG_FLASH_ATTN", "value": "1"}]},
                      "router": {"aliases": ["tiny"]}}, GGUF),
    "llamacpp-gpu": ({"model": {"repo": "org/tiny-GGUF"}, "gpus": 1, "replicas": 2,
                      "resources": {"requests": {"memory": "8Gi"}}}, GGUF),
    "tgi": ({"model": {"repo": "org/tiny", "revision": "v1", "tokenSecretRef": {"name": "hf"}}, "gpus": 2,
             "serving": {"maxConcurrentRequests": 64, "maxInputTokens": 4000, "maxTotalTokens": 4096,
                         "dtype": "bfloat16"}}, SAFETENSORS),
    "vllm": ({"model": {"repo": "org/tiny"}, "engine": {"type": "vllm"},
              "serving": {"contextLength": 8192, "maxConcurrentRequests": 32, "gpuMemoryUtilization": 0.85,
                          "generation": {"temperature": 0.2, "topK": 0, "maxNewTokens": 256}}},
             SAFETENSORS.model_copy(update={"engine": "vllm"})),
    "vllm-multi-gpu": ({"model": {"repo": "org/tiny"}, "engine": {"type": "vllm", "args": ["--enforce-eager"]},
                        "gpus": 4, "serving": {"dtype": "bfloat16", "quantize": "fp8"}},
                       SAFETENSORS.model_copy(update={"engine": "vllm"})),
    "sglang": ({"model": {"repo": "org/tiny"}, "engine": {"type": "sglang"}, "gpus": 2,
                "serving": {"contextLength": 4096, "maxConcurrentRequests": 16, "gpuMemoryUtilization": 0.8,
                            "quantize": "awq", "generation": {"topP": 0.9, "topK": 0}}},
               SAFETENSORS.model_copy(update={"engine": "sglang"})),
}


def build_all(name: str) -> list[dict]:
    spec, resolved = CASES[name]
    m = md(spec)
    settings = Settings()
    placement = place(m, resolved.engine, settings)
    return [manifests.service(m), manifests.pvc(m, resolved, settings),
            manifests.download_job(m, resolved, "https://huggingface.co", settings),
            manifests.deployment(m, resolved, placement, settings)]


@pytest.mark.parametrize("name", sorted(CASES))
def test_children_match_golden_files(name):
    text = yaml.safe_dump_all(build_all(name), sort_keys=True, width=120)
    path = GOLDEN / f"{name}.yaml"
    if os.environ.get("MODELSHIP_UPDATE_GOLDEN"):
        path.write_text(text)
    assert path.exists(), f"{path} is missing: run with MODELSHIP_UPDATE_GOLDEN=1 and review it"
    assert text == path.read_text(), f"{name} differs from {path}; if intended, regenerate and review"


def test_llamacpp_loads_the_first_shard_from_the_read_only_snapshot():
    svc, pvc, job, dep = build_all("llamacpp-cpu")
    pod = dep["spec"]["template"]["spec"]
    c = pod["containers"][0]
    args = c["args"]
    assert args[args.index("-m") + 1] == (f"/models/models--org--tiny-GGUF/snapshots/{SHA}/"
                                          "tiny-Q4_K_M-00001-of-00002.gguf")
    assert args[args.index("-c") + 1] == "8192" and args[args.index("--parallel") + 1] == "4"
    assert "--jinja" in args and "--metrics" in args and args[args.index("--alias") + 1] == "m"
    assert "-ngl" not in args and args[-1] == "--no-webui"
    assert c["image"] == "ghcr.io/ggml-org/llama.cpp:server"
    assert {"name": "models", "mountPath": "/models", "readOnly": True} in c["volumeMounts"]
    assert pod["volumes"][0]["persistentVolumeClaim"] == {"claimName": "m-weights", "readOnly": True}
    assert pod["nodeSelector"] == {"modelship.io/pool": "cpu"} and "tolerations" not in pod


def test_gpu_pods_ask_for_gpus_tolerate_the_taint_and_use_the_cuda_image():
    dep = build_all("llamacpp-gpu")[3]
    pod = dep["spec"]["template"]["spec"]
    c = pod["containers"][0]
    assert c["image"] == "ghcr.io/ggml-org/llama.cpp:server-cuda"
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert c["resources"]["requests"]["memory"] == "8Gi"  # override wins over the pool's default
    assert c["args"][c["args"].index("-ngl") + 1] == "999"
    assert pod["nodeSelector"] == {"modelship.io/pool": "gpu"}
    assert pod["tolerations"][0]["key"] == "nvidia.com/gpu"
    assert dep["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 0, "maxUnavailable": 1}


def test_tgi_shards_over_its_gpus_offline():
    svc, pvc, job, dep = build_all("tgi")
    c = dep["spec"]["template"]["spec"]["containers"][0]
    a = c["args"]
    assert a[a.index("--model-id") + 1] == f"/models/models--org--tiny/snapshots/{SHA}"
    assert a[a.index("--num-shard") + 1] == "2" and a[a.index("--dtype") + 1] == "bfloat16"
    assert {"name": "HF_HUB_OFFLINE", "value": "1"} in c["env"]
    assert c["image"].startswith("ghcr.io/huggingface/text-generation-inference:")
    assert {"name": "shm", "mountPath": "/dev/shm"} in c["volumeMounts"]


def container(name: str) -> dict:
    return build_all(name)[3]["spec"]["template"]["spec"]["containers"][0]


def test_vllm_serves_the_snapshot_under_the_deployments_name_with_an_explicit_command():
    c = container("vllm")
    a = c["args"]
    assert c["command"] == ["vllm", "serve"] and c["image"] == "vllm/vllm-openai:v0.29.0"
    assert a[:9] == [f"/models/models--org--tiny/snapshots/{SHA}", "--served-model-name", "m", "--host", "0.0.0.0",
                     "--port", "8080", "--tensor-parallel-size", "1"]
    assert "--enable-prefix-caching" in a and a[a.index("--max-model-len") + 1] == "8192"
    assert a[a.index("--max-num-seqs") + 1] == "32" and a[a.index("--gpu-memory-utilization") + 1] == "0.85"
    assert a[a.index("--override-generation-config") + 1] == '{"max_new_tokens":256,"temperature":0.2,"top_k":0}'
    assert {"name": "HF_HUB_OFFLINE", "value": "1"} in c["env"] and c["startupProbe"]["httpGet"]["path"] == "/health"


def test_vllm_shards_over_its_gpus_with_shared_memory_for_them():
    dep = build_all("vllm-multi-gpu")[3]
    c = dep["spec"]["template"]["spec"]["containers"][0]
    a = c["args"]
    assert a[a.index("--tensor-parallel-size") + 1] == "4" and a[a.index("--quantization") + 1] == "fp8"
    assert a[-1] == "--enforce-eager" and c["resources"]["limits"]["nvidia.com/gpu"] == "4"
    assert {"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": "8Gi"}} in dep["spec"]["template"]["spec"][
        "volumes"]


def test_sglang_serves_with_metrics_and_its_own_sampling_names():
    c = container("sglang")
    a = c["args"]
    assert c["command"] == ["python3", "-m", "sglang.launch_server"] and c["image"].startswith("lmsysorg/sglang:v")
    assert a[a.index("--model-path") + 1] == f"/models/models--org--tiny/snapshots/{SHA}"
    assert a[a.index("--served-model-name") + 1] == "m" and a[a.index("--tp-size") + 1] == "2"
    assert "--enable-metrics" in a and a[a.index("--context-length") + 1] == "4096"
    assert a[a.index("--max-running-requests") + 1] == "16" and a[a.index("--mem-fraction-static") + 1] == "0.8"
    assert a[a.index("--preferred-sampling-params") + 1] == '{"top_k":-1,"top_p":0.9}'


def test_sglang_probes_never_wait_on_a_generation_past_their_timeout():
    """SGLang's /health generates a token and waits up to 20 s (SGLANG_HEALTH_CHECK_TIMEOUT):
    startup and readiness ask /health with the generation off; liveness asks /health_generate
    with a timeout past SGLang's own budget. The other engines' /health answers at once."""
    c = container("sglang")
    assert {"name": "SGLANG_ENABLE_HEALTH_ENDPOINT_GENERATION", "value": "false"} in c["env"]
    assert [(c[p]["httpGet"]["path"], c[p]["timeoutSeconds"]) for p in ("startupProbe", "readinessProbe",
                                                                          "livenessProbe")] == [
        ("/health", 5), ("/health", 5), ("/health_generate", 25)]
    for engine in ("tgi", "vllm", "llamacpp-gpu"):
        c = container(engine)
        assert (c["livenessProbe"]["httpGet"]["path"], c["livenessProbe"]["timeoutSeconds"]) == ("/health", 5)


def test_every_pod_meets_the_restricted_pod_security_standard():
    for name in CASES:
        for obj in build_all(name)[2:]:
            pod = obj["spec"]["template"]["spec"]
            assert pod["securityContext"]["runAsNonRoot"] is True
            assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
            assert pod["automountServiceAccountToken"] is False
            for c in pod["containers"]:
                sc = c["securityContext"]
                assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"] == {"drop": ["ALL"]}


def test_token_reaches_the_download_job_only_through_a_secret_ref():
    svc, pvc, job, dep = build_all("tgi")
    env = job["spec"]["template"]["spec"]["containers"][0]["env"]
    assert {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf", "key": "token"}}} in env
    assert "HF_TOKEN" not in yaml.safe_dump(dep)


def test_volume_is_sized_from_the_files_with_a_margin():
    assert build_all("tgi")[1]["spec"]["resources"]["requests"]["storage"] == "16Gi"  # 14 GiB + 10%, rounded up
    assert manifests.volume_size(100 * 2**20, 10) == "2Gi"  # at least 1 GiB of margin
    m = md({"model": {"repo": "org/tiny"}, "storage": {"size": "50Gi", "storageClassName": "fast",
                                                     "accessMode": "ReadWriteMany"}})
    spec = manifests.pvc(m, SAFETENSORS, Settings())["spec"]
    assert spec == {"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": "50Gi"}},
                    "storageClassName": "fast"}


def test_children_are_owned_labelled_and_hashed():
    for obj in build_all("llamacpp-cpu"):
        meta = obj["metadata"]
        assert meta["namespace"] == "ns"
        assert meta["ownerReferences"] == [{"apiVersion": "modelship.io/v1alpha1", "kind": "ModelDeployment",
                                            "name": "m", "uid": "uid-1", "controller": True,
                                            "blockOwnerDeletion": True}]
        assert meta["labels"]["modelship.io/deployment"] == "m"
        assert len(meta["annotations"][manifests.APPLIED_HASH]) == 16


def test_a_spec_change_changes_the_pod_template_hash_and_a_scale_does_not():
    a = md(CASES["llamacpp-cpu"][0])
    changed = md({**CASES["llamacpp-cpu"][0], "serving": {"contextLength": 4096}})
    scaled = md({**CASES["llamacpp-cpu"][0], "replicas": 3})
    s = Settings()
    p = place(a, "llamacpp", s)
    h = lambda m: manifests.deployment(m, GGUF, p, s)["spec"]["template"]["metadata"]["annotations"][manifests.SPEC_HASH]
    assert h(a) != h(changed)
    assert h(a) == h(scaled)
    dep = lambda m: manifests.deployment(m, GGUF, p, s)["metadata"]["annotations"][manifests.APPLIED_HASH]
    assert dep(a) != dep(scaled)  # the Deployment itself is re-applied with the new replica count


def test_download_job_name_follows_what_the_job_does():
    m = md({"model": {"repo": "org/tiny-GGUF"}})
    s = Settings()
    name = lambda m, r, endpoint="https://huggingface.co", **kw: manifests.download_job(m, r, endpoint, s, **kw)[
        "metadata"]["name"]
    assert name(m, GGUF) != name(m, GGUF.model_copy(update={"sha": "f" * 40}))
    assert name(m, GGUF) != name(m, GGUF, endpoint="http://mirror:8090")  # a fixed endpoint is a new Job
    assert name(m, GGUF) == name(m, GGUF.model_copy())
    assert name(m, GGUF) == name(m, GGUF, pin_node="node-1")  # where it runs is not what it does
    assert len(name(md({"model": {"repo": "a/b"}}, "x" * 48), GGUF)) <= 63
    pinned = manifests.download_job(m, GGUF, "https://huggingface.co", s, pin_node="node-1")["spec"]["template"]
    terms = pinned["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert terms["nodeSelectorTerms"][0]["matchFields"][0]["values"] == ["node-1"]


@pytest.mark.parametrize("q,expected", [("20Gi", 20 * 2**30), ("1.5G", 1_500_000_000), ("1e9", 10**9),
                                         (4096, 4096), ("100Mi", 100 * 2**20), (".5Gi", 2**29), ("+1Gi", 2**30),
                                         ("500m", 1), ("1E3", 1000), ("2E", 2 * 10**18)])
def test_quantity_bytes(q, expected):
    assert units.quantity_bytes(q) == expected


@pytest.mark.parametrize("bad", ["ten", "1 Gi", "Gi", "1.2.3", ""])
def test_quantity_refuses_what_is_not_one(bad):
    with pytest.raises(ValueError):
        units.quantity(bad)


def test_a_limit_below_the_pools_default_request_lowers_the_request():
    m = md({"model": {"repo": "org/tiny"}, "gpus": 1, "resources": {"limits": {"memory": "12Gi", "cpu": 8}}})
    s = Settings()
    res = manifests.deployment(m, SAFETENSORS, place(m, "tgi", s), s)["spec"]["template"]["spec"]["containers"][0][
        "resources"]
    assert res["requests"] == {"cpu": "4", "memory": "12Gi"}  # the pool asks 16Gi and 4 CPUs by default
    assert res["limits"] == {"memory": "12Gi", "cpu": "8", "nvidia.com/gpu": "1"}


def test_llamacpp_context_defaults_to_the_models_own_up_to_4096():
    m = md({"model": {"repo": "org/tiny-GGUF"}})
    c = lambda r: (a := manifests.llamacpp_args(m, r, 0))[a.index("-c") + 1]
    assert c(GGUF) == "4096"  # unknown
    assert c(GGUF.model_copy(update={"context_length": 2048})) == "2048"
    assert c(GGUF.model_copy(update={"context_length": 131072})) == "4096"


def test_the_pools_default_resources_give_way_to_what_the_spec_asks_never_the_reverse():
    from modelship.manifests import Placement
    from modelship.manifests.serving import resources
    from modelship.settings import PoolProfile

    pool = PoolProfile(resources={"requests": {"cpu": "2", "memory": "8Gi"}, "limits": {"memory": "8Gi"}})
    place = Placement("cpu", pool, 0)
    spec = lambda res: ModelDeployment.model_validate({"metadata": {"name": "m"}, "spec": {
        "model": {"repo": "a/b"}, "resources": res}})
    # a request above the pool's limit: the limit is raised to it, not the request lowered
    assert resources(spec({"requests": {"memory": "16Gi"}}), place) == {
        "requests": {"cpu": "2", "memory": "16Gi"}, "limits": {"memory": "16Gi"}}
    # a limit below the pool's request: the pool's request is lowered to it
    assert resources(spec({"limits": {"memory": "4Gi"}}), place) == {
        "requests": {"cpu": "2", "memory": "4Gi"}, "limits": {"memory": "4Gi"}}
    assert resources(spec(None), place) == {"requests": {"cpu": "2", "memory": "8Gi"}, "limits": {"memory": "8Gi"}}
