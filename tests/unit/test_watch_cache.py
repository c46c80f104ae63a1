"""The operator's watch cache (reconcile/cache.py): events in, reads out, label selectors as
the API server reads them, deletes, listings, and our own writes."""

import json
import types

import pytest

from modelship.reconcile.cache import WatchCache, matches, parse_selector
from modelship.reconcile import kube as kube_mod
from modelship.reconcile.kube import Kube


def obj(name, rv, uid=None, ns="ns", **labels):
    return {"metadata": {"name": name, "namespace": ns, "resourceVersion": str(rv), "uid": uid or f"uid-{name}",
                         "labels": labels}}


@pytest.fixture
def cache():
    return WatchCache(("Job", "Deployment"))


@pytest.mark.parametrize("selector,labels,expected", [
    ("a=1", {"a": "1"}, True),
    ("a=1", {"a": "2"}, False),
    ("a==1", {"a": "1"}, True),
    ("a!=1", {}, True),
    ("a!=1", {"a": "1"}, False),
    ("modelship.io/deployment=m,app.kubernetes.io/component in (download,collect)",
     {"modelship.io/deployment": "m", "app.kubernetes.io/component": "collect"}, True),
    ("modelship.io/deployment=m,app.kubernetes.io/component in (download,collect)",
     {"modelship.io/deployment": "m", "app.kubernetes.io/component": "server"}, False),
    ("modelship.io/deployment=m,app.kubernetes.io/component in (download,collect)",
     {"modelship.io/deployment": "n", "app.kubernetes.io/component": "download"}, False),
    ("c notin (x, y)", {"c": "z"}, True),
    ("c notin (x, y)", {"c": "y"}, False),
    ("c", {"c": ""}, True),
    ("c", {}, False),
    ("!c", {}, True),
    ("!c", {"c": "1"}, False),
    ("", {"anything": "1"}, True),
])
def test_selectors_match_as_the_api_server_does(selector, labels, expected):
    assert matches(selector, labels) is expected


def test_a_selector_it_cannot_read_says_where():
    with pytest.raises(ValueError, match=r"cannot read the label selector 'a in \(x' at 'a in \(x'"):
        parse_selector("a in (x")


def test_events_in_reads_out(cache):
    cache.event("Job", {"type": None, "object": obj("j1", 5, **{"modelship.io/deployment": "m"})})
    cache.event("Job", {"type": "ADDED", "object": obj("j2", 6, **{"modelship.io/deployment": "n"})})
    assert [j["metadata"]["name"] for j in cache.list("Job", "ns", "modelship.io/deployment=m")] == ["j1"]
    assert [j["metadata"]["name"] for j in cache.list("Job", "ns")] == ["j1", "j2"]
    assert cache.list("Job", "other") == []
    assert cache.get("Job", "ns", "j2")["metadata"]["resourceVersion"] == "6"
    cache.event("Job", {"type": "DELETED", "object": obj("j2", 7)})
    assert cache.get("Job", "ns", "j2") is None


def test_reads_are_copies(cache):
    cache.put("Deployment", obj("d", 1))
    cache.get("Deployment", "ns", "d")["metadata"]["name"] = "changed"
    cache.list("Deployment", "ns")[0]["metadata"]["name"] = "changed"
    assert cache.get("Deployment", "ns", "d")["metadata"]["name"] == "d"


def test_an_older_event_never_replaces_our_write(cache):
    cache.put("Deployment", obj("d", 10))  # the answer to our apply
    cache.event("Deployment", {"type": "MODIFIED", "object": obj("d", 9)})  # its watch event, late
    assert cache.get("Deployment", "ns", "d")["metadata"]["resourceVersion"] == "10"
    cache.event("Deployment", {"type": "MODIFIED", "object": obj("d", 11)})
    assert cache.get("Deployment", "ns", "d")["metadata"]["resourceVersion"] == "11"


