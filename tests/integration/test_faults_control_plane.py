"""The API server, then etcd, killed and restarted (by the test bed's supervisor, as a
kubelet restarts a static pod) under an operator and a router at work: the router keeps
serving what it knew, nothing fails, and once the control plane is back the operator's and
the router's watches have resumed: a change made after each restart is acted on."""

from __future__ import annotations

import os
import signal
import threading
import time

import httpx
import pytest

from ..conftest import wait_for
from .conftest import md_status, preload_claim
from .test_autoscaling import Router, chat, deployment_replicas, smollm2

pytestmark = [pytest.mark.integration, pytest.mark.localnode, pytest.mark.slow]


def read_testbed_status() -> dict:
    from modelship_testbed import procs
    from modelship_testbed.paths import state_dir

    return procs.read_status(state_dir()) or {}


class SteadyLoad:
    """One client asking the router, one request after another, until stopped: every
    answer's status is kept."""

    def __init__(self, router: Router, model: str):
        self.router, self.model = router, model
        self.answers: list[str] = []
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self) -> None:
        while not self.stopped.is_set():
            try:
                r = chat(self.router, self.model, max_tokens=4, timeout=60)
                self.answers.append(str(r.status_code) if r.status_code != 200 else "ok")
            except httpx.HTTPError as e:
                self.answers.append(type(e).__name__)
            time.sleep(0.05)

    def stop(self) -> list[str]:
        self.stopped.set()
        self.thread.join(90)
        return self.answers


def restart(cluster, component: str) -> float:
    """SIGKILL the component; the supervisor starts it again. Seconds until the API server
    answers /readyz again."""
    before = read_testbed_status()["components"][component]
    killed = time.monotonic()
    os.kill(before["pid"], signal.SIGKILL)
    wait_for(lambda: (read_testbed_status()["components"][component]["restarts"] > before["restarts"]
                      and read_testbed_status()["components"][component]["ready"]), 120, f"{component} to be back")
    wait_for(lambda: cluster.kubectl("get", "--raw", "/readyz", check=False).strip() == "ok", 120,
             "the API server to be ready")
    return time.monotonic() - killed


@pytest.mark.timeout(900)
def test_the_api_server_and_etcd_restarted_under_an_operator_and_a_router_at_work(cluster, namespace, local_node,
                                                                                   local_operator):
    from modelship_testbed.paths import kubeconfig_path

    if cluster.kubeconfig != str(kubeconfig_path()) or not read_testbed_status().get("components"):
        pytest.skip("restarts the test bed's own API server and etcd (its supervisor starts them again)")
    preload_claim(cluster, namespace)
    router = Router(cluster, namespace)
    try:
        local_operator.start(config={"resyncSeconds": 10})
        cluster.apply(smollm2("steady"), namespace)
        wait_for(lambda: md_status(cluster, namespace, "steady").get("phase") == "Ready", 240, "steady to be Ready")
        wait_for(lambda: router.load()[f"{namespace}/steady"]["endpoints"] == 1, 30, "the router to see it")
        load = SteadyLoad(router, "steady")
        try:
            for component, replicas in (("kube-apiserver", 2), ("etcd", 1)):
                served = len(load.answers)
                took = restart(cluster, component)
                print(f"{component}: killed, back and ready in {took:.1f} s; "
                      f"{len(load.answers) - served} answers meanwhile")
                assert len(load.answers) > served, f"nothing answered while {component} was away"
                # The watches resumed: a change made now reaches the Deployment, the status and
                # the router's endpoints.
                cluster.kubectl("scale", "md/steady", "-n", namespace, f"--replicas={replicas}")
                wait_for(lambda: deployment_replicas(cluster, namespace, "steady") == replicas, 60,
                         f"the operator to act on replicas={replicas} after {component} restarted",
                         lambda: local_operator.log()[-3000:])
                wait_for(lambda: (md_status(cluster, namespace, "steady").get("readyReplicas") or 0) == replicas
                         and router.load()[f"{namespace}/steady"]["endpoints"] == replicas, 180,
                         f"{replicas} ready replica(s), in the status and the router's view")
        finally:
            answers = load.stop()
        failed = [a for a in answers if a != "ok"]
        print(f"{len(answers)} requests through the router, {len(failed)} failed")
        assert failed == [] and len(answers) >= 20, (failed, len(answers))
        assert local_operator.proc.poll() is None, local_operator.log()[-3000:]  # it rode it out
    finally:
        router.close()
