"""`modelship ls`, `modelship status`, `modelship delete`, and following a ModelDeployment to
Ready (`--wait`, which `deploy` shares). What they show is built by `render`'s pure functions."""

from __future__ import annotations

import time
from typing import Any, Callable

import click

from .common import (EXIT_FAILED, EXIT_NOT_FOUND, EXIT_TIMEOUT, GROUP, PLURAL, VERSION, Kube, UserError,
                     console, kube_options, user_errors)

POLL_SECONDS = 2.0  # how often --wait and --watch read the object again


def get(kube: Kube, name: str) -> dict | None:
    """The ModelDeployment, or None if there is none of that name."""
    from kubernetes.client.exceptions import ApiException

    try:
        return kube.custom().get_namespaced_custom_object(GROUP, VERSION, kube.namespace, PLURAL, name)
    except ApiException as e:
        if e.status == 404:
            return None
        raise


def must_get(kube: Kube, name: str) -> dict:
    obj = get(kube, name)
    if obj is None:
        raise UserError(f"no ModelDeployment {name!r} in namespace {kube.namespace!r} (see `modelship ls`)",
                        EXIT_NOT_FOUND)
    return obj


def settled(obj: dict) -> str | None:
    """`Ready` or `Failed` once the operator has acted on the current spec, else None."""
    status = obj.get("status") or {}
    generation = (obj.get("metadata") or {}).get("generation")
    if generation and status.get("observedGeneration") not in (None, generation):
        return None
    return status.get("phase") if status.get("phase") in ("Ready", "Failed") else None


def follow(kube: Kube, name: str, timeout: float, show: Callable[[dict], None]) -> dict:
    """Read the object until it is Ready (returned), Failed (exit 1 with its message) or
    `timeout` seconds pass (exit 4); `show` is given each version read."""
    from .render import failure_message

    deadline = time.monotonic() + timeout
    while True:
        obj = must_get(kube, name)
        show(obj)
        outcome = settled(obj)
        if outcome == "Ready":
            return obj
        if outcome == "Failed":
            raise UserError(f"{name} failed: {failure_message(obj)}", EXIT_FAILED)
        if time.monotonic() >= deadline:
            phase = (obj.get("status") or {}).get("phase") or "Pending"
            raise UserError(f"{name} is not Ready after {timeout:g}s (phase {phase}); "
                            f"`modelship status {name} --watch` to follow it", EXIT_TIMEOUT)
        time.sleep(POLL_SECONDS)


def follow_live(kube: Kube, name: str, timeout: float) -> dict:
    """`follow` with a live view on a terminal, one line per phase change elsewhere."""
    from .render import status_view

    out = console()
    if not out.is_terminal:
        seen: list[str] = []

        def line(obj: dict) -> None:
            phase = (obj.get("status") or {}).get("phase") or "Pending"
            if not seen or seen[-1] != phase:
                seen.append(phase)
                out.print(f"{name}: {phase}", highlight=False)
        return follow(kube, name, timeout, line)
    from rich.live import Live

    with Live(console=out, auto_refresh=False) as live:
        return follow(kube, name, timeout, lambda obj: live.update(status_view(obj), refresh=True))


def output_option(fn: Callable) -> Callable:
    return click.option("-o", "--output", type=click.Choice(["json", "yaml"]), default=None,
                        help="Print the object(s) as JSON or YAML instead.")(fn)


