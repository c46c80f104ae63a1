"""Every bad Hub input ends in a condition with a reason and a message (what the Ready and
Resolved conditions say, word for word), through the real `huggingface_hub` client against
the fake Hub, and file names that could leave the volume are refused where they are needed.

Odd names a repository holds but the choice leaves out (a README called `../../etc/passwd`)
are no concern: they are never written. A needed one is refused with UnsafeFileName."""

from __future__ import annotations

import socket
import threading

import pytest

from modelship.api import ModelSource
from modelship.reconcile.resolve import CatalogResolver, HubResolver, ResolveError
from modelship.weights.volume import unsafe_name
from modelship_testbed.hub_fake import FakeHub, FakeRepo

SHA = "1" * 40
GGUF = b"GGUF" + b"x" * 996

HOSTILE = {  # name -> why the Job and the resolver refuse it
    "../../etc/passwd": "it has an empty, '.' or '..' component",
    "/etc/passwd": "it is an absolute path",
    "a/../../b.gguf": "it has an empty, '.' or '..' component",
    "./m.gguf": "it has an empty, '.' or '..' component",
    "a/./m.gguf": "it has an empty, '.' or '..' component",
    "a//m.gguf": "it has an empty, '.' or '..' component",
    "..": "it has an empty, '.' or '..' component",
    "m\x00.gguf": "it has the control or invisible character U+0000",
    "m\n.gguf": "it has the control or invisible character U+000A",
    "..\\..\\m.gguf": "it has a backslash",
    "m\u202egguf.exe": "it has the control or invisible character U+202E",  # right-to-left override
    "m\u200b.gguf": "it has the control or invisible character U+200B",  # zero-width space
    "\uff0e\uff0e/m.gguf": "it has an empty, '.' or '..' component",  # fullwidth dots: '..' once normalized
    "a" * 256 + ".gguf": "it is longer than a filesystem takes (255 bytes a component, 1024 in all)",
    "/".join(["d" * 200] * 6) + ".gguf": "it is longer than a filesystem takes (255 bytes a component, 1024 in all)",
}
FINE = ["m.gguf", "sub/dir/m.gguf", "ünïcödé-模型.gguf", "m -> etc-passwd.gguf", "..m.gguf", "m..gguf", ".hidden"]


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_names_that_could_leave_the_volume_say_why(name):
    assert unsafe_name(name) == HOSTILE[name]


@pytest.mark.parametrize("name", FINE)
def test_odd_but_harmless_names_pass(name):
    assert unsafe_name(name) is None  # ("m -> x" is a name with an arrow in it, not a link)


class Silent:
    """A server on 127.0.0.1 that accepts connections and never answers: a mirror that stalls."""

    def __enter__(self) -> str:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.held: list[socket.socket] = []
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}"

    def _accept(self) -> None:
        try:
            while True:
                self.held.append(self.sock.accept()[0])
        except OSError:
            return

    def __exit__(self, *exc) -> None:
        self.sock.close()
        for s in self.held:
            s.close()


def closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


@pytest.fixture(scope="module")
def hub():
    h = FakeHub()
    h.add_repo(FakeRepo("org/chat-GGUF", {SHA: {"chat-Q4_K_M.gguf": GGUF, "chat-Q8_0.gguf": GGUF * 2}},
                        {"main": SHA}))
    h.add_repo(FakeRepo("org/gated", {SHA: {"m-Q4_K_M.gguf": GGUF}}, {"main": SHA}, gated=True, tokens={"hf_ok"}))
    h.add_repo(FakeRepo("org/docs", {SHA: {"README.md": b"# no weights", "LICENSE": b"x"}}, {"main": SHA}))
    h.add_repo(FakeRepo("org/garbage", {SHA: {"m-Q4_K_M.gguf": GGUF}}, {"main": SHA}))
    h.garbage.add("org/garbage")
    h.add_repo(FakeRepo("org/needs-bad", {SHA: {"../../m-Q4_K_M.gguf": GGUF, "m-Q8_0.gguf": GGUF}}, {"main": SHA}))
    h.add_repo(FakeRepo("org/odd-readme", {SHA: {"../../etc/passwd": b"x", "m\nx.md": b"y", "m-Q4_K_M.gguf": GGUF}},
                        {"main": SHA}))
    h.add_repo(FakeRepo("org/odd-config", {SHA: {"config.json": b"{}", "model.safetensors": GGUF,
                                                 "sub/../../x.json": b"{}"}}, {"main": SHA}))
    h.start()
    yield h
    h.stop()


def resolve(endpoint: str, repo: str, token: str | None = None, **model):
    return HubResolver(timeout=1).resolve(ModelSource(repo=repo, **model), endpoint, token)


def failure(endpoint: str, repo: str, token: str | None = None, **model) -> ResolveError:
    with pytest.raises(ResolveError) as e:
        resolve(endpoint, repo, token, **model)
    return e.value


def message(reason: str, text: str, transient: bool = False) -> tuple[str, str, bool]:
    return reason, text, transient