def test_the_echo_of_our_own_write_is_no_news(cache):
    """The controller reconciles once more after a write that changed the cache's copy, so the
    watch event of that write starts no reconcile of its own; anything newer does."""
    assert cache.put("Deployment", obj("d", 10), ours=True) is True  # the answer to our apply: a change
    assert cache.put("Deployment", obj("d", 10), ours=True) is False  # an apply that changed nothing
    assert cache.event("Deployment", {"type": "ADDED", "object": obj("d", 10)}) is False  # its echo
    assert cache.event("Deployment", {"type": "MODIFIED", "object": obj("d", 9)}) is False  # older still
    assert cache.event("Deployment", {"type": "MODIFIED", "object": obj("d", 12)}) is True  # someone else's
    assert cache.event("Deployment", {"type": "MODIFIED", "object": obj("d", 13, uid="new")}) is True  # made again
    assert cache.event("Deployment", {"type": "DELETED", "object": obj("d", 14, uid="new")}) is True
    assert cache.event("Job", {"type": "ADDED", "object": obj("j", 1)}) is True  # never held


def test_what_a_listing_put_in_first_is_news_all_the_same(cache):
    """A resync round lists every kind before it enqueues anyone, and enqueues nobody when a
    listing fails half-way: the watch event of a version a listing brought is not swallowed."""
    cache.put("Job", obj("j", 5), ours=True)
    cache.replace("Job", "ns", [obj("j", 9)], "9")  # the Job completed; the listing saw it first
    assert cache.event("Job", {"type": "MODIFIED", "object": obj("j", 9)}) is True
    cache.replace("Job", "ns", [obj("j", 9, uid="again")], "11")  # deleted and made again meanwhile
    assert cache.event("Job", {"type": "ADDED", "object": obj("j", 9, uid="again")}) is True


def test_a_new_object_of_the_same_name_replaces_the_old_one_and_a_late_event_of_the_old_does_not(cache):
    cache.put("Deployment", obj("d", 3, uid="old"))
    cache.put("Deployment", obj("d", 10, uid="new"))
    assert cache.get("Deployment", "ns", "d")["metadata"]["uid"] == "new"
    # The old one's last update, late (another Kopf worker: one per uid): older, kept out.
    cache.event("Deployment", {"type": "MODIFIED", "object": obj("d", 4, uid="old")})
    cache.event("Deployment", {"type": "DELETED", "object": obj("d", 5, uid="old")})
    assert cache.get("Deployment", "ns", "d")["metadata"]["uid"] == "new"


def test_an_object_whose_label_comes_back_is_seen_again(cache):
    """A filtered watch says DELETED when our label is taken off; ADDED, newer, when it is put
    back: the object is held again (it used to be kept out for good)."""
    cache.event("Job", {"type": "ADDED", "object": obj("j", 4)})
    cache.event("Job", {"type": "DELETED", "object": obj("j", 5)})  # label taken off
    assert cache.get("Job", "ns", "j") is None
    cache.event("Job", {"type": "MODIFIED", "object": obj("j", 5)})  # late, no newer: still out
    assert cache.get("Job", "ns", "j") is None
    cache.event("Job", {"type": "ADDED", "object": obj("j", 9)})  # label put back
    assert cache.get("Job", "ns", "j")["metadata"]["resourceVersion"] == "9"
    cache.replace("Job", "ns", [obj("j", 9)], "9")
    assert [o["metadata"]["name"] for o in cache.list("Job", "ns")] == ["j"]


def test_a_deleted_object_never_comes_back_with_a_late_event(cache):
    cache.put("Job", obj("j", 4))
    cache.remove("Job", "ns", "j")  # our own delete, by name
    cache.event("Job", {"type": "MODIFIED", "object": obj("j", 5)})  # the job controller's last update, late
    assert cache.get("Job", "ns", "j") is None
    cache.event("Job", {"type": "ADDED", "object": obj("j", 8, uid="again")})  # made again: a new uid
    assert cache.get("Job", "ns", "j")["metadata"]["uid"] == "again"


def test_a_late_delete_of_the_old_object_keeps_the_new_one(cache):
    cache.put("Job", obj("j", 8, uid="new"))
    cache.event("Job", {"type": "DELETED", "object": obj("j", 7, uid="old")})
    assert cache.get("Job", "ns", "j")["metadata"]["uid"] == "new"


