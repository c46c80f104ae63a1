"""The router's API keys (issue 19, Security): compared in constant time, never logged, and a
missing or wrong key costs no upstream work and no discovery lookup.

How the comparison is constant-time: `Callers` keeps only each key's SHA-256 digest and looks
the presented key's digest up in a dict. The time depends on the digest's hash, not on how
many leading characters of a real key the caller guessed, so there is no `==` on key bytes to
time (a direct comparison of secrets elsewhere would need `hmac.compare_digest`)."""

from __future__ import annotations

import asyncio
import hashlib
import logging

import httpx
import pytest

from .test_router_front_door import HI, KEYS, answering, router, target
from .test_router_hold import serving

RIGHT, NEAR_MISS = "ka-secret", "ka-secreX"  # a wrong key that shares all but its last character


def test_keys_are_held_only_as_digests_and_a_near_miss_is_refused_like_any_wrong_key():
    from modelship.router.callers import Callers
    from modelship.router.errors import ErrorAnswer

    callers = Callers(KEYS)
    assert set(callers.keys) == {hashlib.sha256(k.encode()).digest() for k in KEYS}
    assert not any(k in repr(vars(callers)) for k in KEYS)  # no plain key kept to compare against
    assert callers.identify([(b"authorization", f"Bearer {RIGHT}".encode())]) == "team-a"
    answers = []
    for given in (NEAR_MISS, "k", "x" * 64, ""):
        with pytest.raises(ErrorAnswer) as e:
            callers.identify([(b"authorization", f"Bearer {given}".encode())])
        answers.append((e.value.status, e.value.message))
    with pytest.raises(ErrorAnswer) as e:
        callers.identify([])
    answers.append((e.value.status, e.value.message))
    assert set(answers) == {(401, "a valid API key is needed: send `Authorization: Bearer <key>`")}


def test_a_missing_or_wrong_key_costs_no_upstream_or_discovery_work_and_no_key_is_logged(caplog, monkeypatch):
    from modelship.router.accesslog import AccessLog
    from modelship.router.registry import Registry

    upstream = answering(200, b'{"choices":[{"message":{"role":"assistant","content":"hi"}}],'
                              b'"usage":{"prompt_tokens":1,"completion_tokens":1}}')
    lookups: list[str] = []
    real_find = Registry.find

    def counting_find(self, model, allowed=None):
        lookups.append(model)
        return real_find(self, model, allowed)

    monkeypatch.setattr(Registry, "find", counting_find)
    written: list[bytes] = []

    async def go():
        async with serving(upstream) as engine:
            app = router(target("tiny", engine), keys=KEYS)
            app.access = AccessLog(sink=written.append)
            async with serving(app) as url, httpx.AsyncClient() as c:
                async def ask(headers):
                    return (await c.post(f"{url}/v1/chat/completions", headers=headers,
                                         json={"model": "tiny", "messages": HI})).status_code

                refused = [await ask({}), await ask({"authorization": f"Bearer {NEAR_MISS}"}),
                           await ask({"authorization": f"Basic {RIGHT}"}), await ask({"authorization": RIGHT}),
                           (await c.get(f"{url}/v1/models", headers={"authorization": f"Bearer {NEAR_MISS}"})
                            ).status_code]
                before = (len(upstream.seen), len(lookups))
                ok = await ask({"authorization": f"Bearer {RIGHT}"})
                metrics = (await c.get(f"{url}/metrics")).text
                return refused, before, ok, metrics, app

    with caplog.at_level(logging.DEBUG):
        refused, before, ok, metrics, app = asyncio.run(go())
    app.access.flush()
    assert refused == [401] * 5
    assert before == (0, 0)  # no request reached the engine, no model was looked up for them
    assert ok == 200 and len(upstream.seen) == 1 and lookups == ["tiny"]  # (the counters do count)
    router_logs = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith(("modelship", "uvicorn")))
    logged = b"".join(written).decode() + router_logs + metrics
    assert logged.count('"status":401') == 5 and "team-a" in logged  # what was searched holds the requests
    assert RIGHT not in logged and NEAR_MISS not in logged
