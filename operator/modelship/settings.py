"""The operator's configuration: one typed object, read once at start-up.

Sources, later ones winning: the defaults below; a YAML file named by `MODELSHIP_CONFIG`
(a mounted ConfigMap, say); environment variables `MODELSHIP_<FIELD>` (nested fields with
`__`, for example `MODELSHIP_IMAGES__TGI`). Every field is documented in docs/configuration.md
("The operator's settings"), which is checked against this file by a test.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic.alias_generators import to_camel, to_snake
from pydantic_settings import (BaseSettings, EnvSettingsSource, NoDecode, PydanticBaseSettingsSource,
                               SettingsConfigDict)
from pydantic_settings.exceptions import SettingsError

from . import __version__


class PoolProfile(BaseModel):
    """A node pool: where serving pods of ModelDeployments that name it run."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    node_selector: dict[str, str] = Field(default_factory=dict, alias="nodeSelector",
                                          description="Node labels the pods require.")
    tolerations: list[dict[str, Any]] = Field(default_factory=list, description="Taints the pods tolerate.")
    affinity: dict[str, Any] | None = Field(None, description="Pod affinity rules (Kubernetes `Affinity`).")
    gpu_resource: str | None = Field(None, alias="gpuResource",
                                     description="Extended resource name of the pool's GPUs (for example "
                                                 "`nvidia.com/gpu`); unset for a CPU-only pool.")
    max_gpus: int | None = Field(None, alias="maxGpus", description="Most GPUs one node of the pool has.")
    resources: dict[str, dict[str, str]] = Field(
        default_factory=dict, description="Default `requests`/`limits` of serving containers in this pool.")


def default_pools() -> dict[str, PoolProfile]:
    gpu = "nvidia.com/gpu"
    return {
        "gpu": PoolProfile(node_selector={"modelship.io/pool": "gpu"}, gpu_resource=gpu, max_gpus=8,
                           tolerations=[{"key": gpu, "operator": "Exists", "effect": "NoSchedule"}],
                           resources={"requests": {"cpu": "4", "memory": "16Gi"}}),
        "cpu": PoolProfile(node_selector={"modelship.io/pool": "cpu"},
                           resources={"requests": {"cpu": "1", "memory": "1Gi"}}),
    }


