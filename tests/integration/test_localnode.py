"""The local node behaves like a kubelet: processes, exit codes, probes, volumes, logs, deletion."""

from __future__ import annotations

import json
import socket

import httpx
import pytest

from modelship_testbed.demo import pod_ready

from ..conftest import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.localnode]

ON_LOCAL = {"modelship.io/local-node": "true"}


def job(name: str, script: str) -> dict:
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name},
            "spec": {"backoffLimit": 0, "template": {"spec": {
                "restartPolicy": "Never", "nodeSelector": ON_LOCAL, "terminationGracePeriodSeconds": 2,
                "containers": [{"name": "main", "image": "busybox:1.36", "command": ["sh", "-c", script]}]}}}}


def job_condition(cluster, ns: str, name: str) -> str | None:
    j = json.loads(cluster.kubectl("get", "job", name, "-n", ns, "-o", "json"))
    for c in j.get("status", {}).get("conditions", []):
        if c["type"] in ("Complete", "Failed") and c["status"] == "True":
            return c["type"]
    return None


def pod_of(cluster, ns: str, selector: str) -> dict | None:
    items = json.loads(cluster.kubectl("get", "pods", "-n", ns, "-l", selector, "-o", "json"))["items"]
    return items[0] if items else None


def test_jobs_succeed_and_fail_by_exit_code_and_logs_are_readable(cluster, namespace, local_node):
    cluster.apply([job("good", "echo hello from $HOSTNAME; exit 0"), job("bad", "echo failing >&2; exit 3")],
                  namespace)
    show = lambda: cluster.kubectl("get", "jobs,pods", "-n", namespace, "-o", "wide")  # noqa: E731
    assert wait_for(lambda: job_condition(cluster, namespace, "good"), 60, "job good to finish", show) == "Complete"
    assert wait_for(lambda: job_condition(cluster, namespace, "bad"), 60, "job bad to finish", show) == "Failed"
    bad = pod_of(cluster, namespace, "job-name=bad")
    assert bad["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 3
    assert bad["spec"]["nodeName"] == local_node
    assert "hello from good-" in cluster.kubectl("logs", "-n", namespace, "job/good")
    assert "failing" in cluster.kubectl("logs", "-n", namespace, "job/bad")


def test_deleting_a_pod_ends_its_process(cluster, namespace, local_node):
    cluster.apply({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web", "labels": {"app": "web"}},
                   "spec": {"nodeSelector": ON_LOCAL, "terminationGracePeriodSeconds": 5, "containers": [{
                       "name": "web", "image": "busybox", "ports": [{"containerPort": 8000}],
                       "command": ["sh", "-c", "exec python3 -m http.server 8000 --bind $(POD_IP)"],
                       "env": [{"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}],
                       "readinessProbe": {"tcpSocket": {"port": 8000}, "periodSeconds": 1}}]}}, namespace)
    pod = wait_for(lambda: (p := pod_of(cluster, namespace, "app=web")) and pod_ready(p) and p, 60, "pod web Ready")
    ip = pod["status"]["podIP"]
    assert ip.startswith("127.") and ip != "127.0.0.1"
    assert httpx.get(f"http://{ip}:8000/").status_code == 200
    cluster.kubectl("delete", "pod", "web", "-n", namespace, "--wait=true", "--timeout=60s")

    def refused() -> bool:
        with socket.socket() as s:
            s.settimeout(1)
            return s.connect_ex((ip, 8000)) != 0

    wait_for(refused, 10, f"the server at {ip}:8000 to be gone")


def test_unready_pod_drops_out_of_its_endpointslice(cluster, namespace, local_node, tmp_path):
    flags = tmp_path / "flags"
    flags.mkdir()
    (flags / "ready").touch()
    cluster.apply([
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "flaky"},
         "spec": {"selector": {"app": "flaky"}, "ports": [{"port": 80, "targetPort": 9000}]}},
        {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "flaky"},
         "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "flaky"}}, "template": {
             "metadata": {"labels": {"app": "flaky"}},
             "spec": {"nodeSelector": ON_LOCAL, "terminationGracePeriodSeconds": 1, "containers": [{
                 "name": "main", "image": "busybox", "command": ["sh", "-c", "exec sleep 3600"],
                 "readinessProbe": {"exec": {"command": ["test", "-f", "/flags/ready"]}, "periodSeconds": 1,
                                    "failureThreshold": 1},
                 "volumeMounts": [{"name": "flags", "mountPath": "/flags", "readOnly": True}]}],
                 "volumes": [{"name": "flags", "hostPath": {"path": str(flags)}}]}}}},
    ], namespace)

    def endpoints() -> list[dict]:
        slices = json.loads(cluster.kubectl("get", "endpointslices", "-n", namespace,
                                            "-l", "kubernetes.io/service-name=flaky", "-o", "json"))["items"]
        return [e for s in slices for e in (s.get("endpoints") or [])]

    show = lambda: cluster.kubectl("get", "pods,endpointslices", "-n", namespace, "-o", "wide")  # noqa: E731
    wait_for(lambda: [e for e in endpoints() if e["conditions"].get("ready")], 60, "a ready endpoint", show)
    (flags / "ready").unlink()
    wait_for(lambda: endpoints() and not any(e["conditions"].get("ready") for e in endpoints()), 30,
             "the endpoint to turn unready", show)


