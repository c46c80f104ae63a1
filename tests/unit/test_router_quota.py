"""The router's rate limits (modelship/router/quota.py): token buckets with debt, the order and
shape of refusals, OpenAI's headers, and the counters replicas exchange to share the limits."""

from __future__ import annotations


import orjson
import pytest

from modelship.router.errors import ErrorAnswer
from modelship.router.quota import UNLIMITED, Bucket, Limit, Quotas, duration


def quotas(callers=None, models=None, default=None, boot=None) -> Quotas:
    q = Quotas(boot=boot)
    q.configure(callers or {}, models or {}, default)
    return q


def refused(q: Quotas, caller: str, model: str, now: float, estimate: int = 0) -> ErrorAnswer:
    with pytest.raises(ErrorAnswer) as caught:
        q.admit(caller, model, now, estimate)
    return caught.value


def hdrs(pairs) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in pairs}


# --- buckets


def test_a_bucket_starts_full_and_refills_at_limit_per_minute():
    b = Bucket(60, now=0.0)
    assert b.level(0.0) == 60
    assert all(b.admit(0.0) for _ in range(60))
    assert not b.admit(0.0)
    assert b.level(0.5) == pytest.approx(0.5)
    assert not b.admit(0.5)
    assert b.admit(1.0)
    assert b.level(1000.0) == 60  # never above its capacity


def test_a_bucket_made_without_a_time_is_full_whenever_first_read():
    b = Bucket(10)
    assert b.level(12345.0) == 10
    assert b.admit(12345.0, cost=10) and b.level(12345.0) == 0


def test_a_bucket_goes_into_debt_and_refuses_until_paid_back():
    b = Bucket(600, now=0.0)  # 10 a second
    b.charge(0.0, 650)
    assert b.level(0.0) == pytest.approx(-50)
    assert not b.admit(0.0, cost=1, known=False)
    assert b.retry_after(0.0, need=1) == pytest.approx(5.1)
    assert b.reset(0.0) == pytest.approx(65.0)
    assert not b.admit(4.9, cost=1, known=False)
    assert b.admit(5.1, cost=100, known=False)  # an estimate needs only a level above 0
    assert b.level(5.1) == pytest.approx(-99)
    b.charge(5.1, -1000)  # given back: never above the capacity
    assert b.level(5.1) == 600 and b.reset(5.1) == 0


def test_a_known_cost_needs_the_whole_cost():
    b = Bucket(60, now=0.0)
    b.charge(0.0, 55)
    assert not b.admit(0.0, cost=6)
    assert b.retry_after(0.0, need=6) == pytest.approx(1.0)
    assert b.admit(0.0, cost=5) and b.level(0.0) == 0
    assert b.retry_after(0.0, need=1000) == pytest.approx(60.0)  # never more than to full


def test_a_clock_read_late_does_not_move_the_level_back():
    b = Bucket(60, now=0.0)
    b.charge(10.0, 60)
    assert b.level(9.0) == 0 and b.level(11.0) == pytest.approx(1)


def test_limits_are_positive_integers_or_none():
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError):
            Limit(rpm=bad)
    assert not Limit() and Limit(concurrent=1)


# --- admission: order, messages, headers


def test_the_caller_is_checked_before_the_model_and_concurrency_before_rate():
    q = quotas({"team-a": Limit(rpm=1, tpm=10, concurrent=1)}, {"smollm2": Limit(rpm=1, concurrent=1)})
    q.admit("team-a", "smollm2", 0.0)
    e = refused(q, "team-a", "smollm2", 0.0)  # all six would refuse
    assert (e.status, e.kind, e.code) == (429, "requests", "rate_limit_exceeded")
    assert e.message == "Too many concurrent requests for key 'team-a': limit 1."
    assert orjson.loads(e.body()) == {"error": {"message": e.message, "type": "requests", "param": None,
                                                "code": "rate_limit_exceeded"}}


