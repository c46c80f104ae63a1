"""The router's view of the cluster, from watch events (pure: no API server)."""

from __future__ import annotations

from modelship.router.discovery import Discovered, State, slice_endpoints
from modelship.router.registry import Registry


def md(ns: str, name: str, engine: str = "llamacpp", spec: dict | None = None, **router) -> dict:
    """A ModelDeployment: `spec` its other spec fields (replicas), `router` its spec.router."""
    return {"metadata": {"namespace": ns, "name": name},
            "spec": {"model": {"repo": "org/m"}, "router": router, **(spec or {})},
            "status": {"resolved": {"engine": engine}}}


def eslice(ns: str, service: str, endpoints: list[tuple[str, bool, bool]], name: str | None = None) -> dict:
    return {"metadata": {"namespace": ns, "name": name or f"{service}-abcde",
                         "labels": {"kubernetes.io/service-name": service}},
            "addressType": "IPv4", "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            "endpoints": [{"addresses": [ip], "conditions": {"ready": ready, "terminating": terminating}}
                          for ip, ready, terminating in endpoints]}


def test_slice_endpoints_reads_ready_and_terminating():
    service, eps = slice_endpoints(eslice("a", "chat", [("10.0.0.1", True, False), ("10.0.0.2", False, False),
                                                         ("10.0.0.3", True, True)]))
    assert service == "chat"
    assert eps == {"http://10.0.0.1:8080": True, "http://10.0.0.2:8080": False}  # (terminating: left out)


def test_models_get_their_names_aliases_tasks_and_ready_endpoints():
    s, reg = State(), Registry()
    s.on_model("ADDED", md("a", "chat", "tgi", aliases=["gpt"], tasks=["chat"]))
    s.on_slice("ADDED", eslice("a", "chat", [("10.0.0.1", True, False), ("10.0.0.2", False, False)]))
    s.apply(reg)
    t = reg.lookup("chat")
    assert t is reg.lookup("a/chat") is reg.lookup("gpt") and t.engine == "tgi"
    assert [e.url for e in t.ready()] == ["http://10.0.0.1:8080"]
    # The pod turns unready: it leaves the ready set with that very event; the target stays the same object.
    t.endpoints["http://10.0.0.1:8080"].in_flight = 2
    s.on_slice("MODIFIED", eslice("a", "chat", [("10.0.0.1", False, False), ("10.0.0.2", True, False)]))
    s.apply(reg)
    assert reg.lookup("chat") is t and [e.url for e in t.ready()] == ["http://10.0.0.2:8080"]
    assert t.endpoints["http://10.0.0.1:8080"].in_flight == 2  # open requests are still counted


def test_a_name_in_two_namespaces_is_only_reachable_with_its_namespace():
    s, reg = State(), Registry()
    s.on_model("ADDED", md("a", "chat"))
    s.on_model("ADDED", md("b", "chat"))
    s.on_model("ADDED", md("b", "code"))
    s.apply(reg)
    assert reg.lookup("chat") is None and reg.lookup("a/chat") is not reg.lookup("b/chat")
    assert reg.lookup("code") is reg.lookup("b/code")
    s.on_model("DELETED", md("a", "chat"))
    s.apply(reg)
    assert reg.lookup("chat") is reg.lookup("b/chat") and "a/chat" not in reg.targets


def test_a_new_strategy_replaces_the_target_and_fallbacks_stay_in_the_namespace():
    s, reg = State(), Registry()
    s.on_model("ADDED", md("a", "chat", fallback=["small"]))
    s.on_model("ADDED", md("a", "small"))
    s.on_slice("ADDED", eslice("a", "small", [("10.0.0.9", True, False)]))
    s.apply(reg)
    before = reg.targets["a/chat"]
    assert before.strategy.name == "prefix-cache"
    assert reg.lookup("chat") is reg.targets["a/small"]  # chat has no ready endpoint: its fallback answers
    s.on_model("MODIFIED", md("a", "chat", loadBalancing={"strategy": "least-load"}))
    s.apply(reg)
    assert reg.targets["a/chat"] is not before and reg.targets["a/chat"].strategy.name == "least-load"


def test_addresses_outside_the_allowed_networks_are_left_out():
    import ipaddress

    s, reg = State(allowed=[ipaddress.ip_network("127.0.0.0/8")]), Registry()
    s.on_model("ADDED", md("a", "chat"))
    s.on_slice("ADDED", eslice("a", "chat", [("127.10.0.4", True, False), ("10.244.0.7", True, False)]))
    s.apply(reg)
    assert [e.url for e in reg.lookup("chat").ready()] == ["http://127.10.0.4:8080"]


def test_a_router_spec_from_another_version_of_the_crd_is_still_served():
    """Fields this router does not know are ignored; a value it cannot use gives way to the
    defaults (the API server checks the same schema, so only another CRD version sends one)."""
    s, reg = State(), Registry()
    s.on_model("ADDED", md("a", "newer", aliases=["n"], futureField=1,
                           loadBalancing={"strategy": "least-load", "futureKnob": 2}))
    s.on_model("ADDED", md("a", "odd", aliases=["o"], loadBalancing={"strategy": "some-new-strategy"}))
    s.apply(reg)
    assert reg.lookup("n").strategy.name == "least-load"
    odd = reg.lookup("o")
    assert odd is reg.lookup("a/odd") and odd.strategy.name == "prefix-cache"  # the CRD's default


def test_a_model_autoscaled_down_to_zero_can_be_woken():
    def wakeable(**spec) -> bool:
        return Discovered.from_object(md("a", "chat", spec=spec)).wakeable

    assert wakeable(maxReplicas=4, minReplicas=0)
    assert not wakeable(maxReplicas=4)  # minReplicas unset means 1
    assert not wakeable(maxReplicas=4, minReplicas=1)
    assert not wakeable(minReplicas=0)  # not autoscaled
    assert not wakeable(replicas=0)  # scaled to zero by hand: nothing will wake it
    assert not wakeable()


def test_wakeable_follows_the_spec_on_the_same_target():
    s, reg = State(), Registry()
    s.on_model("ADDED", md("a", "chat", spec={"maxReplicas": 2, "minReplicas": 0}))
    s.apply(reg)
    t = reg.targets["a/chat"]
    assert t.wakeable
    s.on_model("MODIFIED", md("a", "chat", spec={"maxReplicas": 2, "minReplicas": 1}))
    s.apply(reg)
    assert reg.targets["a/chat"] is t and not t.wakeable