def test_pvc_data_survives_pod_restarts_and_goes_with_its_volume(cluster, namespace, local_node, core):
    cluster.apply({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "data"},
                   "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}},
                  namespace)

    def writer(name: str, script: str) -> dict:
        j = job(name, script)
        spec = j["spec"]["template"]["spec"]
        spec["containers"][0]["volumeMounts"] = [{"name": "data", "mountPath": "/data"}]
        spec["volumes"] = [{"name": "data", "persistentVolumeClaim": {"claimName": "data"}}]
        return j

    cluster.apply(writer("write", "echo kept > /data/file"), namespace)
    assert wait_for(lambda: job_condition(cluster, namespace, "write"), 60, "write job") == "Complete"
    cluster.apply(writer("read", "grep -q kept /data/file"), namespace)
    assert wait_for(lambda: job_condition(cluster, namespace, "read"), 60, "read job") == "Complete"
    pv_name = core.read_namespaced_persistent_volume_claim("data", namespace).spec.volume_name
    pv = core.read_persistent_volume(pv_name)
    from pathlib import Path

    path = Path(pv.spec.host_path.path)
    assert (path / "file").read_text() == "kept\n"
    cluster.kubectl("delete", "jobs", "--all", "-n", namespace, "--wait=true")
    cluster.kubectl("delete", "pvc", "data", "-n", namespace, "--wait=true")
    wait_for(lambda: not path.exists(), 30, f"the volume folder {path} to be deleted with its PV")


def test_env_secrets_configmaps_and_in_cluster_client(cluster, namespace, local_node):
    cluster.apply([
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}, "stringData": {"token": "sekret"}},
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cm"}, "data": {"GREETING": "hi"}},
        {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "incluster"}, "spec": {
            "backoffLimit": 0, "template": {"spec": {
                "restartPolicy": "Never", "nodeSelector": ON_LOCAL,
                "containers": [{
                    "name": "main", "image": "ghcr.io/modelship/modelship:dev", "workingDir": "/scratch",
                    "command": ["python", "-c",
                                "import os, pathlib\n"
                                "from kubernetes import client, config\n"
                                "config.load_incluster_config()\n"
                                "r = client.AuthenticationV1Api().create_self_subject_review({})\n"
                                "print('user', r.status.user_info.username)\n"
                                "print('secret', os.environ['TOKEN'], pathlib.Path('/etc/s/token').read_text())\n"
                                "print('cm', os.environ['GREETING'], os.environ['MSG'], os.getcwd())\n"
                                "try:\n"
                                "    pathlib.Path('/etc/s/new').write_text('x')\n"
                                "except OSError as e:\n"
                                "    print('readonly', e.errno)\n"],
                    "env": [{"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "s", "key": "token"}}},
                            {"name": "MSG", "value": "$(GREETING) there"}],
                    "envFrom": [{"configMapRef": {"name": "cm"}, "prefix": ""}],
                    "volumeMounts": [{"name": "s", "mountPath": "/etc/s"},
                                     {"name": "work", "mountPath": "/scratch"}]}],
                "volumes": [{"name": "s", "secret": {"secretName": "s"}}, {"name": "work", "emptyDir": {}}],
            }}}},
    ], namespace)
    show = lambda: cluster.kubectl("describe", "pods", "-n", namespace)  # noqa: E731
    wait_for(lambda: job_condition(cluster, namespace, "incluster"), 90, "the in-cluster job", show)
    out = cluster.kubectl("logs", "-n", namespace, "job/incluster")
    assert f"user system:serviceaccount:{namespace}:default" in out, out
    assert "secret sekret sekret" in out
    assert "cm hi hi there /scratch" in out
    assert "readonly 30" in out  # EROFS: the Secret volume is mounted read-only