class Images(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    tgi: str = Field("ghcr.io/huggingface/text-generation-inference:3.3.4", description="TGI's image.")
    llamacpp_cpu: str = Field("ghcr.io/ggml-org/llama.cpp:server", alias="llamacppCpu",
                              description="llama.cpp's server image for CPU pools.")
    llamacpp_cuda: str = Field("ghcr.io/ggml-org/llama.cpp:server-cuda", alias="llamacppCuda",
                               description="llama.cpp's server image for GPU pools.")
    vllm: str = Field("vllm/vllm-openai:v0.29.0", description="vLLM's image (its OpenAI-compatible server).")
    sglang: str = Field("lmsysorg/sglang:v0.5.20-cu130", description="SGLang's image.")
    modelship: str = Field(f"ghcr.io/modelship/modelship:{__version__}",
                           description="This project's image, for the download Jobs.")


class LeaderElection(BaseModel):
    """Leader election: several replicas of the operator, exactly one of them working."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    enabled: bool = Field(False, description="Work only while holding the Lease (the chart turns this on).")
    namespace: str | None = Field(None, description="The Lease's namespace; unset: the operator's own "
                                                    "(`POD_NAMESPACE`, which the chart sets).")
    lease_name: str = Field("modelship-operator", alias="leaseName", description="The Lease's name.")
    lease_seconds: int = Field(15, alias="leaseSeconds", ge=1,
                                 description="How long a standby waits, after it last saw the Lease change, "
                                             "before it takes over.")
    renew_deadline_seconds: int = Field(10, alias="renewDeadlineSeconds", ge=1,
                                          description="A leader that could not renew for this long stops working "
                                                      "(less than leaseSeconds).")
    retry_seconds: int = Field(2, alias="retrySeconds", ge=1,
                                 description="How often the leader renews and a standby tries.")


class AutoscalerSettings(BaseModel):
    """Where the autoscaler reads the load: the router replicas (docs/autoscaling.md)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    interval_seconds: float = Field(2.0, alias="intervalSeconds", ge=0.2, le=60,
                                    description="How often each router replica is asked for its load (a request "
                                                "for a model at zero is told at once, not at the next interval).")
    router_service: str | None = Field(None, alias="routerService",
                                       description="The router's Service: its EndpointSlices list the router "
                                                   "replicas to ask (the chart sets it).")
    router_namespace: str | None = Field(None, alias="routerNamespace",
                                         description="The router Service's namespace; unset: the operator's own "
                                                     "(`POD_NAMESPACE`).")
    router_urls: list[str] = Field(default_factory=list, alias="routerUrls",
                                   description="Routers to ask besides those of `routerService`, as base URLs (a "
                                               "router run outside the cluster).")


class YamlFile(PydanticBaseSettingsSource):
    """Values from a YAML settings file (camelCase or snake_case keys): `path`, or the file
    named by the environment variable `named_by` (the router's settings read one too)."""

    def __init__(self, settings_cls, path: str | None = None, named_by: str = "MODELSHIP_CONFIG"):
        super().__init__(settings_cls)
        self.path, self.named_by = path or os.environ.get(named_by), named_by

    def __call__(self) -> dict[str, Any]:
        path = self.path
        if not path:
            return {}
        try:
            data = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as e:
            raise ConfigError(f"cannot read the configuration file {path} ({self.named_by}): {e}") from e
        if not isinstance(data, dict):
            raise ConfigError(f"{path} ({self.named_by}) must hold a mapping of settings")
        return {to_snake(k): v for k, v in data.items()}  # the file may use camelCase, as the docs do

    def get_field_value(self, field, field_name):  # pragma: no cover - __call__ does the work
        return None, field_name, False


class ConfigError(Exception):
    """A configuration (the operator's, the router's) is unusable; the message says what to fix."""


# What Kubernetes puts in every pod's environment for each Service of its namespace (unless
# the pod sets enableServiceLinks: false): a Service `modelship-router` gives
# MODELSHIP_ROUTER_PORT=tcp://10.96.0.10:80, which reads like the router's `port` setting.
SERVICE_LINK = re.compile(r"^(tcp|udp|sctp)://[^/\s]+:[0-9]+$")


class Environment(EnvSettingsSource):
    """The environment's settings, never a Kubernetes service link."""

    def __call__(self) -> dict[str, Any]:
        return {k: v for k, v in super().__call__().items() if not (isinstance(v, str) and SERVICE_LINK.match(v))}


def describe(e: ValidationError) -> str:
    """The first error of a settings object, as `where: why` with the camelCase key."""
    first = e.errors()[0]
    where = ".".join(to_camel(str(p)) for p in first["loc"])
    return f"{where}: {first['msg'].removeprefix('Value error, ')}"  # (what a validator's ValueError says)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MODELSHIP_", env_nested_delimiter="__", extra="forbid",
                                      populate_by_name=True)

    namespaces: Annotated[list[str], NoDecode] = Field(default_factory=list,
                                  description="Namespaces to watch; empty watches the whole cluster.")
    hub_endpoint: str = Field(default_factory=lambda: os.environ.get("HF_ENDPOINT", "https://huggingface.co"),
                              description="Default Hugging Face Hub endpoint (or mirror) for `spec.model.endpoint`.")
    hub_ca_bundle: str | None = Field(
        None, description="PEM certificates to trust for the Hub endpoint besides the system's (a mirror with a "
                          "private CA): the operator uses them when it resolves, the download Jobs when they fetch.")
    default_token_secret: str | None = Field(
        None, description="Secret (in each ModelDeployment's namespace, key `token`) holding a Hugging Face token "
                          "for ModelDeployments without model.tokenSecretRef; where it does not exist, none is used.")
    follow_interval_seconds: int = Field(600, ge=5, description="How often ModelDeployments with "
                                                                 "model.revisionPolicy Follow ask the Hub whether "
                                                                 "their branch moved.")
    catalog_file: Path | None = Field(
        None,
        description="A YAML list of pre-resolved models (`status.resolved` entries, each with `repo` and "
                    "`revision`), used instead of asking the Hub: for air-gapped clusters and tests.")
    pools: dict[str, PoolProfile] = Field(default_factory=default_pools,
                                          description="Node-pool profiles, by name.")
    default_engine: Literal["tgi", "vllm", "sglang"] = Field(
        "tgi", description="Engine for safetensors models with `engine.type: auto` (GGUF models get llama.cpp). "
                           "It is chosen when a ModelDeployment is resolved: a change applies to those resolved "
                           "after it, not to the ones already serving.")
    default_gpu_pool: str = Field("gpu",
                                  description="Pool for TGI, vLLM and SGLang, and for ModelDeployments with "
                                              "`gpus` > 0.")
    default_cpu_pool: str = Field("cpu", description="Pool for the others.")
    download_pool: str | None = Field(None,
                                      description="Pool whose node selector and tolerations the download Jobs "
                                                  "use; unset: any node the scheduler picks.")
    images: Images = Field(default_factory=Images, description="Container images.")
    storage_margin_percent: int = Field(10, ge=0, le=1000,
                                        description="Volume size = files' total + this margin (at least 1Gi).")
    download_backoff_limit: int = Field(4, ge=0,
                                        description="Retries of a failed download pod before the Job fails.")
    download_deadline_seconds: int = Field(6 * 3600, ge=60,
                                           description="A download Job running longer than this fails.")
    max_concurrent_downloads: int = Field(32, ge=0,
                                          description="Download Jobs in flight in the cluster at once; the others "
                                                      "wait in line (DownloadQueued), first come first served. "
                                                      "0: no bound.")
    startup_timeout_seconds: int = Field(1800, ge=60,
                                         description="How long an engine may take to load the model before its "
                                                     "startup probe gives up and the pod restarts.")
    resync_seconds: float = Field(60, gt=0,
                                  description="Every ModelDeployment is reconciled at least this often, even "
                                              "without events.")
    api_in_flight: int = Field(0, ge=0, description="Most of the operator's requests in the API server at once (its "
                                                   "Service creations and pod log reads aside), to spare an API "
                                                   "server it shares; 0: no limit.")
    cache_reads: bool = Field(True, description="Reconciles read the children and ModelDeployments from the "
                                                "operator's watch cache instead of asking the API server each time.")
    metrics_port: int = Field(9090, description="Port of the Prometheus `/metrics`; 0: off.")
    health_port: int = Field(8081, description="Port of `/healthz` (alive, leading or standing by) and `/readyz`.")
    bind_host: str = Field("0.0.0.0", description="Address the metrics and health ports bind.")
    leader_election: LeaderElection = Field(default_factory=lambda: LeaderElection(),
                                            description="One active replica among several (a Lease).")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "INFO", description="The operator's log level (`DEBUG` adds Kopf's own activity).")
    autoscaler: AutoscalerSettings = Field(default_factory=lambda: AutoscalerSettings(),
                                           description="Where autoscaling reads the load.")
    field_manager: str = Field("modelship",
                               description="Server-side apply field manager of the objects the operator owns.")

    @classmethod
    def settings_customise_sources(cls, settings_cls, init_settings, env_settings, dotenv_settings,
                                   file_secret_settings):
        return init_settings, Environment(settings_cls), YamlFile(settings_cls)

    @field_validator("namespaces", mode="before")
    @classmethod
    def _split(cls, v):
        if isinstance(v, str):  # MODELSHIP_NAMESPACES=a,b
            return [s.strip() for s in v.split(",") if s.strip()]
        return v

    @field_validator("hub_ca_bundle")
    @classmethod
    def _pem(cls, v):
        if v:
            import ssl

            try:
                ssl.create_default_context().load_verify_locations(cadata=v)
            except ssl.SSLError as e:
                raise ValueError(f"not PEM certificates ({e.reason or e}); give the CA's PEM text") from None
        return v

    def check(self) -> "Settings":
        for name in (self.default_gpu_pool, self.default_cpu_pool):
            if name not in self.pools:
                raise ConfigError(f"default pool {name!r} is not among the configured pools "
                                  f"({', '.join(sorted(self.pools)) or 'none'}); add it under `pools`")
        if self.download_pool and self.download_pool not in self.pools:
            raise ConfigError(f"downloadPool {self.download_pool!r} is not among the configured pools "
                              f"({', '.join(sorted(self.pools))}); add it under `pools` or unset it")
        le = self.leader_election
        if le.enabled and not (le.namespace or os.environ.get("POD_NAMESPACE")):
            raise ConfigError("leaderElection.enabled needs the Lease's namespace: set leaderElection.namespace "
                              "or POD_NAMESPACE")
        if le.renew_deadline_seconds >= le.lease_seconds or le.retry_seconds >= le.renew_deadline_seconds:
            raise ConfigError("leaderElection needs retrySeconds < renewDeadlineSeconds < leaseSeconds "
                              f"(now {le.retry_seconds}, {le.renew_deadline_seconds}, {le.lease_seconds})")
        if self.pools[self.default_gpu_pool].gpu_resource is None:
            raise ConfigError(f"defaultGpuPool {self.default_gpu_pool!r} has no gpuResource; set one")
        return self


def load(**overrides: Any) -> Settings:
    try:
        return Settings(**overrides).check()
    except SettingsError as e:
        raise ConfigError(f"invalid operator setting: {e} (from MODELSHIP_* variables; nested values are JSON)") from e
    except ValidationError as e:
        raise ConfigError(f"invalid operator setting {describe(e)} (from MODELSHIP_CONFIG or MODELSHIP_* "
                          f"variables)") from e