def test_requests_then_tokens_then_the_model():
    q = quotas({"team-a": Limit(rpm=60, tpm=600)}, {"smollm2": Limit(rpm=120, tpm=100)})
    a = q.admit("team-a", "smollm2", 0.0, tokens_estimate=50)
    a.done(0.0, tokens=700)  # the caller's tokens go 100 into debt, the model's 600
    e = refused(q, "team-a", "smollm2", 0.0)
    assert e.kind == "tokens"
    assert e.message == ("Rate limit reached for tokens per minute (key 'team-a'): limit 600, remaining 0; "
                         "try again in 10.1 s.")
    for _ in range(59):
        q.callers["team-a"].requests.charge(0.0, 1)
    e = refused(q, "team-a", "smollm2", 0.0)
    assert e.message == ("Rate limit reached for requests per minute (key 'team-a'): limit 60, remaining 0; "
                         "try again in 1.0 s.")
    q.callers["team-a"].requests.charge(0.0, -100)
    q.callers["team-a"].tokens.charge(0.0, -1000)
    e = refused(q, "team-a", "smollm2", 0.0)
    assert e.message.startswith("Rate limit reached for tokens per minute (model 'smollm2'): limit 100")


def test_a_refusal_takes_nothing():
    q = quotas({"team-a": Limit(rpm=10, tpm=100, concurrent=5)}, {"smollm2": Limit(concurrent=1)})
    q.admit("team-a", "smollm2", 0.0, tokens_estimate=10)
    caller = q.callers["team-a"]
    before = (caller.in_flight, caller.requests.level(0.0), caller.tokens.level(0.0), caller.requests_total)
    assert refused(q, "team-a", "smollm2", 0.0, 10).message == \
        "Too many concurrent requests for model 'smollm2': limit 1."
    assert (caller.in_flight, caller.requests.level(0.0), caller.tokens.level(0.0), caller.requests_total) == before


def test_a_refusal_says_when_to_come_back_in_a_way_the_openai_client_reads():
    q = quotas({"team-a": Limit(rpm=60)})
    q.admit("team-a", "m", 0.0)
    q.callers["team-a"].requests.charge(0.0, 58.2)  # 0.8 left: 0.2 s to go
    h = hdrs(refused(q, "team-a", "m", 0.0).headers)
    assert h["retry-after"] == "1" and h["retry-after-ms"] == "200"
    assert h["x-ratelimit-limit-requests"] == "60" and h["x-ratelimit-remaining-requests"] == "0"
    assert h["x-ratelimit-reset-requests"] == "59.2s"
    assert "x-ratelimit-limit-tokens" not in h
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(api_key="unused", base_url="http://127.0.0.1:9/v1")
    assert client._parse_retry_after_header(h) == pytest.approx(0.2)  # it prefers retry-after-ms
    q.callers["team-a"].requests.charge(0.0, 30)
    h = hdrs(refused(q, "team-a", "m", 0.0).headers)
    assert h["retry-after"] == "31" and h["retry-after-ms"] == "30200"


@pytest.mark.parametrize("seconds,text", [(0, "0s"), (0.0004, "0s"), (0.02, "20ms"), (0.9994, "999ms"),
                                          (0.9996, "1s"), (1, "1s"), (17.28, "17.28s"), (59.9996, "1m0s"),
                                          (90.5, "1m30.5s"), (360, "6m0s"), (3600, "1h0m0s"),
                                          (3725.25, "1h2m5.25s")])
def test_durations_are_written_as_openai_writes_them(seconds, text):
    assert duration(seconds) == text


