"""`modelship testbed ...`: registered as a plugin of the `modelship` command."""

from __future__ import annotations

import functools
import os
import sys
import time

import click

from . import argocd, binaries, cluster
from .paths import kubeconfig_path


def one_line_errors(fn):
    """Errors a person can act on come out as one line, not a traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (cluster.TestbedError, binaries.BuildError, argocd.ArgoCDError) as e:
            raise click.ClickException(str(e)) from None

    return wrapper


def _log(msg: str) -> None:
    click.echo(msg, err=True)


@click.group()
def testbed() -> None:
    """A local Kubernetes cluster for modelship, built and run offline.

    A real etcd, kube-apiserver, kube-controller-manager and kube-scheduler on 127.0.0.1;
    kwok node pools (gpu, cpu); a local node whose pods run as local processes; and an
    offline Hub mirror (olah) serving SmolLM2.
    """


@testbed.command()
@click.option("--gpu-nodes", default=2, show_default=True, help="kwok nodes in the gpu pool (0-5000).")
@click.option("--cpu-nodes", default=0, show_default=True, help="kwok nodes in the cpu pool (0-5000).")
@click.option("--local-node/--no-local-node", default=True, show_default=True,
              help="Run the process-backed node whose pods really run.")
@click.option("--local-gpus", default=0, show_default=True,
              help="Declare the local node a GPU node with this many fake nvidia.com/gpu (joins the gpu pool).")
@click.option("--images", "images_file", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Image-to-program mapping for the local node (default: the one shipped with the test bed).")
@click.option("--timeout", default=180.0, show_default=True, help="Seconds to wait for the cluster.")
@click.option("--argocd", is_flag=True, help="Also run Argo CD (repo server, application controller, Redis) and a "
                                             "git daemon on loopback; also on a test bed that is already up.")
@one_line_errors
def up(gpu_nodes: int, cpu_nodes: int, local_node: bool, local_gpus: int, images_file: str | None,
       timeout: float, argocd: bool) -> None:
    """Start the test bed (or resize its node pools if it is already up)."""
    cluster.up(cluster.UpOptions(gpu_nodes, cpu_nodes, local_node, local_gpus, images_file, timeout), _log)
    if argocd:
        from . import argocd as argocd_mod

        argocd_mod.up(_log)


@testbed.command()
@click.option("--keep-data", is_flag=True, help="Keep etcd data, volumes and logs for the next `up`.")
@one_line_errors
def down(keep_data: bool) -> None:
    """Stop every process of the test bed."""
    cluster.down(keep_data, _log)


@testbed.command()
def status() -> None:
    """Show what runs."""
    for line in cluster.status_lines():
        click.echo(line)


@testbed.command()
def env() -> None:
    """Print the shell line that points kubectl (and tests) at the test bed: eval "$(modelship testbed env)"."""
    click.echo(f"export KUBECONFIG={kubeconfig_path()}")
    from .config import TestbedConfig

    cfg = TestbedConfig.load() if (kubeconfig_path().parent / "config.json").exists() else TestbedConfig()
    if cfg.hub_mirror:
        click.echo(f"export HF_ENDPOINT=http://127.0.0.1:{cfg.ports.hub_mirror}")
    kubectl = binaries.find("kubectl")
    if kubectl:
        click.echo(f"export PATH={kubectl.parent}:$PATH")


@testbed.command()
@click.argument("components", nargs=-1, type=click.Choice(sorted(binaries.COMPONENTS)))
@one_line_errors
def build(components: tuple[str, ...]) -> None:
    """Build (or find) the test bed's binaries and fetch its model (SmolLM2's GGUF); all of them by default."""
    start = time.monotonic()
    spent = binaries.ensure_all(list(components) or None, _log)
    for name, secs in spent.items():
        comp = binaries.COMPONENTS[name]
        where = ", ".join(str(binaries.find(b)) for b in comp.binaries)
        _log(f"  {name} {comp.version}: {'built in %.0fs' % secs if secs else 'ready'} ({where})")
    _log(f"binaries and model ready in {time.monotonic() - start:.0f}s")


@click.command()
@click.option("--hub-mirror", metavar="URL", help="A Hub for the operator instead of the test bed's mirror "
                                                  "(the tests use the mirror behind a slow link).")
@one_line_errors
def demo(hub_mirror: str | None) -> None:
    """The whole path on a local cluster: test bed, Hub mirror, operator, examples/smollm2.yaml
    served by llama.cpp, and a real answer."""
    from . import demo as demo_mod

    demo_mod.run(_log, hub_mirror=hub_mirror)


testbed.add_command(demo)  # `modelship demo` and `modelship testbed demo` are the same


@testbed.command(context_settings={"ignore_unknown_options": True})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
@one_line_errors
def kubectl(args: tuple[str, ...]) -> None:
    """Run the test bed's kubectl (same version as the API server) against the test bed."""
    path = binaries.path("kubectl", _log)
    os.environ["KUBECONFIG"] = str(kubeconfig_path())
    os.execv(str(path), [str(path), *args])
    sys.exit(1)  # not reached
