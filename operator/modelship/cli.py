"""The `modelship` command.

Subcommands of the product live here. Other installed distributions add their own
through the `modelship.commands` entry-point group (the test bed adds `testbed`), so the
product never imports them and works without them.

Each command imports what it runs inside its own body, on purpose: the operator, the router
and the Jobs' program load only their own dependencies (`modelship fetch` in a download Job
never imports Kopf or the kubernetes client), and `modelship --help` starts at once.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import click

from . import __version__


class PluginGroup(click.Group):
    """A click group whose extra subcommands come from entry points, loaded only when named."""

    def _plugins(self) -> dict:
        from importlib.metadata import entry_points  # (slow to import: only when a plugin is asked for)

        return {ep.name: ep for ep in entry_points(group="modelship.commands")}

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(self._plugins()))

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        cmd = super().get_command(ctx, name)
        if cmd is None and name in self._plugins():
            cmd = self._plugins()[name].load()
        return cmd


@click.group(cls=PluginGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="modelship")
def main() -> None:
    """Serve Hugging Face models on Kubernetes."""


def _register_user_commands() -> None:
    from .user import register

    register(main)


_register_user_commands()


@main.command()
def version() -> None:
    """Print the version."""
    click.echo(__version__)


def fail(message: str) -> None:
    """One line a person can act on, and a non-zero exit; no traceback."""
    raise click.ClickException(message)


@main.command()
@click.option("--namespace", "-n", "namespaces", multiple=True,
              help="Namespace to watch (repeatable). Default: the `namespaces` setting, or the whole cluster.")
@click.option("--verbose", "-v", is_flag=True, help="Log at DEBUG, Kopf's own activity too (as logLevel: DEBUG).")
def operator(namespaces: tuple[str, ...], verbose: bool) -> None:
    """Run the operator (reads its configuration from MODELSHIP_* and MODELSHIP_CONFIG)."""
    import asyncio

    from . import memory
    from .reconcile import handlers, run  # noqa: F401 - registers the Kopf handlers (slow: only here)
    from .reconcile.metrics import ControllerMetrics
    from .settings import ConfigError, load

    memory.limit_arenas()  # before any thread starts

    try:
        settings = load(**({"namespaces": list(namespaces)} if namespaces else {}))
    except ConfigError as e:
        fail(str(e))
    level = logging.DEBUG if verbose else getattr(logging, settings.log_level)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("kopf").setLevel(logging.INFO if level == logging.DEBUG else logging.WARNING)
    logging.getLogger("kubernetes").setLevel(logging.WARNING)
    metrics = ControllerMetrics()
    if settings.metrics_port:
        metrics.serve(settings.metrics_port, settings.bind_host)
    if asyncio.run(run.main(settings, metrics)):
        fail("the operator stopped: Kopf failed (see the log above)")


@main.command()
@click.option("--check", is_flag=True, help="Fail if the committed files differ from what the models generate.")
@click.option("--repo", "repo", type=click.Path(file_okay=False, exists=True), default=".",
              show_default=True, help="The repository's root.")
def crd(check: bool, repo: str) -> None:
    """Generate crds/ and the API reference in docs/reference.md from the API's pydantic models."""
    from . import crd as gen

    try:
        stale = gen.write(Path(repo), check)
    except ValueError as e:
        fail(str(e))
    if check and stale:
        fail(f"{', '.join(stale)} differ from operator/modelship/api.py; run `modelship crd` and commit the result")
    done = ", ".join(stale) or "crds/, charts/modelship/templates/crd.yaml, docs/reference.md"
    click.echo(("up to date: " if check or not stale else "wrote: ") + done)


@main.command()
@click.option("--repo", required=True, help="Hub repository, org/name.")
@click.option("--revision", required=True, help="Commit sha to fetch.")
@click.option("--endpoint", default=None, help="Hub endpoint (default: $HF_ENDPOINT or huggingface.co).")
@click.option("--dest", required=True, type=click.Path(file_okay=False), help="Root of the Hub cache layout.")
@click.option("--file", "files", multiple=True, metavar="SIZE:SHA256:PATH",
              help="A file to fetch: its size, its sha256 (may be empty) and its path in the repository.")
@click.option("--parallel", default=4, show_default=True, help="Files downloaded at once.")
@click.option("--prune", is_flag=True, help="Afterwards remove snapshots other than this one and --keep ones, "
                                            "and blobs nothing links to (a volume of one ModelDeployment's own).")
@click.option("--keep", "keep", multiple=True, metavar="REPO@SHA", help="A snapshot --prune keeps.")
@click.option("--user", default=None, metavar="NAMESPACE",
              help="Record on the volume that this namespace uses the snapshot (volumes shared across namespaces).")
def fetch(repo: str, revision: str, endpoint: str | None, dest: str, files: tuple[str, ...], parallel: int,
          prune: bool, keep: tuple[str, ...], user: str | None) -> None:
    """Put the given files of repo@revision under DEST in the Hub cache layout: verified,
    resumable, content-addressed. Progress goes to stdout as JSON lines."""
    from .weights import FetchError, download

    try:
        download(repo, revision, endpoint, dest, list(files), log=lambda m: click.echo(m, err=True), parallel=parallel,
            keep=list(keep) if prune else None, user=user)
    except FetchError as e:
        _terminate(e)