def test_the_headers_come_from_the_caller_then_the_model_kind_by_kind():
    q = quotas({"team-a": Limit(rpm=60), "team-b": Limit(concurrent=3)}, {"smollm2": Limit(rpm=600, tpm=6000)})
    h = hdrs(q.admit("team-a", "smollm2", 0.0, tokens_estimate=1000).headers())
    assert h == {"x-ratelimit-limit-requests": "60", "x-ratelimit-remaining-requests": "59",
                 "x-ratelimit-reset-requests": "1s",
                 "x-ratelimit-limit-tokens": "6000", "x-ratelimit-remaining-tokens": "5000",
                 "x-ratelimit-reset-tokens": "10s"}
    h = hdrs(q.admit("team-b", "smollm2", 0.0).headers())
    assert h["x-ratelimit-limit-requests"] == "600" and h["x-ratelimit-remaining-requests"] == "598"
    assert h["x-ratelimit-reset-requests"] == "200ms"
    assert q.admit("team-b", "other", 0.0).headers() == []  # a concurrency limit only: nothing to say


def test_an_unlimited_request_costs_a_shared_no_op():
    q = quotas({"team-a": Limit(rpm=1)}, {"smollm2": Limit(rpm=1)})
    a = q.admit("free", "other", 0.0, tokens_estimate=100)
    assert a is UNLIMITED and a.headers() == []
    a.done(1.0, tokens=100)
    assert set(q.callers) == {"team-a"} and set(q.models) == {"smollm2"}
    assert q.report()["callers"] == {"team-a": [0, 0, 0]}


# --- in flight, done


def test_done_in_a_finally_frees_the_place_and_is_idempotent():
    q = quotas({"team-a": Limit(tpm=600, concurrent=2)})
    first = q.admit("team-a", "m", 0.0, tokens_estimate=100)
    with pytest.raises(RuntimeError):
        second = q.admit("team-a", "m", 0.0, tokens_estimate=100)
        try:
            assert refused(q, "team-a", "m", 0.0).message == "Too many concurrent requests for key 'team-a': limit 2."
            raise RuntimeError("the upstream failed")
        finally:
            second.done(0.0, tokens=0)  # failed: the estimate is given back
    caller = q.callers["team-a"]
    assert caller.in_flight == 1 and caller.tokens.level(0.0) == pytest.approx(500)
    first.done(0.0, tokens=250)
    first.done(0.0, tokens=250)
    second.done(0.0, tokens=999)
    assert caller.in_flight == 0 and caller.tokens.level(0.0) == pytest.approx(350)
    assert (caller.requests_total, caller.tokens_total) == (2, 250)


def test_done_settles_the_estimate_it_is_told():
    q = quotas(models={"m": Limit(tpm=600)})
    q.admit("x", "m", 0.0, tokens_estimate=100).done(0.0, tokens=300, estimate_was=0)
    assert q.models["m"].tokens.level(0.0) == pytest.approx(200)  # 100 taken, then 300 more


# --- reloads


def test_configure_keeps_what_did_not_change_and_restarts_what_did():
    q = quotas({"team-a": Limit(rpm=60, tpm=600, concurrent=4), "team-b": Limit(rpm=60)},
               {"smollm2": Limit(rpm=60)}, default=Limit(rpm=10))
    a = q.admit("team-a", "smollm2", 0.0, tokens_estimate=100)
    q.admit("team-b", "smollm2", 0.0)
    q.admit("guest", "smollm2", 0.0)
    team_a, team_b, guest = q.callers["team-a"], q.callers["team-b"], q.callers["guest"]
    q.configure({"team-a": Limit(rpm=120, tpm=600, concurrent=4), "team-b": Limit(rpm=60)},
                {"smollm2": Limit(rpm=60)}, Limit(rpm=10))
    assert q.callers["team-b"] is team_b and team_b.requests.level(0.0) == 59
    assert q.callers["guest"] is guest and guest.requests.level(0.0) == 9
    assert q.callers["team-a"] is team_a and team_a.requests.level(0.0) == 120  # a new bucket, full
    assert team_a.tokens.level(0.0) == 500 and team_a.in_flight == 1  # what did not change stays
    assert q.models["smollm2"].requests.level(0.0) == 57
    a.done(0.0, tokens=100)
    assert team_a.in_flight == 0
    q.configure({"team-a": Limit()}, {}, Limit(rpm=5))
    assert set(q.callers) == {"team-b", "guest"} and not q.models
    assert q.callers["guest"].requests.limit == 5 and q.callers["team-b"].requests.limit == 5
    assert q.admit("team-a", "smollm2", 0.0) is UNLIMITED  # named with no limit: not given the default
    assert "team-a" not in q.callers and q.admit("team-c", "smollm2", 0.0) is not UNLIMITED
    q.configure({}, {}, None)
    assert not q.callers and q.admit("guest", "smollm2", 0.0) is UNLIMITED


