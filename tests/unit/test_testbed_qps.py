"""The test bed's control-plane rate limits: the defaults unless the scale bench asks for more."""

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
