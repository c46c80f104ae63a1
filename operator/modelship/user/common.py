"""What the commands for people share.

- `kube_options`: `--context`, `-n/--namespace`, `--kubeconfig`, read as kubectl reads them
  (the current context and its namespace, else `default`); `Kube` is the API clients for them.
- `user_errors`: every failure a person can act on is one line (`Error: ...`) and an exit code
  scripts can trust (`EXIT_*`), never a traceback.
- `console()` / `err_console()`: rich consoles; colour only on a terminal (and never with
  `NO_COLOR`), which rich decides by itself.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from typing import Any, Callable

import click

# Exit codes: 0 done; 1 failed (the message says why); 2 bad usage (click's own);
# 3 not found (a ModelDeployment, a Hub repo, a router); 4 timed out waiting (`--wait`).
EXIT_FAILED, EXIT_USAGE, EXIT_NOT_FOUND, EXIT_TIMEOUT = 1, 2, 3, 4

GROUP, VERSION, PLURAL = "modelship.io", "v1alpha1", "modeldeployments"


class UserError(click.ClickException):
    """One line a person can act on, with an exit code of its own."""

    def __init__(self, message: str, code: int = EXIT_FAILED):
        super().__init__(message)
        self.exit_code = code


def user_errors(fn: Callable) -> Callable:
    """Known failures become one line; anything else too, with its type (no traceback)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from kubernetes.client.exceptions import ApiException
        from kubernetes.config.config_exception import ConfigException

        try:
            return fn(*args, **kwargs)
        except (click.ClickException, click.exceptions.Exit, click.Abort, KeyboardInterrupt):
            raise
        except ConfigException as e:
            raise UserError(f"no usable kubeconfig ({str(e).splitlines()[0]}); set KUBECONFIG or pass --kubeconfig, "
                            "and check `kubectl config current-context`") from None
        except ApiException as e:
            raise UserError(api_message(e), EXIT_NOT_FOUND if e.status == 404 else EXIT_FAILED) from None
        except OSError as e:
            raise UserError(f"{e.strerror or e}: {getattr(e, 'filename', '') or ''}".rstrip(": ")) from None
        except Exception as e:  # noqa: BLE001 - the promise: one line, never a traceback
            raise UserError(unexpected(e)) from None

    return wrapper


def unexpected(e: Exception) -> str:
    """A failure no branch above names: the cluster unreachable (urllib3's errors are not
    OSErrors), or anything else, said in one line with its type."""
    import urllib3

    if isinstance(e, urllib3.exceptions.HTTPError):
        reason = getattr(e, "reason", None) or e
        return (f"cannot reach the cluster's API server ({type(reason).__name__}: {str(reason).splitlines()[0]}); "
                "check `kubectl cluster-info`, or pass --context / --kubeconfig")
    first = (str(e).splitlines() or [""])[0]
    return f"{type(e).__name__}: {first}" if first else type(e).__name__


def api_message(e: Any) -> str:
    """The API server's own message of an ApiException (its Status body), or its reason."""
    import json

    try:
        body = json.loads(e.body or "{}")
    except ValueError:
        body = {}
    what = body.get("message") or e.reason or "error"
    if e.status == 404 and not body.get("details"):  # the resource type itself, not an object of it
        return (f"the API server does not serve it ({what}): is the ModelDeployment CRD installed? "
                "(`helm install` of the chart installs it, or `kubectl apply -f crds/`)")
    if e.status == 403:
        return f"the API server refused: {what} (ask your cluster's admin for that right)"
    if e.status in (0, None) or e.status >= 500:
        return f"the API server did not answer well ({e.status} {what}); is the cluster up?"
    return f"{what}"


def kube_options(fn: Callable) -> Callable:
    fn = click.option("--kubeconfig", envvar="KUBECONFIG", default=None, metavar="FILE",
                      help="Kubeconfig file (default: $KUBECONFIG, else ~/.kube/config).")(fn)
    fn = click.option("--context", default=None, help="Kubeconfig context (default: the current one).")(fn)
    fn = click.option("-n", "--namespace", default=None,
                      help="Namespace (default: the context's namespace, else `default`).")(fn)
    return fn


@dataclass
class Kube:
    namespace: str
    api_client: Any

    @classmethod
    def connect(cls, kubeconfig: str | None, context: str | None, namespace: str | None) -> "Kube":
        from kubernetes import client, config

        if os.environ.get("KUBERNETES_SERVICE_HOST") and not kubeconfig and not context:
            from ..login import api_client, in_cluster

            if in_cluster():
                ns_file = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"
                ns = namespace or (open(ns_file).read().strip() if os.path.exists(ns_file) else "default")
                return cls(ns, api_client())
        path = kubeconfig or None  # several files joined by ':' are merged, as kubectl merges them
        contexts, current = config.list_kube_config_contexts(config_file=path)
        chosen = next((c for c in contexts if c["name"] == context), None) if context else current
        if context and chosen is None:
            raise UserError(f"no context {context!r} in the kubeconfig; it has: "
                            f"{', '.join(c['name'] for c in contexts)}", EXIT_USAGE)
        ns = namespace or (chosen or {}).get("context", {}).get("namespace") or "default"
        api = config.new_client_from_config(config_file=path, context=context)
        return cls(ns, api)

    def custom(self):
        from kubernetes import client

        return client.CustomObjectsApi(self.api_client)

    def core(self):
        from kubernetes import client

        return client.CoreV1Api(self.api_client)


def console():
    from rich.console import Console

    return Console()


def err_console():
    from rich.console import Console

    return Console(stderr=True)