def test_a_default_caller_gets_a_quota_of_its_own():
    q = quotas(default=Limit(rpm=1))
    q.admit("one", "m", 0.0)
    q.admit("two", "m", 0.0)
    assert refused(q, "one", "m", 0.0).message.startswith("Rate limit reached for requests per minute (key 'one')")


# --- the exchange between replicas


def test_a_peers_first_report_is_a_baseline_and_the_next_ones_are_charged():
    q = quotas({"team-a": Limit(rpm=60, tpm=6000, concurrent=5)}, {"smollm2": Limit(rpm=60)})
    q.merge("10.0.0.2", {"boot": "b1", "callers": {"team-a": [40, 4000, 2]}, "models": {"smollm2": [40, 4000, 2]}},
            0.0)
    team_a = q.callers["team-a"]
    assert team_a.requests.level(0.0) == 60 and team_a.tokens.level(0.0) == 6000
    assert team_a.peers_in_flight == 2 and q.models["smollm2"].peers_in_flight == 2
    q.merge("10.0.0.2", {"boot": "b1", "callers": {"team-a": [50, 4500, 3]}, "models": {"smollm2": [45, 4500, 1]}},
            0.0)
    assert team_a.requests.level(0.0) == 50 and team_a.tokens.level(0.0) == 5500
    assert q.models["smollm2"].requests.level(0.0) == 55
    assert team_a.peers_in_flight == 3 and q.models["smollm2"].peers_in_flight == 1
    q.merge("10.0.0.3", {"boot": "c1", "callers": {"team-a": [0, 0, 2]}, "models": {}}, 0.0)
    assert team_a.peers_in_flight == 5  # concurrency counts every peer's last figure
    assert refused(q, "team-a", "smollm2", 0.0).message == "Too many concurrent requests for key 'team-a': limit 5."


def test_a_peer_that_restarted_is_a_baseline_again():
    q = quotas({"team-a": Limit(rpm=60, concurrent=10)})
    q.merge("p", {"boot": "b1", "callers": {"team-a": [40, 0, 4]}}, 0.0)
    q.merge("p", {"boot": "b2", "callers": {"team-a": [3, 0, 1]}}, 0.0)  # a new process: its totals are new
    team_a = q.callers["team-a"]
    assert team_a.requests.level(0.0) == 60 and team_a.peers_in_flight == 1
    q.merge("p", {"boot": "b2", "callers": {"team-a": [5, 0, 0]}}, 0.0)
    assert team_a.requests.level(0.0) == 58 and team_a.peers_in_flight == 0 and team_a.peers == {}


def test_a_scope_new_in_a_known_peers_report_counts_whole_and_one_gone_drops_its_in_flight():
    q = quotas({"team-a": Limit(concurrent=10)}, {"smollm2": Limit(rpm=60)}, default=Limit(rpm=10))
    q.merge("p", {"boot": "b1", "callers": {"team-a": [1, 0, 1]}, "models": {}}, 0.0)
    q.merge("p", {"boot": "b1", "callers": {"guest": [3, 0, 1]}, "models": {"smollm2": [4, 0, 2]}}, 0.0)
    assert q.callers["guest"].requests.level(0.0) == 7  # made from the default, charged the peer's 3
    assert q.models["smollm2"].requests.level(0.0) == 56
    assert q.callers["team-a"].peers_in_flight == 0 and q.models["smollm2"].peers_in_flight == 2


