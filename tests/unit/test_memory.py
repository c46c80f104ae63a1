"""The operator's memory and CPU savers: glibc's arenas capped and trimmed (memory.py), and no
diff base built by Kopf at each watch event (handlers.NoDiffBase)."""

from __future__ import annotations

import platform

import kopf
import pytest

from modelship import memory
from modelship.reconcile.handlers import NoDiffBase, configure_kopf
from modelship.settings import Settings

glibc = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the arena calls are glibc's")


@glibc
def test_the_arenas_are_capped_and_the_heap_trimmed():
    assert memory.limit_arenas() is True
    blocks = [bytearray(64 << 10) for _ in range(2000)]  # 128 MiB freed: something to give back
    del blocks
    assert memory.trim() is True  # malloc_trim(0) says it gave memory back


def test_without_glibc_both_do_nothing(monkeypatch):
    monkeypatch.setattr(memory, "_glibc", lambda: None)
    assert memory.limit_arenas() is False and memory.trim() is False


def test_kopf_builds_no_diff_base():
    settings = kopf.OperatorSettings()
    configure_kopf(settings, Settings())
    base = settings.persistence.diffbase_storage
    assert isinstance(base, NoDiffBase)
    body = {"metadata": {"name": "m"}, "spec": {"model": {"repo": "org/tiny"}}}
    assert dict(base.build(body=body)) == {}
    assert base.fetch(body=body) is None and base.store(body=body, patch={}, essence={}) is None