def test_unmapped_image_fails_like_an_unpullable_one(cluster, namespace, local_node):
    cluster.apply({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "nope", "labels": {"app": "nope"}},
                   "spec": {"nodeSelector": ON_LOCAL, "containers": [
                       {"name": "main", "image": "registry.example/unknown:1"}]}}, namespace)

    def waiting():
        p = pod_of(cluster, namespace, "app=nope")
        st = (p["status"].get("containerStatuses") or [{}])[0].get("state", {}).get("waiting", {})
        return st if st.get("reason") in ("ErrImagePull", "ImagePullBackOff") else None

    st = wait_for(waiting, 30, "ErrImagePull")
    assert "images.yaml" in st["message"] and "registry.example/unknown:1" in st["message"]


def test_tgi_image_runs_the_protocol_fake(cluster, namespace, local_node):
    from text_generation import Client

    cluster.apply({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "tgi"}, "spec": {
        "replicas": 1, "selector": {"matchLabels": {"app": "tgi"}}, "template": {
            "metadata": {"labels": {"app": "tgi"}},
            "spec": {"nodeSelector": ON_LOCAL, "containers": [{
                "name": "tgi", "image": "ghcr.io/huggingface/text-generation-inference:3.0.1",
                "args": ["--model-id", "org/model", "--port", "8080", "--hostname", "0.0.0.0"],
                "startupProbe": {"httpGet": {"path": "/health", "port": 8080}, "periodSeconds": 1,
                                 "failureThreshold": 60},
                "readinessProbe": {"httpGet": {"path": "/health", "port": 8080}, "periodSeconds": 1}}]}}}},
        namespace)
    pod = wait_for(lambda: (p := pod_of(cluster, namespace, "app=tgi")) and pod_ready(p) and p, 60,
                   "the TGI pod to be Ready",
                   lambda: cluster.kubectl("describe", "pods", "-n", namespace, "-l", "app=tgi", check=False)
                   + cluster.kubectl("logs", "-n", namespace, "-l", "app=tgi", "--tail=20", check=False))
    client = Client(f"http://{pod['status']['podIP']}:8080")
    assert client.generate("hello", max_new_tokens=3).details.generated_tokens == 3


def test_crashing_container_restarts_with_back_off(cluster, namespace, local_node):
    cluster.apply({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "crash", "labels": {"app": "crash"}},
                   "spec": {"nodeSelector": ON_LOCAL, "containers": [
                       {"name": "main", "image": "busybox", "command": ["sh", "-c", "echo run; exit 2"]}]}},
                  namespace)

    def backing_off():
        cs = pod_of(cluster, namespace, "app=crash")["status"].get("containerStatuses") or [{}]
        waiting = cs[0].get("state", {}).get("waiting", {})
        return cs[0] if waiting.get("reason") == "CrashLoopBackOff" else None

    first = wait_for(backing_off, 30, "CrashLoopBackOff")
    assert first["lastState"]["terminated"]["exitCode"] == 2
    # The kubelet's back-off: 10 s before the first restart.
    restarted = wait_for(lambda: (c := backing_off()) and c["restartCount"] >= 1 and c, 40, "a restart")
    import datetime as dt

    ts = lambda s: dt.datetime.fromisoformat(s.replace("Z", "+00:00"))  # noqa: E731
    gap = ts(restarted["lastState"]["terminated"]["startedAt"]) - ts(first["lastState"]["terminated"]["finishedAt"])
    assert gap.total_seconds() >= 9, gap
    assert "run" in cluster.kubectl("logs", "-n", namespace, "crash", "--previous")


