"""The router's settings: one typed object, read once at start-up.

Sources, later ones winning: the defaults below; a YAML file named by `--config` or
`MODELSHIP_ROUTER_CONFIG` (the Helm chart mounts one); environment variables
`MODELSHIP_ROUTER_<FIELD>`; the flags of `modelship router`. Every field is documented in
docs/configuration.md ("The router's settings"), which a test checks against this file.

`Limits` are the settings forwarding reads; the router copies them into plain attributes
once (a pydantic attribute costs more to read, and the hot path reads them per request).
"""

from __future__ import annotations

import ipaddress
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic.alias_generators import to_camel
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from pydantic_settings.exceptions import SettingsError

from ..settings import ConfigError, Environment, YamlFile, describe

ENV_PREFIX = "MODELSHIP_ROUTER_"
CONFIG_VARIABLE = f"{ENV_PREFIX}CONFIG"


class Limits(BaseModel):
    """What a request may send and how long an endpoint may take: forwarding's settings."""

    model_config = ConfigDict(extra="forbid")

    max_body_bytes: int = Field(8 << 20, ge=1, description="Larger request bodies are refused with 413.")
    body_timeout: float = Field(30.0, gt=0, description="Seconds a request's body may take to arrive (a client "
                                                         "that sends it slowly, or stops); 408 after.")
    connect_timeout: float = Field(5.0, gt=0, description="Seconds to connect to an endpoint.")
    first_byte_timeout: float = Field(300.0, gt=0, description="Seconds an endpoint's answer may take to begin "
                                                                "(a long prompt's prefill, a cold engine); 504 after.")
    idle_timeout: float = Field(120.0, gt=0, description="Seconds between two chunks of an answer before it is "
                                                         "ended.")
    retries: int = Field(2, ge=0, description="Other endpoints tried before the first byte, after a connect "
                                              "error or a 429, 502 or 503 answer.")
    retry_budget: float = Field(10.0, gt=0, description="Seconds within which retries may start, from the "
                                                        "request's arrival.")
    retry_after: int = Field(5, ge=0, description="Seconds a client is told to wait (`Retry-After`) when a model "
                                                  "has no ready endpoint.")
    hold_max_requests: int = Field(256, ge=1, description="Requests held at once for a model at zero replicas "
                                                          "while it wakes; the next one gets 429.")
    hold_max_seconds: float = Field(300.0, gt=0, description="Seconds a request is held for a model at zero "
                                                             "replicas to wake; 503 after.")
    hold_keepalive_seconds: float = Field(10.0, gt=0, description="Seconds between the SSE comments a held "
                                                                  "streamed request gets while it waits.")


class LimitSettings(BaseModel):
    """Limits of one caller (an API key's name) or one model (all callers together)."""

    model_config = ConfigDict(extra="forbid", alias_generator=to_camel, populate_by_name=True)

    requests_per_minute: int | None = Field(None, ge=1, description="Requests per minute.")
    tokens_per_minute: int | None = Field(None, ge=1, description="Prompt plus generated tokens per minute.")
    concurrent_requests: int | None = Field(None, ge=1, description="Requests open at once.")


class CallerSettings(LimitSettings):
    """What one caller may call, and how much."""

    models: list[str] = Field(default_factory=lambda: ["*"], description="Model names, aliases, tasks or globs "
                                                                         "(`team-a/*`, `llama-*`) it may call.")