def test_totals_that_go_back_charge_nothing():
    q = quotas({"team-a": Limit(rpm=60, tpm=600)})
    q.merge("p", {"boot": "b1", "callers": {"team-a": [10, 100, 0]}}, 0.0)
    q.merge("p", {"boot": "b1", "callers": {"team-a": [5, 50, 0]}}, 0.0)
    q.merge("p", {"boot": "b1", "callers": {"team-a": [6, 60, 0]}}, 0.0)
    assert q.callers["team-a"].requests.level(0.0) == 59 and q.callers["team-a"].tokens.level(0.0) == 590


@pytest.mark.parametrize("report", [
    None, [], "x", {}, {"boot": 1}, {"boot": ""}, {"boot": "b", "callers": []},
    {"boot": "b", "callers": {"team-a": [1, 2]}}, {"boot": "b", "callers": {"team-a": "123"}},
    {"boot": "b", "callers": {"team-a": [1, 2, "3"]}}, {"boot": "b", "callers": {"team-a": [1, -2, 3]}},
    {"boot": "b", "callers": {"team-a": [True, 2, 3]}}, {"boot": "b", "callers": {"team-a": [float("nan"), 2, 3]}},
    {"boot": "b", "callers": {"team-a": [1, float("inf"), 3]}}, {"boot": "b", "callers": {1: [1, 2, 3]}},
    {"boot": "b", "callers": {}, "models": {"smollm2": None}},
])
def test_a_report_that_is_not_one_is_ignored(report):
    q = quotas({"team-a": Limit(rpm=60, tpm=600, concurrent=9)}, {"smollm2": Limit(rpm=60)})
    good = {"boot": "b", "callers": {"team-a": [1, 10, 2]}, "models": {"smollm2": [1, 10, 2]}}
    q.merge("p", good, 0.0)
    q.merge("p", report, 0.0)
    q.merge("p", {"boot": "b", "callers": {"team-a": [2, 20, 2]}, "models": {"smollm2": [2, 20, 2]}}, 0.0)
    team_a = q.callers["team-a"]  # the good reports counted as if the bad one had never come
    assert (team_a.requests.level(0.0), team_a.tokens.level(0.0), team_a.peers_in_flight) == (59, 590, 2)
    assert (q.models["smollm2"].requests.level(0.0), q.models["smollm2"].peers_in_flight) == (59, 2)


def test_a_replica_ignores_its_own_report_and_forgets_a_peer():
    q = quotas({"team-a": Limit(rpm=60, concurrent=2)}, {"smollm2": Limit(concurrent=3)})
    q.admit("team-a", "smollm2", 0.0)
    own = orjson.loads(orjson.dumps(q.report()))  # what a peer gets: JSON
    q.merge("myself", own, 0.0)
    q.admit("team-a", "smollm2", 0.0)
    assert q.callers["team-a"].peers_in_flight == 0 and q.callers["team-a"].requests.level(0.0) == 58
    q.merge("p", {"boot": "b1", "callers": {"team-a": [0, 0, 1]}, "models": {"smollm2": [0, 0, 1]}}, 0.0)
    assert q.callers["team-a"].peers_in_flight == 1
    q.forget("p")
    q.forget("never-seen")
    assert q.callers["team-a"].peers_in_flight == 0 and q.models["smollm2"].peers_in_flight == 0
    q.merge("p", {"boot": "b1", "callers": {"team-a": [9, 0, 0]}}, 0.0)  # forgotten: a baseline again
    assert q.callers["team-a"].requests.level(0.0) == 58


def test_the_report_lists_what_this_replica_consumed():
    q = quotas({"team-a": Limit(rpm=60)}, {"smollm2": Limit(tpm=6000)}, boot="b0")
    q.admit("team-a", "smollm2", 0.0, tokens_estimate=100).done(1.0, tokens=70)
    q.admit("team-a", "smollm2", 1.0, tokens_estimate=100)
    assert q.report() == {"boot": "b0", "callers": {"team-a": [2, 70, 1]}, "models": {"smollm2": [2, 70, 1]}}
    assert Quotas().boot != Quotas().boot