def test_a_listing_syncs_the_kind_and_drops_what_the_watch_missed(cache):
    assert not cache.synced("Job", "ns")
    cache.put("Job", obj("missed", 3))  # deleted while no watch ran: no DELETED came
    cache.put("Job", obj("newer", 12))  # came by a watch event after the listing was taken
    cache.replace("Job", "ns", [obj("kept", 2)], "10")
    assert [j["metadata"]["name"] for j in cache.list("Job", "ns")] == ["kept", "newer"]
    assert cache.synced("Job", "ns") and not cache.synced("Job", "other") and not cache.synced("Deployment", "ns")
    cache.replace("Job", None, [], "20")
    assert cache.list("Job", "ns") == [] and cache.synced("Job", "other")


def test_a_listing_never_brings_back_what_was_deleted_since(cache):
    cache.put("Job", obj("j", 4))
    cache.event("Job", {"type": "DELETED", "object": obj("j", 6)})
    cache.replace("Job", "ns", [obj("j", 4)], "5")  # a listing taken before the delete, applied after
    assert cache.get("Job", "ns", "j") is None


def test_the_uids_of_deleted_objects_are_forgotten_in_time():
    cache = WatchCache(("Job",), forget_after=2)
    for i in range(3):
        cache.remove("Job", "ns", f"j{i}", uid=f"u{i}")
    assert list(cache.gone) == ["u1", "u2"]


class FakeApps:
    def __init__(self):
        self.reads = 0

    def read_namespaced_deployment(self, name, namespace):
        self.reads += 1
        return {"metadata": {"name": name, "namespace": namespace, "labels": {}}}

    def patch_namespaced_deployment(self, name, namespace, body, _preload_content=True, **_):
        assert not _preload_content  # the answer's JSON as sent, not the client library's models
        written = {**body, "metadata": {**body["metadata"], "namespace": namespace, "resourceVersion": "7", "uid": "u"}}
        return types.SimpleNamespace(data=json.dumps(written).encode())


def kube_with(cache):
    from kubernetes import client

    kube = Kube(client.ApiClient(), "modelship", cache)
    kube.apps = FakeApps()
    return kube


def test_kube_reads_from_the_cache_once_synced_and_asks_for_what_it_lacks():
    cache = WatchCache(("Deployment",))
    kube = kube_with(cache)
    cache.put("Deployment", obj("d", 1))
    assert kube._get("Deployment", kube.apps.read_namespaced_deployment, "d", "ns")["metadata"]["name"] == "d"
    assert kube.apps.reads == 1  # not synced yet: asked
    cache.replace("Deployment", "ns", [obj("d", 1)], "1")
    kube._get("Deployment", kube.apps.read_namespaced_deployment, "d", "ns")
    assert kube.apps.reads == 1  # synced and held: not asked
    kube._get("Deployment", kube.apps.read_namespaced_deployment, "unlabelled", "ns")
    assert kube.apps.reads == 2  # absent from the cache is not absent: asked


def test_kube_writes_through():
    from modelship.reconcile.types import Action

    cache = WatchCache(("Deployment",))
    kube = kube_with(cache)
    body = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d", "labels": {"x": "y"}}}
    kube.execute(Action("apply", "Deployment", "d", body), "ns")
    assert cache.get("Deployment", "ns", "d")["metadata"]["resourceVersion"] == "7"


def test_a_kind_held_whole_answers_absent_without_asking():
    cache = WatchCache(("Deployment",), whole={"Deployment"})
    kube = kube_with(cache)
    cache.replace("Deployment", "ns", [], "1")
    assert kube._get("Deployment", kube.apps.read_namespaced_deployment, "none", "ns") is None
    assert kube.apps.reads == 0


def test_a_watch_event_is_in_the_cache_before_its_reconcile_is_enqueued():
    import asyncio

    import kopf

    from modelship.reconcile import handlers

    cache, seen = WatchCache(("Job",)), []
    controller = types.SimpleNamespace(kube=types.SimpleNamespace(cache=cache),
                                       enqueue_soon=lambda ns, name: seen.append((ns, name, cache.get("Job", ns, "j"))))
    job = obj("j", 3, **{"modelship.io/deployment": "m"})
    asyncio.run(handlers.child_changed(labels=job["metadata"]["labels"], namespace="ns", meta=job["metadata"],
                                       event={"type": "ADDED", "object": job}, memo=kopf.Memo(controller=controller),
                                       resource=kopf.Resource("batch", "v1", "jobs")))
    assert seen == [("ns", "m", job)]
    asyncio.run(handlers.child_changed(labels=job["metadata"]["labels"], namespace="ns", meta=job["metadata"],
                                       event={"type": "DELETED", "object": job}, memo=kopf.Memo(controller=controller),
                                       resource=kopf.Resource("batch", "v1", "jobs")))
    assert seen[-1] == ("ns", "m", None)


