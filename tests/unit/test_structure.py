"""The tree shows the architecture, and this test keeps it so: each program imports only what
it may, and no function or module grows past what a reader takes in at once.

    modelship/               what every program shares: the API types, CRD generation, the
                             settings, units, time, the one login rule, the CLI
    modelship/reconcile/     the operator process (Kopf wiring, the loop, reading, the plan)
    modelship/manifests/     pure builders: spec in, dict out
    modelship/weights/       what the download and collection Jobs run
    modelship/router/        the router
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[2] / "operator" / "modelship"
SHARED = ("modelship.api", "modelship.crd", "modelship.settings", "modelship.units", "modelship.clock",
          "modelship.login", "modelship.endpointslices")
SUBPACKAGES = ("modelship.reconcile", "modelship.manifests", "modelship.weights", "modelship.router")
PURE = ("modelship.reconcile.observe", "modelship.reconcile.facts", "modelship.reconcile.policy",
        "modelship.reconcile.plan", "modelship.reconcile.status", "modelship.reconcile.types",
        "modelship.reconcile.autoscale", "modelship.reconcile.autoscaler")
MAX_FUNCTION_LINES, MAX_MODULE_LINES = 60, 400
# The exceptions, each with its reason.
LONG_MODULES = {
    "modelship.api": "the whole API (the CRD's types, their CEL rules and descriptions) in one file, reviewed as one",
}


def modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PKG.rglob("*.py")):
        parts = path.relative_to(PKG.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def imports(name: str, path: Path) -> set[str]:
    """Every module `name` imports, absolute (relative imports resolved), at any depth."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names)  # `from . import x` may name a module
    return found


def within(found: set[str], prefixes: tuple[str, ...]) -> set[str]:
    return {m for m in found if any(m == p or m.startswith(p + ".") for p in prefixes)}


ALL = modules()


def test_the_tree_has_one_folder_per_program():
    for package in SUBPACKAGES:
        assert package in ALL, f"{package} is missing"


@pytest.mark.parametrize("name", [n for n in ALL if n.startswith("modelship.manifests")])
def test_manifests_are_pure_builders(name):
    found = imports(name, ALL[name])
    assert not within(found, ("kubernetes", "kopf", "modelship.reconcile", "modelship.router", "modelship.weights",
                              "modelship.login")), f"{name} imports {found}"


@pytest.mark.parametrize("name", [n for n in ALL if n.startswith("modelship.weights")])
def test_the_jobs_program_needs_only_the_standard_library(name):
    found = imports(name, ALL[name])
    foreign = {m for m in found if m.split(".")[0] not in sys.stdlib_module_names and m != "__future__"
               and not within({m}, ("modelship.weights",))}
    assert not foreign, f"{name} imports {foreign}: the Jobs' program is the standard library and itself only"


@pytest.mark.parametrize("name", [n for n in ALL if n.startswith("modelship.router")])
def test_the_router_knows_nothing_of_the_operator(name):
    found = imports(name, ALL[name])
    assert not within(found, ("modelship.reconcile", "modelship.manifests", "modelship.weights", "kopf")), \
        f"{name} imports {found}"


@pytest.mark.parametrize("name", PURE)
def test_the_plan_and_what_feeds_it_are_pure(name):
    found = imports(name, ALL[name])
    assert not within(found, ("kubernetes", "kopf", "modelship.reconcile.kube", "modelship.reconcile.controller",
                              "modelship.login")), f"{name} imports {found}"


def test_the_api_layer_only_reads_and_writes():
    found = imports("modelship.reconcile.kube", ALL["modelship.reconcile.kube"])
    assert not within(found, ("modelship.reconcile.plan", "modelship.reconcile.observe",
                              "modelship.reconcile.status", "modelship.reconcile.facts")), found


@pytest.mark.parametrize("name", SHARED)
def test_shared_modules_depend_on_no_program(name):
    found = imports(name, ALL[name])
    assert not within(found, SUBPACKAGES), f"{name} imports {within(found, SUBPACKAGES)}"


def test_no_function_or_module_is_too_long_to_read_at_once():
    long_functions, long_modules = [], []
    for name, path in ALL.items():
        source = path.read_text()
        if len(source.splitlines()) > MAX_MODULE_LINES and name not in LONG_MODULES:
            long_modules.append(f"{name} ({len(source.splitlines())} lines)")
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long_functions.append(f"{name}.{node.name} ({lines} lines)")
    assert not long_modules, f"modules over {MAX_MODULE_LINES} lines: {long_modules}"
    assert not long_functions, f"functions over {MAX_FUNCTION_LINES} lines: {long_functions}"


def test_the_checks_above_can_fail():
    """The import scan sees relative and nested imports (a rule it could not see would pass
    whatever the code did)."""
    found = imports("modelship.reconcile.controller", ALL["modelship.reconcile.controller"])
    assert {"modelship.reconcile.plan", "modelship.api", "kubernetes.client.rest"} <= found
    found = imports("modelship.cli", ALL["modelship.cli"])
    assert "modelship.reconcile.handlers" in found  # an import inside a function body
