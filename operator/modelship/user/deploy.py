"""`modelship deploy REPO[@REVISION]`: a ModelDeployment from flags, built and checked with the
operator's own API models (operator/modelship/api.py) before the API server sees it.

The API server enforces the CRD's CEL rules; pydantic does not run them. So `check` runs here
the ones a flag can break: the string patterns, read from the models' own rules (one source),
and the cross-field rules, restated with the flag to change. Each failure is one line naming
the flag (exit 2), never a traceback.
"""

from __future__ import annotations

import re
from typing import Any

import click

from ..api import ENGINE_NAMES, GPU_ENGINES, MD_NAME, MD_NAME_MAX
from .common import EXIT_FAILED, EXIT_USAGE, GROUP, PLURAL, VERSION, Kube, UserError, kube_options, user_errors

# crd.py's rule on metadata.name: it names the Service, Deployment and download Job.
NAME_PATTERN, NAME_MAX = MD_NAME, MD_NAME_MAX
# The serving.quantize methods (TGI's, vLLM's, SGLang's); any other --quant picks a GGUF file.
FLAGS = {"model.repo": "REPO", "model.revision": "REPO@REVISION", "model.quantization": "--quant",
         "serving.quantize": "--quant", "engine.type": "--engine", "gpus": "--gpus", "pool": "--pool",
         "replicas": "--replicas", "minReplicas": "--min-replicas", "maxReplicas": "--max-replicas",
         "router.aliases": "--alias", "metadata.name": "--name"}


def split_ref(ref: str) -> tuple[str, str | None]:
    """`org/name@rev` -> (`org/name`, `rev`); no `@`: no revision (the API's default, `main`)."""
    repo, _, revision = ref.partition("@")
    return repo.strip(), (revision.strip() or None)


def derive_name(repo: str) -> str:
    """A ModelDeployment name from a repo: its last part, lower-case, other characters as '-',
    starting with a letter, at most 48 characters (`TheBloke/Mistral-7B-Instruct-v0.2-GGUF` ->
    `mistral-7b-instruct-v0-2-gguf`)."""
    base = repo.rstrip("/").rsplit("/", 1)[-1].lower()
    name = re.sub(r"-+", "-", re.sub(r"[^a-z0-9-]", "-", base))
    name = re.sub(r"^[^a-z]+", "", name)[:NAME_MAX].rstrip("-")
    return name or "model"


def quantizations(engine: str) -> tuple[str, ...]:
    """The serving.quantize values `engine` takes."""
    from ..api import QUANTIZE_ENGINES

    return tuple(q for q, has in QUANTIZE_ENGINES.items() if engine in has)


def serving_quantizations() -> tuple[str, ...]:
    from typing import get_args

    from ..api import ServingSpec

    annotation = ServingSpec.model_fields["quantize"].annotation
    return tuple(v for arg in get_args(annotation) for v in get_args(arg))


def spec_dict(repo: str, revision: str | None, quant: str | None, engine: str, gpus: int | None,
              pool: str | None, replicas: int | None, min_replicas: int | None, max_replicas: int | None,
              aliases: tuple[str, ...]) -> dict:
    """The spec as the flags set it (camelCase); what is not set keeps the API's default."""
    model: dict[str, Any] = {"repo": repo}
    spec: dict[str, Any] = {"model": model}
    if revision:
        model["revision"] = revision
    if quant and quant.lower() in serving_quantizations():
        spec["serving"] = {"quantize": quant.lower()}
    elif quant:
        model["quantization"] = quant
    if engine != "auto":
        spec["engine"] = {"type": engine}
    optional = {"gpus": gpus, "pool": pool, "replicas": replicas, "minReplicas": min_replicas,
                "maxReplicas": max_replicas}
    spec.update({k: v for k, v in optional.items() if v is not None})
    if aliases:
        spec["router"] = {"aliases": list(aliases)}
    return spec


def apply_sets(spec: dict, sets: tuple[str, ...]) -> dict:
    """`--set serving.chatTemplate=chatml`: any other spec field, by its API path (camelCase,
    dots), the value read as YAML (`2048` a number, `true` a boolean, `[a, b]` a list)."""
    import yaml

    for item in sets:
        path, eq, raw = item.partition("=")
        keys = path.strip().split(".")
        if not eq or not all(keys):
            raise UserError(f"--set {item!r}: write FIELD=VALUE with the spec's field path, for example "
                            "--set serving.contextLength=4096", EXIT_USAGE)
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            value = raw
        node = spec
        for key in keys[:-1]:
            child = node.setdefault(key, {})
            if not isinstance(child, dict):
                raise UserError(f"--set {item!r}: {key} is not an object", EXIT_USAGE)
            node = child
        node[keys[-1]] = value
    return spec


