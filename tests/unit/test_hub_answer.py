"""HubBadAnswer is said for an answer that is not of the Hub's shape, and only for that: an
exception of the operator's own while resolving goes up as itself (the reconcile logs it
with its traceback), not as a mirror gone wrong."""

from __future__ import annotations

import pytest

from modelship.reconcile import resolve as resolve_module
from modelship.reconcile.resolve import ResolveError
from modelship_testbed.hub_fake import FakeHub, FakeRepo

from .test_hub_bad_inputs import GGUF, SHA, failure, resolve

SAFE = {"config.json": b"{}", "model.safetensors": GGUF}
ODD = {  # id: (model info fields the fake Hub answers instead, files) -> what the message says in brackets
    "sha not a commit": ({"sha": "main"}, SAFE, "no commit sha in the model's info (sha: 'main')"),
    "siblings not a list": ({"siblings": {"rfilename": "m.gguf"}}, SAFE,
                            "TypeError: string indices must be integers, not 'str'"),
    "sibling without rfilename": ({"siblings": [{"name": "m.gguf"}]}, SAFE, "KeyError: 'rfilename'"),
    "rfilename a number": ({"siblings": [{"rfilename": 7}]}, SAFE, "a sibling's rfilename is 7, not a string"),
    "size a string": ({"siblings": [{"rfilename": "m.gguf", "size": "1 KB"}]}, SAFE,
                      "'m.gguf' has size '1 KB', not a whole number of bytes"),
    "size negative": ({"siblings": [{"rfilename": "m.gguf", "size": -1}]}, SAFE,
                      "'m.gguf' has size -1, not a whole number of bytes"),
    "lfs without sha256": ({"siblings": [{"rfilename": "m.gguf", "size": 1, "lfs": {"size": 1}}]}, SAFE,
                           "KeyError: 'sha256'"),
    "gguf a list": ({"gguf": ["llama"]}, SAFE, "gguf is a list, not an object"),
    "gguf context a string": ({"gguf": {"architecture": "llama", "context_length": "4k"}}, SAFE,
                              "gguf.architecture 'llama' or gguf.context_length '4k' is not a name and a whole "
                              "number"),
}


@pytest.fixture(scope="module")
def hub():
    h = FakeHub()
    for i, (info, files, _) in enumerate(ODD.values()):
        h.add_repo(FakeRepo(f"org/odd{i}", {SHA: files}, {"main": SHA}, extra_info=info))
    h.add_repo(FakeRepo("org/fine", {SHA: {"m-Q4_K_M.gguf": GGUF}}, {"main": SHA}))
    h.add_repo(FakeRepo("org/odd-files", {SHA: {
        "config.json": b'{"architectures": "LlamaForCausalLM", "model_type": 7, "max_position_embeddings": "4k"}',
        "model.safetensors.index.json": b'{"weight_map": ["model.safetensors"]}',
        "model.safetensors": GGUF}}, {"main": SHA}))
    h.start()
    yield h
    h.stop()


@pytest.mark.parametrize("case", sorted(ODD))
def test_an_answer_of_another_shape_is_a_bad_answer(hub, case):
    said = ODD[case][2]
    e = failure(hub.url, f"org/odd{list(ODD).index(case)}")
    assert (e.reason, e.transient) == ("HubBadAnswer", True)
    assert e.message == (f"org/odd{list(ODD).index(case)} on {hub.url}: the Hub API answered something that is "
                         f"not the Hub's JSON ({said}); check that {hub.url} is a Hub or a Hub mirror; retrying "
                         f"with backoff")


def test_odd_small_files_of_the_repo_only_refine_nothing(hub):
    """config.json and the safetensors index are the repo's files, not the Hub's answer: a
    shape that states nothing is read as stating nothing, as a missing file is."""
    r = resolve(hub.url, "org/odd-files")
    assert ([f.path for f in r.files], r.architecture, r.context_length) == (
        ["config.json", "model.safetensors", "model.safetensors.index.json"], None, None)


@pytest.mark.parametrize("error", [KeyError("tag"), TypeError("unhashable type: 'list'"), ValueError("bad tag")])
def test_the_operators_own_error_is_not_called_a_bad_answer(hub, monkeypatch, error):
    def broken(*args):
        raise error
    monkeypatch.setattr(resolve_module, "choose_gguf", broken)  # (called while resolving)
    with pytest.raises(type(error)) as raised:
        resolve(hub.url, "org/fine")
    assert raised.value is error and not isinstance(raised.value, ResolveError)