class RouterFlag(click.Option):
    """A flag over one of the router's settings: when it is not given, the setting stands
    (the settings file, MODELSHIP_ROUTER_*, or its default, which --help shows)."""

    def get_help_extra(self, ctx: click.Context):
        extra = super().get_help_extra(ctx)
        from .router.settings import RouterSettings  # (only for --help: start-up time)

        setting = RouterSettings.model_fields[self.name]
        if setting.default_factory is None and setting.default is not None:
            extra["default"] = str(setting.default)
        return extra


@main.command()
@click.option("--config", type=click.Path(exists=True, dir_okay=False), default=None,
              help="The router's settings file (YAML; docs/configuration.md). Default: $MODELSHIP_ROUTER_CONFIG. "
                   "MODELSHIP_ROUTER_* variables and the flags below override it.")
@click.option("--static", cls=RouterFlag, type=click.Path(exists=True, dir_okay=False),
              help="A YAML file of models and their endpoints (benchmarks, tests, a router outside a cluster).")
@click.option("--host", cls=RouterFlag, help="Address to listen on.")
@click.option("--port", cls=RouterFlag, type=int, help="Port to listen on.")
@click.option("--api-keys-file", cls=RouterFlag, type=click.Path(exists=True, dir_okay=False),
              help="Accept only requests with one of these keys (a mounted Secret): a YAML mapping of caller names "
                   "to keys, or one key per line. The file is followed: changed keys apply within about 10 s.")
@click.option("--max-body-bytes", cls=RouterFlag, type=int, help="Larger request bodies get 413.")
@click.option("--header-timeout", cls=RouterFlag, type=float,
              help="Seconds a request's head may take to arrive (408 after, and the connection closed).")
@click.option("--body-timeout", cls=RouterFlag, type=float,
              help="Seconds a request's body may take to arrive (408 after).")
@click.option("--connect-timeout", cls=RouterFlag, type=float, help="Seconds to connect to an endpoint.")
@click.option("--first-byte-timeout", cls=RouterFlag, type=float,
              help="Seconds to wait for an endpoint's answer to begin (504 after).")
@click.option("--idle-timeout", cls=RouterFlag, type=float,
              help="Seconds between two chunks of an answer before it is ended.")
@click.option("--retries", cls=RouterFlag, type=int, help="Other endpoints tried before the first byte.")
@click.option("--hold-max-requests", cls=RouterFlag, type=int,
              help="Requests held at once for a model at zero replicas while it wakes (429 after).")
@click.option("--hold-max-seconds", cls=RouterFlag, type=float,
              help="Seconds a request is held for a model at zero replicas to wake (503 after).")
@click.option("--hold-keepalive-seconds", cls=RouterFlag, type=float,
              help="Seconds between the SSE comments a held streamed request gets while it waits.")
@click.option("--drain-seconds", cls=RouterFlag, type=int, help="On SIGTERM, time given to open requests.")
@click.option("--namespace", "-n", "namespaces", cls=RouterFlag, multiple=True,
              help="Serve the ModelDeployments of this namespace (repeatable; default: all namespaces).")
@click.option("--scrape-interval", cls=RouterFlag, type=float,
              help="Seconds between scrapes of the engines' queue metrics (0: never).")
@click.option("--allow-cidr", "allow_cidrs", cls=RouterFlag, multiple=True,
              help="Send requests only to endpoints in this network (repeatable; default: any). The test bed "
                   "uses 127.0.0.0/8: its kwok pods report addresses nothing may be sent to.")
def router(**flags) -> None:
    """Serve the OpenAI and TGI APIs in front of the models, balancing over their endpoints."""
    from kubernetes.config import ConfigException

    from .router.server import from_settings, serve
    from .router.settings import ConfigError, load

    try:
        settings = load(**{k: list(v) if isinstance(v, tuple) else v for k, v in flags.items() if v not in (None, ())})
    except ConfigError as e:
        fail(str(e))
    try:
        app = from_settings(settings)
    except (OSError, ValueError, ConfigException) as e:
        fail(f"cannot start the router: {e}")
    source = (f"{len(app.registry.targets)} models from {settings.static}" if settings.static else
              f"ModelDeployments of {', '.join(settings.namespaces) or 'all namespaces'}")
    click.echo(f"modelship router on http://{settings.host}:{settings.port} ({source})", err=True)
    serve(app, settings.host, settings.port, settings.drain_seconds, header_timeout=settings.header_timeout)


@main.command()
@click.option("--dest", required=True, type=click.Path(file_okay=False), help="Root of the Hub cache layout.")
@click.option("--keep", "keep", multiple=True, metavar="REPO@SHA", help="A snapshot to keep (all others go).")
@click.option("--user", default=None, metavar="NAMESPACE",
              help="This namespace's records of snapshots not kept go; other namespaces' keep theirs.")
def collect(dest: str, keep: tuple[str, ...], user: str | None) -> None:
    """Remove from DEST every snapshot not kept (nor used by another namespace) and the blobs
    only they used. Waits for the downloads on the volume to finish first; downloads wait for
    it in turn."""
    from .weights import FetchError, collect as run_collect

    try:
        run_collect(dest, list(keep), log=lambda m: click.echo(m, err=True), user=user)
    except FetchError as e:
        _terminate(e)


def _terminate(e: Exception) -> None:
    try:  # in a pod, the kubelet's termination-message file: the condition quotes it
        fd = os.open("/dev/termination-log", os.O_WRONLY | os.O_TRUNC)  # never created here
        with os.fdopen(fd, "w") as f:
            f.write(f"Error: {e}\n")
    except OSError:
        pass
    error = click.ClickException(str(e))
    error.exit_code = getattr(e, "exit_code", 1)  # the download Job's podFailurePolicy reads it (a full volume)
    raise error