def test_process_that_ignores_sigterm_is_killed_after_the_grace_period(cluster, namespace, local_node):
    import time

    cluster.apply({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "stubborn", "labels": {"app": "s"}},
                   "spec": {"nodeSelector": ON_LOCAL, "terminationGracePeriodSeconds": 3, "containers": [
                       {"name": "main", "image": "busybox",
                        "command": ["sh", "-c", "trap 'echo got TERM' TERM; echo trapped; "
                                                "while true; do sleep 0.2; done"]}]}},
                  namespace)
    wait_for(lambda: (p := pod_of(cluster, namespace, "app=s")) and p["status"].get("phase") == "Running", 30,
             "pod Running")
    # Running comes with the process, before the shell has installed its trap: a SIGTERM then
    # would end it at once. The marker says the trap is in place.
    wait_for(lambda: "trapped" in cluster.kubectl("logs", "-n", namespace, "stubborn", check=False), 30,
             "the container to install its SIGTERM trap")
    start = time.monotonic()
    cluster.kubectl("delete", "pod", "stubborn", "-n", namespace, "--wait=true", "--timeout=30s")
    took = time.monotonic() - start
    assert 2.5 < took < 15, f"deletion took {took:.1f}s with a 3 s grace period"


def test_init_containers_liveness_and_startup_probes(cluster, namespace, local_node):
    cluster.apply({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "probed", "labels": {"app": "probed"}},
                   "spec": {"nodeSelector": ON_LOCAL, "terminationGracePeriodSeconds": 1,
                            "initContainers": [{"name": "init", "image": "busybox",
                                                "command": ["sh", "-c", "echo from-init > /shared/seed"],
                                                "volumeMounts": [{"name": "shared", "mountPath": "/shared"}]}],
                            "containers": [{
                                "name": "main", "image": "busybox",
                                # Healthy after each start until the startup probe has passed (it
                                # leaves a marker), then unhealthy: the liveness probe fails. (A fixed
                                # healthy time could end before a slow machine's first startup probe,
                                # and the startup probe would kill the container instead.)
                                "command": ["sh", "-c", "rm -f /tmp-live/started && grep -q from-init /shared/seed "
                                                        "&& touch /tmp-live/ok && until [ -f /tmp-live/started ]; "
                                                        "do sleep 0.2; done && rm /tmp-live/ok && exec sleep 3600"],
                                "startupProbe": {"exec": {"command": ["sh", "-c", "test -f /tmp-live/ok "
                                                                      "&& touch /tmp-live/started"]},
                                                 "periodSeconds": 1, "failureThreshold": 30},
                                "livenessProbe": {"exec": {"command": ["test", "-f", "/tmp-live/ok"]},
                                                  "periodSeconds": 1, "failureThreshold": 2},
                                "volumeMounts": [{"name": "shared", "mountPath": "/shared"},
                                                 {"name": "live", "mountPath": "/tmp-live"}]}],
                            "volumes": [{"name": "shared", "emptyDir": {}}, {"name": "live", "emptyDir": {}}]}},
                  namespace)

    def killed_by_liveness():
        p = pod_of(cluster, namespace, "app=probed")
        init = (p["status"].get("initContainerStatuses") or [{}])[0]
        cs = (p["status"].get("containerStatuses") or [{}])[0]
        last = cs.get("lastState", {}).get("terminated")
        return (init, cs) if last and init.get("state", {}).get("terminated") else None

    # (60 s: a slow machine's init container, startup probe and two liveness failures)
    init, cs = wait_for(killed_by_liveness, 60, "the liveness probe to kill the container",
                        lambda: cluster.kubectl("describe", "pod", "probed", "-n", namespace))
    assert init["state"]["terminated"]["exitCode"] == 0
    assert cs["lastState"]["terminated"]["exitCode"] in (137, 143)
    events = cluster.kubectl("get", "events", "-n", namespace, "--field-selector", "involvedObject.name=probed")
    assert "Liveness probe failed" in events