def string_rules(model: Any) -> dict[str, list[tuple[str, str | None, str]]]:
    """A model's `self.matches('...')` rules (and `!self.contains('..')`), by field (camelCase),
    as (pattern, forbidden substring, message); list items' rules under the list's name."""
    found: dict[str, list] = {}
    form = re.compile(r"^self\.matches\('(.+?)'\)(?: && !self\.contains\('(.+?)'\))?$")
    for field, node in model.model_json_schema(by_alias=True).get("properties", {}).items():
        for r in node.get("x-kubernetes-validations", []) + node.get("items", {}).get("x-kubernetes-validations", []):
            m = form.match(r["rule"])
            if m:
                found.setdefault(field, []).append((m.group(1), m.group(2), r["message"]))
    return found


def pattern_errors(spec: dict) -> list[str]:
    from ..api import ModelDeploymentSpec, ModelSource, RouterSpec

    errors = []
    for where, model, values in (("model", ModelSource, spec["model"]), ("", ModelDeploymentSpec, spec),
                                 ("router", RouterSpec, spec.get("router") or {})):
        for field, checks in string_rules(model).items():
            value = values.get(field)
            for item in (value if isinstance(value, list) else [value] if isinstance(value, str) else []):
                for pattern, forbidden, message in checks:
                    if not re.search(pattern, item) or (forbidden and forbidden in item):
                        errors.append(f"{FLAGS.get(f'{where}.{field}'.lstrip('.'), field)} {item!r}: {message}")
    return errors


def cross_field_errors(spec: dict) -> list[str]:
    """The CRD's cross-field rules that the flags can break (api.py ModelDeploymentSpec)."""
    low, high, replicas = spec.get("minReplicas"), spec.get("maxReplicas"), spec.get("replicas", 1)
    engine = (spec.get("engine") or {}).get("type")
    quantize = (spec.get("serving") or {}).get("quantize")
    checks = [
        (low is not None and high is not None and low > high,
         f"--min-replicas {low} must not exceed --max-replicas {high}"),
        (low is not None and high is None, "--min-replicas needs --max-replicas (which turns autoscaling on)"),
        (high is not None and replicas > high, f"--replicas {replicas} must be at most --max-replicas {high}"),
        (engine in GPU_ENGINES and "quantization" in spec["model"],
         f"--quant {spec['model'].get('quantization')} picks a GGUF file, which {ENGINE_NAMES.get(engine)} cannot "
         f"serve: use --engine llamacpp, or one of {ENGINE_NAMES.get(engine)}'s formats "
         f"({', '.join(quantizations(engine))})"),
        (engine in ("vllm", "sglang") and quantize not in (None, *quantizations(engine)),
         f"--quant {quantize}: {ENGINE_NAMES.get(engine)} takes "
         f"{', '.join(quantizations(engine))}"),
        (engine == "llamacpp" and "quantize" in (spec.get("serving") or {}),
         "--quant: TGI's, vLLM's and SGLang's quantization formats need --engine tgi, vllm or sglang; llama.cpp "
         "takes a GGUF tag such as Q4_K_M"),
        (engine in GPU_ENGINES and spec.get("gpus") == 0,
         f"--gpus 0: {ENGINE_NAMES.get(engine)} needs at least one GPU; use --engine llamacpp"),
    ]
    return [message for broken, message in checks if broken]


def build(name: str, namespace: str | None, spec: dict) -> dict:
    """The ModelDeployment, checked as the API server would check it; UserError (exit 2) naming
    the flag to fix otherwise."""
    from pydantic import ValidationError

    from ..api import API_VERSION, KIND, ModelDeploymentSpec

    try:
        checked = ModelDeploymentSpec.model_validate(spec)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"] if not isinstance(p, int))
        raise UserError(f"{FLAGS.get(where, where)}: {first['msg']}", EXIT_USAGE) from None
    errors = pattern_errors(spec) + cross_field_errors(spec)
    if not re.match(NAME_PATTERN, name) or len(name) > NAME_MAX:
        errors.append(f"--name {name!r}: must start with a lower-case letter, hold only lower-case letters, digits "
                      f"and '-', and be at most {NAME_MAX} characters")
    if errors:
        raise UserError(errors[0], EXIT_USAGE)
    metadata = {"name": name, **({"namespace": namespace} if namespace else {})}
    return {"apiVersion": API_VERSION, "kind": KIND, "metadata": metadata,
            "spec": checked.model_dump(by_alias=True, exclude_unset=True, mode="json")}


def create(kube: Kube, obj: dict) -> None:
    from kubernetes.client.exceptions import ApiException

    name = obj["metadata"]["name"]
    try:
        kube.custom().create_namespaced_custom_object(GROUP, VERSION, kube.namespace, PLURAL, obj)
    except ApiException as e:
        if e.status == 409:
            raise UserError(f"a ModelDeployment named {name!r} exists in namespace {kube.namespace!r}: choose "
                            f"another with --name, or `modelship delete {name}` first", EXIT_FAILED) from None
        raise