ERR = "it has an empty, '.' or '..' component"
CASES = {  # id: (repo, token, spec.model) -> (reason, message (with {url}), transient)
    "missing repo": (("org/nope", None, {}), message(
        "RepoNotFound", "org/nope on {url} does not exist: check spec.model.repo; if it is private, set "
                        "spec.model.tokenSecretRef")),
    "invalid repo name": (("org/bad..name", None, {}), message(
        "InvalidRepo", "'org/bad..name' is not a valid Hub repository name: Cannot have -- or .. in repo_id: "
                       "'org/bad..name'.; fix spec.model.repo")),
    "bad revision": (("org/chat-GGUF", None, {"revision": "v9"}), message(
        "RevisionNotFound", "org/chat-GGUF on {url} has no branch, tag or commit 'v9': check spec.model.revision")),
    "absent quantization": (("org/chat-GGUF", None, {"quantization": "Q3_K_S"}), message(
        "QuantizationNotFound", "org/chat-GGUF@main has no GGUF file for 'Q3_K_S'; it has: Q4_K_M (1000 B), "
                                "Q8_0 (2.0 KiB)")),
    "gated without a token": (("org/gated", None, {}), message(
        "GatedRepo", "org/gated on {url} is gated: accept its terms on the Hub with your account, then `kubectl "
                     "create secret generic hf-token --from-literal=token=hf_...` and set "
                     "spec.model.tokenSecretRef.name: hf-token")),
    "gated with a wrong token": (("org/gated", "hf_wrong", {}), message(
        "Unauthorized", "the token from model.tokenSecretRef has no access to the gated org/gated on {url}: "
                        "request access on the model's page, or use a token of an account that has it")),
    "nothing servable": (("org/docs", None, {}), message(
        "NoServableFiles", "org/docs@main has no GGUF, safetensors or PyTorch weights to serve (files: LICENSE, "
                           "README.md)")),
    "garbage from the API": (("org/garbage", None, {}), message(
        "HubBadAnswer", "org/garbage on {url}: the Hub API answered something that is not the Hub's JSON "
                        "(JSONDecodeError: Expecting value: line 1 column 1 (char 0)); check that {url} is a Hub "
                        "or a Hub mirror; retrying with backoff", transient=True)),
    "hostile name needed": (("org/needs-bad", None, {}), message(
        "UnsafeFileName", f"org/needs-bad@main has a file named '../../m-Q4_K_M.gguf' that cannot be written "
                          f"safely ({ERR}); it is needed to serve the model, so the repository cannot be served: "
                          f"fix the name on the Hub, or choose other files (spec.model.quantization or files)")),
    "hostile name asked for by model.files": (("org/odd-config", None, {"files": ["sub/*"]}), message(
        "UnsafeFileName", f"org/odd-config@main has a file named 'sub/../../x.json' that cannot be written "
                          f"safely ({ERR}); it is needed to serve the model, so the repository cannot be served: "
                          f"fix the name on the Hub, or choose other files (spec.model.quantization or files)")),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_each_bad_input_ends_in_a_condition(hub, case):
    (repo, token, model), (reason, text, transient) = CASES[case]
    e = failure(hub.url, repo, token, **model)
    assert (e.reason, e.message, e.transient) == (reason, text.format(url=hub.url), transient)
    assert "\n" not in e.message  # one line


def test_a_stalled_mirror_is_unreachable_within_the_timeout_and_retried():
    with Silent() as url:
        e = failure(url, "org/chat-GGUF")
    assert (e.reason, e.transient) == ("HubUnreachable", True)
    assert e.message == (f"cannot reach {url} (ReadTimeout); retrying with backoff. In an air-gapped cluster set "
                         f"spec.model.endpoint or the operator's hubEndpoint to a mirror")


def test_a_mirror_that_is_down_is_unreachable():
    url = f"http://127.0.0.1:{closed_port()}"
    e = failure(url, "org/chat-GGUF")
    assert (e.reason, e.transient) == ("HubUnreachable", True) and e.message.startswith(f"cannot reach {url} (")


def test_the_right_token_opens_the_gated_repo(hub):
    assert [f.path for f in resolve(hub.url, "org/gated", "hf_ok").files] == ["m-Q4_K_M.gguf"]


def test_an_odd_name_the_choice_leaves_out_is_no_concern(hub):
    r = resolve(hub.url, "org/odd-readme")
    assert [f.path for f in r.files] == ["m-Q4_K_M.gguf"]
    r = resolve(hub.url, "org/odd-config")
    assert [f.path for f in r.files] == ["config.json", "model.safetensors"]


def test_another_choice_avoids_a_hostile_file(hub):
    r = resolve(hub.url, "org/needs-bad", quantization="Q8_0")
    assert [f.path for f in r.files] == ["m-Q8_0.gguf"]


def test_a_catalog_entry_with_a_hostile_name_is_refused_too(tmp_path):
    catalog = tmp_path / "catalog.yaml"
    catalog.write_text(f"""
- repo: org/cat
  revision: main
  sha: "{SHA}"
  short_sha: "{SHA[:7]}"
  engine: llamacpp
  format: gguf
  model_file: /etc/passwd
  files: [{{path: /etc/passwd, size: 10}}]
  total_bytes: 10
""")
    with pytest.raises(ResolveError) as e:
        CatalogResolver(catalog).resolve(ModelSource(repo="org/cat"), "http://unused", None)
    assert e.value.reason == "UnsafeFileName"
    assert e.value.message.startswith("org/cat@main has a file named '/etc/passwd' that cannot be written safely "
                                      "(it is an absolute path)")