class FakeLists:
    """List calls of the client library, answered a page of `limit` at a time."""

    def __init__(self, items):
        self.items, self.selectors = items, []

    def __getattr__(self, name):
        def listing(*args, label_selector=None, limit=None, _continue=None, **_):
            self.selectors.append((name, args, label_selector, _continue))
            items, start = self.items.get(name, []), int(_continue or 0)
            end = start + (limit or len(items) or 1)
            body = {"metadata": {"resourceVersion": "50", **({"continue": str(end)} if end < len(items) else {})},
                    "items": items[start:end]}
            return types.SimpleNamespace(data=json.dumps(body).encode())
        return listing


def test_a_resync_listing_primes_every_kind_page_by_page_and_returns_the_modeldeployments(monkeypatch):
    monkeypatch.setattr(kube_mod, "LIST_PAGE", 2)
    cache = WatchCache(("Job", "PersistentVolumeClaim", "ModelDeployment"),
                       whole={"PersistentVolumeClaim", "ModelDeployment"})
    cache.put("Job", obj("gone", 3))  # deleted while nobody watched: the listing drops it
    kube = kube_with(cache)
    kube.batch = kube.core = FakeLists({"list_namespaced_job": [obj(f"j{i}", 10 + i) for i in range(5)]})
    kube.custom = FakeLists({"list_namespaced_custom_object": [obj("m", 2)]})
    assert kube.list_mds(["ns"]) == [("ns", "m")]
    mine = "app.kubernetes.io/managed-by=modelship"
    assert kube.batch.selectors == [("list_namespaced_job", ("ns",), mine, None),
                                    ("list_namespaced_job", ("ns",), mine, "2"),
                                    ("list_namespaced_job", ("ns",), mine, "4"),
                                    ("list_namespaced_persistent_volume_claim", ("ns",), None, None)]
    assert cache.synced("Job", "ns") and cache.synced("ModelDeployment", "ns") and not cache.synced("Job", "other")
    assert [j["metadata"]["name"] for j in cache.list("Job", "ns")] == [f"j{i}" for i in range(5)]
    assert kube.get_md("ns", "m")["metadata"]["name"] == "m"


def test_without_the_cache_a_resync_lists_only_the_modeldeployments():
    kube = kube_with(None)
    kube.custom = FakeLists({"list_cluster_custom_object": [obj("m", 2), obj("n", 3)]})
    assert kube.list_mds([]) == [("ns", "m"), ("ns", "n")]
    assert [c[0] for c in kube.custom.selectors] == ["list_cluster_custom_object"]


def test_managed_fields_are_not_kept(cache):
    o = obj("j", 4)
    o["metadata"]["managedFields"] = [{"manager": "kube-controller-manager", "fieldsV1": {"f:status": {}}}]
    cache.put("Job", o)
    assert "managedFields" not in cache.get("Job", "ns", "j")["metadata"]
    assert "managedFields" in o["metadata"]  # what was handed in is not changed


def test_a_downloads_pods_come_from_the_cache_oldest_first():
    """Followed every few seconds while a download runs: no list of pods per look once synced."""
    cache = WatchCache(("Pod",))
    kube = kube_with(cache)
    kube.core = FakeLists({})
    job_label = {"batch.kubernetes.io/job-name": "m-download", "app.kubernetes.io/managed-by": "modelship"}
    pods = [obj("p2", 5, **job_label), obj("p1", 4, **job_label), obj("other", 6, **{"app.kubernetes.io/managed-by": "modelship"})]
    pods[0]["metadata"]["creationTimestamp"], pods[1]["metadata"]["creationTimestamp"] = "2026-12-01T10:00:05Z", \
        "2026-12-01T10:00:01Z"
    cache.replace("Pod", "ns", pods, "6")
    assert [p["metadata"]["name"] for p in kube.job_pods("ns", "m-download")] == ["p1", "p2"]
    assert kube.core.selectors == []