class RouterSettings(Limits, BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid", populate_by_name=True)

    config: str | None = Field(None, description="The settings file (YAML, camelCase keys); from `--config` or "
                                                 "the environment only.")
    static: str | None = Field(None, description="A YAML file of models and their endpoints, served instead of "
                                                 "the cluster's ModelDeployments (benchmarks, tests, a router "
                                                 "outside a cluster).")
    host: str = Field("0.0.0.0", description="Address to listen on.")
    port: int = Field(8000, ge=0, le=65535, description="Port to listen on.")
    header_timeout: float = Field(10.0, gt=0, description="Seconds a request's head (its request line and "
                                                          "headers) may take to arrive; 408 after, and the "
                                                          "connection is closed (a client that trickles headers).")
    api_keys_file: str | None = Field(None, description="Accept only requests with one of these keys (a mounted "
                                                        "Secret): a YAML mapping of caller names to keys, or one key "
                                                        "per line. The file is followed: changed keys apply within "
                                                        "about 10 s.")
    drain_seconds: int = Field(30, ge=0, description="On SIGTERM, time given to open requests.")
    namespaces: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Serve the ModelDeployments of these namespaces; empty: all namespaces.")
    scrape_interval: float = Field(1.0, ge=0, description="Seconds between scrapes of the engines' queue "
                                                          "metrics; 0: never.")
    allow_cidrs: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Send requests only to endpoints in these networks; empty: any.")
    callers: dict[str, CallerSettings] = Field(
        default_factory=dict, description="Per caller (an API key's name in `apiKeysFile`): the models it may "
                                          "call and its limits. Reloaded with the settings file.")
    default_caller: CallerSettings = Field(
        default_factory=CallerSettings, description="What a key not named in `callers` may do (and every request "
                                                    "when there are no keys). Default: every model, no limit.")
    model_limits: dict[str, LimitSettings] = Field(
        default_factory=dict, description="Per model (its name, `namespace/name` or a glob): limits over all "
                                          "callers together. Reloaded with the settings file.")
    peers: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="The other router replicas' base URLs, which share the limits' counters "
                                          "(a router outside a cluster); see `peersService`.")
    peers_service: str | None = Field(
        None, description="`namespace/name` of the router's own Service: its ready endpoints are the replicas that "
                          "share the limits' counters (the chart sets it).")
    peer_interval: float = Field(1.0, gt=0, description="Seconds between two reads of each peer's counters: the "
                                                       "limits' error across replicas is at most this much of the "
                                                       "others' traffic.")
    access_log: bool = Field(True, description="One JSON line per inference request on stderr (its id, caller, "
                                               "model, endpoint, status, times and tokens; no prompt, no key).")

    @classmethod
    def settings_customise_sources(cls, settings_cls, init_settings, env_settings, dotenv_settings,
                                   file_secret_settings):
        given = init_settings.init_kwargs.get("config")  # --config
        file = _File(settings_cls, given, "--config") if given else _File(settings_cls, None, CONFIG_VARIABLE)
        return init_settings, Environment(settings_cls), file

    @field_validator("namespaces", "allow_cidrs", "peers", mode="before")
    @classmethod
    def _split(cls, v):
        if isinstance(v, str):  # MODELSHIP_ROUTER_NAMESPACES=a,b
            return [s.strip() for s in v.split(",") if s.strip()]
        return v

    @field_validator("allow_cidrs")
    @classmethod
    def _networks(cls, v: list[str]) -> list[str]:
        for n in v:
            ipaddress.ip_network(n, strict=False)  # raises ValueError, which says what is wrong
        return v


class _File(YamlFile):
    """The settings file, which cannot name another."""

    def __call__(self) -> dict[str, Any]:
        values = super().__call__()
        if "config" in values:
            raise ConfigError(f"{self.path}: `config` names the settings file; it cannot be set inside it")
        return values


def load(**values: Any) -> RouterSettings:
    """The settings: `values` (the flags given, `config` included) over the environment over
    the file over the defaults. Raises ConfigError, in one line."""
    try:
        return RouterSettings(**values)
    except SettingsError as e:
        raise ConfigError(f"invalid router setting: {e} (from {ENV_PREFIX}* variables)") from e
    except ValidationError as e:
        raise ConfigError(f"invalid router setting {describe(e)} (from the flags, {ENV_PREFIX}* variables or the "
                          f"settings file)") from e