@click.command("deploy", epilog="""\b
Examples:
  modelship deploy HuggingFaceTB/SmolLM2-135M-Instruct-GGUF --quant Q4_K_M
  modelship deploy HuggingFaceTB/SmolLM2-135M-Instruct-GGUF --wait --timeout 900
  modelship deploy Qwen/Qwen2.5-0.5B-Instruct@main --engine tgi --gpus 1 --pool gpu
  modelship deploy Qwen/Qwen2.5-7B-Instruct --engine vllm --gpus 2 --set serving.contextLength=8192
  modelship deploy TheBloke/Mistral-7B-Instruct-v0.2-GGUF --name mistral --alias mistral-7b \\
      --min-replicas 0 --max-replicas 3
  modelship deploy HuggingFaceTB/SmolLM2-135M-Instruct-GGUF --set serving.chatTemplate=chatml \\
      --set serving.contextLength=2048
  modelship deploy HuggingFaceTB/SmolLM2-135M-Instruct-GGUF --dry-run -o yaml > smollm2.yaml

\b
Exit codes: 0 done; 1 failed (the name exists, or it went Failed with --wait);
2 bad flags; 4 --wait timed out.
""")
@click.argument("ref", metavar="REPO[@REVISION]")
@click.option("--quant", default=None, help="GGUF quantization (Q4_K_M, Q8_0, a .gguf file), or TGI's, vLLM's "
                                            "or SGLang's (awq, gptq, fp8, bitsandbytes, ...).")
@click.option("--engine", type=click.Choice(["auto", "tgi", "vllm", "sglang", "llamacpp"]), default="auto",
              show_default=True, help="auto: llama.cpp for GGUF, the operator's defaultEngine (TGI unless the "
                                      "admin chose vLLM or SGLang) for safetensors.")
@click.option("--gpus", type=int, default=None, help="GPUs per replica (default: 1 for TGI, vLLM and SGLang, 0 for "
                                                     "llama.cpp).")
@click.option("--pool", default=None, help="Node pool from the operator's configuration.")
@click.option("--replicas", type=int, default=None, help="Serving replicas (default 1).")
@click.option("--min-replicas", type=int, default=None, help="Autoscaling: fewest replicas (0 lets it sleep).")
@click.option("--max-replicas", type=int, default=None, help="Autoscaling: most replicas; turns autoscaling on.")
@click.option("--name", default=None, help="ModelDeployment name (default: from the repo's name).")
@click.option("--alias", "aliases", multiple=True, help="Another model name for requests (repeatable).")
@click.option("--set", "sets", multiple=True, metavar="FIELD=VALUE",
              help="Any other spec field by its path, e.g. serving.chatTemplate=chatml (repeatable).")
@click.option("--dry-run", is_flag=True, help="Print the ModelDeployment; create nothing.")
@click.option("-o", "--output", type=click.Choice(["yaml", "json"]), default="yaml", show_default=True,
              help="With --dry-run: the format.")
@click.option("--wait", is_flag=True, help="Follow it to Ready with a live view.")
@click.option("--timeout", type=click.FloatRange(min=0), default=1800, show_default=True,
              help="With --wait: give up after this many seconds (exit 4).")
@kube_options
@user_errors
def deploy_command(ref: str, quant: str | None, engine: str, gpus: int | None, pool: str | None,
                   replicas: int | None, min_replicas: int | None, max_replicas: int | None, name: str | None,
                   aliases: tuple[str, ...], sets: tuple[str, ...], dry_run: bool, output: str, wait: bool,
                   timeout: float, namespace: str | None, context: str | None, kubeconfig: str | None) -> None:
    """Serve a Hugging Face model: create a ModelDeployment for REPO (at REVISION: a branch, tag
    or commit; default main)."""
    repo, revision = split_ref(ref)
    spec = apply_sets(spec_dict(repo, revision, quant, engine, gpus, pool, replicas, min_replicas, max_replicas,
                                aliases), sets)
    name = name or derive_name(repo)
    if dry_run:
        from .render import dump

        click.echo(dump(build(name, namespace, spec), output))
        return
    kube = Kube.connect(kubeconfig, context, namespace)
    obj = build(name, kube.namespace, spec)
    create(kube, obj)
    click.echo(f"Created ModelDeployment {kube.namespace}/{name} ({repo}@{revision or 'main'}).")
    if wait:
        from .render import endpoint_lines
        from .watch import follow_live

        from .common import console

        ready = follow_live(kube, name, timeout)
        if console().is_terminal:
            return  # the live view's last frame shows the endpoint
        for line in endpoint_lines(ready):
            console().print(line, highlight=False, markup=line.startswith("[bold]"))
    else:
        click.echo(f"Follow it with `modelship status {name} --watch`.")


COMMANDS: list[Any] = [deploy_command]