def test_listings_by_selector_answer_as_a_scan_of_every_object_would_through_any_changes():
    """The index by namespace and label (what `list` looks at instead of every object) stays
    true through puts, relabelling, watch deletes, our own deletes and listings that prune."""
    import random

    rnd = random.Random(7)
    c = WatchCache(("Pod",))
    selectors = ["a=1", "a=1,b=x", "a in (1,2)", "a!=1", "b", "!b", "a=1,b notin (x)", "a==2,b=y", None]
    version = 0
    for step in range(3000):
        version += 1
        ns, name = rnd.choice(["n1", "n2"]), f"p{rnd.randrange(30)}"
        labels = {k: rnd.choice(vals) for k, vals in (("a", "123"), ("b", "xy")) if rnd.random() < 0.7}
        what = rnd.random()
        if what < 0.6:
            c.put("Pod", {"metadata": {"name": name, "namespace": ns, "uid": f"{ns}/{name}", "labels": labels,
                                       "resourceVersion": str(version)}})
        elif what < 0.75:
            c.event("Pod", {"type": "DELETED", "object": {"metadata": {
                "name": name, "namespace": ns, "uid": f"{ns}/{name}", "resourceVersion": str(version)}}})
        elif what < 0.85:
            c.remove("Pod", ns, name)
        else:
            keep = {(ns, n) for (n_, n) in c.objects["Pod"] if n_ == ns and rnd.random() < 0.8}
            c.prune("Pod", ns, keep, str(version))
        for sel in selectors:
            for where in ("n1", "n2"):
                scan = sorted(n for (n_, n), h in c.objects["Pod"].items()
                              if n_ == where and (sel is None or matches(sel, h.labels)))
                assert [o["metadata"]["name"] for o in c.list("Pod", where, sel)] == scan, (step, sel, where)
    # nothing indexed that is not held
    held = {(ns, name) for (ns, name) in c.objects["Pod"]}
    assert {(ns, n) for ns, names in c.names["Pod"].items() for n in names} == held
    assert all((ns, n) in held and c.objects["Pod"][(ns, n)].labels.get(k) == v
               for (ns, k, v), names in c.labelled["Pod"].items() for n in names)


def test_the_operators_cache_knows_every_service_so_a_free_name_costs_no_request():
    """A new ModelDeployment's Service name used to be asked for (a GET, and another before the
    create): with Services watched whoever made them, the cache answers, and someone else's
    Service of that name is there to be reported as a conflict, never taken over."""
    from modelship.reconcile import handlers

    cache = handlers.watch_cache()
    kube = kube_with(cache)
    asked = []

    def listing(namespace, field_selector=None, **_):
        asked.append(field_selector)
        return types.SimpleNamespace(data=json.dumps({"metadata": {}, "items": []}).encode())

    kube.core = types.SimpleNamespace(list_namespaced_service=listing)
    services = kube._named("Service")  # what `Kube.read` reads a Service with
    assert kube._get("Service", services, "m", "ns") is None and asked == ["metadata.name=m"]  # not listed yet: asked
    kube.absent.clear()
    cache.replace("Service", "ns", [obj("theirs", 3)], "3")  # the resync's listing: no label selector
    asked.clear()
    assert kube._get("Service", services, "m", "ns") is None
    assert kube._get("Service", services, "theirs", "ns")["metadata"]["labels"] == {}
    kube._confirm_absent("Service", "ns", "m")  # before the create: nothing memoised, nothing asked
    assert asked == []
    cache.event("Service", {"type": "ADDED", "object": obj("late", 4)})  # made since: seen by its event
    assert kube._get("Service", services, "late", "ns") is not None and asked == []
    # made by someone else between the read that found the name free and the (background) create:
    # refused before the apply, never taken over; one of ours there (an earlier apply's) is applied again
    with pytest.raises(kube_mod.ApiException) as refused:
        kube._confirm_absent("Service", "ns", "late")
    assert refused.value.status == 409 and "someone else" in refused.value.reason
    cache.event("Service", {"type": "ADDED", "object": obj("mine", 5, **{"modelship.io/deployment": "mine"})})
    kube._confirm_absent("Service", "ns", "mine")
    assert asked == []
    assert handlers.watch_cache().whole >= {"Service", "PersistentVolumeClaim", "ModelDeployment"}
    assert "Deployment" not in handlers.watch_cache().whole and "Pod" not in handlers.watch_cache().whole