@click.command("ls", epilog="""\b
Examples:
  modelship ls
  modelship ls -A
  modelship ls -n models -o yaml
""")
@click.option("-A", "--all-namespaces", is_flag=True, help="List ModelDeployments in every namespace.")
@output_option
@kube_options
@user_errors
def ls_command(all_namespaces: bool, output: str | None, namespace: str | None, context: str | None,
               kubeconfig: str | None) -> None:
    """List ModelDeployments: phase, replicas ready, engine, quantization, revision, model name, age."""
    import datetime as dt

    from .render import dump, ls_table

    kube = Kube.connect(kubeconfig, context, namespace)
    api = kube.custom()
    if all_namespaces:
        found = api.list_cluster_custom_object(GROUP, VERSION, PLURAL)
    else:
        found = api.list_namespaced_custom_object(GROUP, VERSION, kube.namespace, PLURAL)
    items = sorted(found.get("items", []), key=lambda o: (o["metadata"].get("namespace", ""), o["metadata"]["name"]))
    if output:
        click.echo(dump({"apiVersion": "v1", "kind": "List", "items": items}, output))
    elif not items:
        click.echo("No ModelDeployments" + ("." if all_namespaces else f" in namespace {kube.namespace}."), err=True)
    else:
        console().print(ls_table(items, dt.datetime.now(dt.timezone.utc), all_namespaces))


@click.command("status", epilog="""\b
Examples:
  modelship status smollm2
  modelship status smollm2 --watch
  modelship status smollm2 --watch --wait --timeout 900
  modelship status smollm2 -o yaml
""")
@click.argument("name")
@output_option
@click.option("--watch", "-w", is_flag=True, help="Show it live until Ctrl-C.")
@click.option("--wait", is_flag=True, help="Return once it is Ready (exit 0) or Failed (exit 1).")
@click.option("--timeout", type=click.FloatRange(min=0), default=600, show_default=True,
              help="With --wait: give up after this many seconds (exit 4).")
@kube_options
@user_errors
def status_command(name: str, output: str | None, watch: bool, wait: bool, timeout: float,
                   namespace: str | None, context: str | None, kubeconfig: str | None) -> None:
    """Where a ModelDeployment stands: phase, conditions, the resolved model and its files,
    replicas, autoscaling, download progress and the endpoint to call."""
    from .render import dump, status_view

    kube = Kube.connect(kubeconfig, context, namespace)
    if wait:
        follow_live(kube, name, timeout)
        if not watch:
            console().print(status_view(must_get(kube, name)))
        return
    if watch:
        return watch_forever(kube, name)
    obj = must_get(kube, name)
    if output:
        click.echo(dump(obj, output))
    else:
        console().print(status_view(obj))


def watch_forever(kube: Kube, name: str) -> None:
    from rich.live import Live

    from .render import status_view

    try:
        with Live(console=console(), auto_refresh=False) as live:
            while True:
                live.update(status_view(must_get(kube, name)), refresh=True)
                time.sleep(POLL_SECONDS)
    except KeyboardInterrupt:
        pass


@click.command("delete", epilog="""\b
Examples:
  modelship delete smollm2
  modelship delete smollm2 --wait
""")
@click.argument("name")
@click.option("--wait", is_flag=True, help="Return once it is gone (with what the operator made for it).")
@click.option("--timeout", type=click.FloatRange(min=0), default=300, show_default=True,
              help="With --wait: give up after this many seconds (exit 4).")
@kube_options
@user_errors
def delete_command(name: str, wait: bool, timeout: float, namespace: str | None, context: str | None,
                   kubeconfig: str | None) -> None:
    """Delete a ModelDeployment (what the operator made for it goes with it)."""
    from kubernetes.client.exceptions import ApiException

    kube = Kube.connect(kubeconfig, context, namespace)
    try:
        kube.custom().delete_namespaced_custom_object(GROUP, VERSION, kube.namespace, PLURAL, name,
                                                      propagation_policy="Foreground" if wait else None)
    except ApiException as e:
        if e.status == 404:
            raise UserError(f"no ModelDeployment {name!r} in namespace {kube.namespace!r}", EXIT_NOT_FOUND) from None
        raise
    if wait:
        wait_gone(kube, name, timeout)
    click.echo(f"Deleted ModelDeployment {kube.namespace}/{name}" + (" (gone)" if wait else "") + ".")


def wait_gone(kube: Kube, name: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while get(kube, name) is not None:
        if time.monotonic() >= deadline:
            raise UserError(f"{name} is still there after {timeout:g}s (being deleted)", EXIT_TIMEOUT)
        time.sleep(POLL_SECONDS)


COMMANDS: list[Any] = [ls_command, status_command, delete_command]
