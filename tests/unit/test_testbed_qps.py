"""The test bed's control-plane rate limits and profiling: the defaults unless the scale bench asks."""

from __future__ import annotations

import pytest

from modelship_testbed import supervisor


def test_the_defaults_unless_asked(monkeypatch):
    monkeypatch.delenv(supervisor.QPS_ENV, raising=False)
    assert supervisor.control_plane_qps() == ()
    monkeypatch.setenv(supervisor.QPS_ENV, "100")
    assert supervisor.control_plane_qps() == ("--kube-api-qps=100", "--kube-api-burst=100")


@pytest.mark.parametrize("bad", ["fast", "0", "-5", "1.5"])
def test_a_bad_value_says_what_to_give(monkeypatch, bad):
    monkeypatch.setenv(supervisor.QPS_ENV, bad)
    with pytest.raises(SystemExit, match="give a whole number of requests a second"):
        supervisor.control_plane_qps()


def test_the_api_servers_profiling_only_when_asked(monkeypatch):
    monkeypatch.delenv(supervisor.PROFILING_ENV, raising=False)
    assert supervisor.profiling() == "--profiling=false"
    monkeypatch.setenv(supervisor.PROFILING_ENV, "1")
    assert supervisor.profiling() == "--profiling=true"
    monkeypatch.setenv(supervisor.PROFILING_ENV, "yes")
    with pytest.raises(SystemExit, match="give 1 to serve the API server's /debug/pprof, or 0"):
        supervisor.profiling()