# --- the whole: replicas that merge every interval admit what one shared bucket would


def simulate(replicas: int, route, merge_every: int | None, seconds: int = 120, per_second: int = 5,
             rpm: int = 60) -> tuple[int, list[int]]:
    """`per_second` requests a second for one key with an `rpm` limit, the k-th sent to replica
    route(k); every `merge_every` arrivals (None: never) each replica merges every other's report.
    Returns the total admitted and the admitted count per simulated minute."""
    nodes = [quotas({"team-a": Limit(rpm=rpm)}, boot=f"r{i}") for i in range(replicas)]
    admitted, per_minute = 0, [0] * (seconds // 60)
    for k in range(seconds * per_second):
        now = k / per_second
        if merge_every and k % merge_every == 0:
            reports = [n.report() for n in nodes]
            for i, node in enumerate(nodes):
                for j, report in enumerate(reports):
                    if i != j:
                        node.merge(f"r{j}", report, now)
        try:
            nodes[route(k)].admit("team-a", "smollm2", now).done(now, tokens=0)
        except ErrorAnswer:
            continue
        admitted += 1
        per_minute[int(now // 60)] += 1
    return admitted, per_minute


ROUTES = {"alternate": (2, lambda k: k % 2), "all-on-one": (2, lambda k: 0),
          "three-round-robin": (3, lambda k: k % 3), "bursts-of-7": (2, lambda k: k // 7 % 2)}


@pytest.mark.parametrize("interval", [1, 5])
@pytest.mark.parametrize("routing", ROUTES)
def test_replicas_that_exchange_counters_admit_what_one_bucket_would(routing, interval):
    """The bound, with L = 60 (capacity and per minute), r = 1/s (refill), 5 req/s offered, a
    merge every T s, and t the last arrival (119.8 s):

    - above: replica i admits only while L + r*t covers its own admissions plus its peers' as of
      the last merge, so the cluster's total is at most L + r*t plus what the others admitted
      since that merge: at most 5T - 1 arrivals (the admitted one is i's), none on one replica;
    - below: a refusal means i's view (which never counts more than was admitted) left less
      than 1, so the total was above L + r*t - 1, less what a bucket loses while it sits full
      before it hears of the others: at most r*T (a replica idle since the start);
    - so over 2 minutes, 179.8 - 1 - rT <= total <= 179.8 + 5T - 1: with T = 1 s, -1.1% to +2.2%
      of 179.8 (capacity 60 at once plus 60 a minute), and a steady minute (the second, the
      difference of two such totals) within 60 +- (5T - 1 + 1 + rT) = 60 +- 6: at most 10%.
    The measured error is printed (run with -s); one shared bucket is the reference."""
    replicas, route = ROUTES[routing]
    ideal, ideal_minutes = simulate(1, lambda k: 0, None)
    total, minutes = simulate(replicas, route, merge_every=5 * interval)
    expected, refill = 60 + 119.8, 1.0 * interval
    unseen = 5 * interval - 1 if routing != "all-on-one" else 0
    print(f"\n{routing}, merged every {interval} s: {total} admitted in 2 min, {total - expected:+.1f} "
          f"({(total - expected) / expected:+.1%}) from L + r*t = {expected}; one bucket: {ideal}; "
          f"minute 2: {minutes[1]} ({(minutes[1] - 60) / 60:+.1%} from 60)")
    assert expected - 1 <= ideal <= expected and ideal_minutes[1] in (59, 60, 61)
    assert expected - 1 - refill <= total <= expected + unseen
    assert abs(minutes[1] - 60) <= unseen + 1 + refill
    if interval == 1:
        assert abs(minutes[1] - 60) / 60 <= 0.10 and abs(total - expected) / expected < 0.025


def test_replicas_that_do_not_exchange_admit_the_limit_each():
    """The control: without merges the same two replicas admit twice the limit (the check above
    would fail)."""
    total, _ = simulate(2, lambda k: k % 2, merge_every=None)
    assert total >= 350
