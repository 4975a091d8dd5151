"""Process settings: one `Settings`, read once.

Sources, strongest first: environment variables (`COMFYFLEET_` prefix, nested with `__`, e.g.
`COMFYFLEET_ROUTING__STRATEGY=round_robin`), the YAML config file (`comfyfleet.yaml` at the repo
root, or the path in `COMFYFLEET_CONFIG`), then the defaults below.

Shared infrastructure (the node registry, database credentials) lives in Prefect blocks; per-run
input lives in flow parameters. This module holds only what a process needs to start.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping, Sequence
from contextvars import ContextVar
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import yaml
from limits import parse_many
from pydantic import BaseModel, Field, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
"""The checkout ComfyFleet runs from; `var/` (runtime data) and `workflows/` live here."""

Strategy = Literal[
    "least_loaded", "round_robin", "random", "weighted", "priority_based", "model_aware"
]


PoolType = Literal["comfyfleet", "docker"]


_config_file: ContextVar[Path | None] = ContextVar("comfyfleet_config_file", default=None)


def config_path() -> Path:
    """The YAML config file in force (it need not exist)."""
    chosen = _config_file.get()
    if chosen is not None:
        return chosen
    return Path(os.environ.get("COMFYFLEET_CONFIG", REPO_ROOT / "comfyfleet.yaml"))


class NodeSpec(BaseModel):
    """A node's fields but its id: what its registry block holds (the block is named by the id).
    Part of `NodeConfig`, the one node schema; the block type derives from it."""

    url: str = Field(description="Base URL of the ComfyUI server, e.g. http://10.0.0.5:8188")
    capacity: int = Field(
        default=2, ge=1, le=64, description="Jobs in flight at once (the pool's limit)."
    )
    capabilities: list[str] = Field(
        default_factory=lambda: [
            "text_to_image",
            "text_to_image_sdxl",
            "image_to_video",
            "image_to_image",
        ],
        description="Generation types this node serves.",
    )
    weight: float = Field(default=1.0, gt=0, description="Share under the weighted strategy.")
    priority: int = Field(default=0, description="Group under the priority_based strategy.")
    enabled: bool = Field(default=True, description="Disabled nodes get no new jobs.")
    metadata: dict[str, Any] = Field(
        default_factory=dict, description="Free-form facts: gpu model, location, …"
    )
    pool_type: PoolType = Field(
        default="comfyfleet",
        description="`comfyfleet`: the in-process worker runs the node's flows; `docker`: a "
        "Prefect Docker worker runs each flow in a container of `docker.image`.",
    )


class _NodeId(BaseModel):
    id: str = Field(
        pattern=r"^[a-z0-9][a-z0-9-]{0,62}$",
        description="Node id (gpu-1): its pool is comfyui-<id>, its deployments <flow>/<id>.",
    )


class NodeConfig(NodeSpec, _NodeId):
    """One ComfyUI node: the node schema. `comfyfleet.yaml` lists them; the registry block
    (`ComfyUINode`, a `NodeSpec` named by the id), the live `NodeState` and the REST `NodeInfo`
    derive from it. The id comes first (`_NodeId`), then the `NodeSpec` fields."""


class RoutingSettings(BaseModel):
    strategy: Strategy = "least_loaded"


class HealthSettings(BaseModel):
    probe_interval_s: float = Field(default=2.0, gt=0)
    failures_to_open: int = Field(default=3, ge=1)
    open_cooldown_s: float = Field(default=15.0, gt=0)
    quarantine_faults_per_hour: int = Field(default=20, ge=1)
    inventory_refresh_s: float = Field(
        default=300.0,
        gt=0,
        description="How often each node's class types and models are read again (also when "
        "it joins, when it comes back, and on `comfyfleet nodes refresh`).",
    )


class JobSettings(BaseModel):
    max_node_faults: int = Field(default=3, ge=1)
    no_progress_timeout_s: float = Field(default=120.0, gt=0)
    queue_timeout_s: float = Field(default=3600.0, gt=0)


class DatabaseSettings(BaseModel):
    url: str = f"sqlite:///{REPO_ROOT / 'var' / 'comfyfleet.db'}"


class PrefectSettings(BaseModel):
    api_url: str = "http://127.0.0.1:4200/api"
    database_url: str | None = Field(
        default=None,
        description="Database of the Prefect server ComfyFleet starts: None = SQLite in its home; "
        "postgresql+asyncpg://user:pw@host:5432/db for PostgreSQL "
        "(comfyfleet.local.prefect_server).",
    )
    auth_string_file: Path | None = Field(
        default=None,
        description="The file holding the Prefect API's auth string (default: "
        "<embedded.var_dir>/prefect-auth-string): `comfyfleet up` creates it (mode 0600) and "
        "starts its server with it; ComfyFleet's processes send it (PREFECT_API_AUTH_STRING). "
        "A server run elsewhere without auth: leave the file absent.",
    )
    api_workers: int = Field(
        default=1,
        ge=1,
        description="API processes of the Prefect server ComfyFleet starts (`prefect server "
        "start --workers N`, its loop services in one more process). Above 1 it needs "
        "PostgreSQL (`prefect.database_url`) and Redis (`prefect.redis_url`).",
    )
    redis_url: str | None = Field(
        default=None,
        description="Redis for the Prefect server's messaging, event ordering and lease storage "
        "(prefect-redis), e.g. redis://127.0.0.1:6379/0: what lets several API processes, on "
        "one host or behind a load balancer, act as one server.",
    )


class DockerSettings(BaseModel):
    """Work pools of type `docker` (nodes with `pool_type: docker`; prefect-docker's worker)."""

    image: str = Field(
        default="comfyfleet-worker:latest",
        description="Image with ComfyFleet and its flow code (deployments/Dockerfile).",
    )
    code_dir: str = Field(default="/opt/comfyfleet", description="The checkout inside the image.")
    image_pull_policy: Literal["IfNotPresent", "Always", "IfPossible", "Never"] | None = None
    networks: list[str] = Field(default_factory=list)
    network_mode: str | None = Field(default=None, description="e.g. host; not with networks")
    volumes: list[str] = Field(
        default_factory=list,
        description="e.g. /mnt/comfyfleet/outputs:/mnt/comfyfleet/outputs (the shared store)",
    )
    env: dict[str, str] = Field(
        default_factory=dict,
        description="Extra environment of each flow-run container (merged over the one "
        "ComfyFleet sets: database URL, store folders, Prefect API URL).",
    )
    mem_limit: str | None = None
    database_url: str | None = Field(
        default=None,
        description="The job store as the containers reach it (default: database.url); kept "
        "in a Prefect Secret block, not in the pool's template.",
    )


class StoreSettings(BaseModel):
    outputs_dir: Path = REPO_ROOT / "var" / "outputs"
    inputs_dir: Path = REPO_ROOT / "var" / "inputs"


class BatchSettings(BaseModel):
    files_dir: Path = Field(
        default=REPO_ROOT / "var" / "batch",
        description="The only directory server-side files are read from: a batch's `file=` and "
        "image parameters given as paths (relative paths are taken inside it).",
    )


class AuthSettings(BaseModel):
    token_ttl_minutes: int = Field(default=1440, ge=1)
    open_registration: bool = False
    login_rate: str = Field(
        default="10/minute;100/hour",
        description="Failed logins allowed per client address and per account on every login "
        "and token route and the UI's login (`limits` notation: 10/minute;100/hour); more get "
        "429 with Retry-After. Empty or `off`: no throttling.",
    )

    @field_validator("login_rate")
    @classmethod
    def _rate(cls, value: str) -> str:
        parse_rate(value)
        return value


class WebhookSettings(BaseModel):
    allowed_networks: list[str] = Field(
        default_factory=list,
        description="Private networks webhooks may reach (CIDR, e.g. 10.20.0.0/16); none by "
        "default. The fleet's own endpoints stay refused.",
    )

    @field_validator("allowed_networks")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        for network in value:
            try:
                ipaddress.ip_network(network, strict=False)
            except ValueError as exc:
                raise ValueError(f"{network!r} is not a network (CIDR): {exc}") from None
        return value


class LimitsSettings(BaseModel):
    """Fleet-wide ceilings over every workflow contract (the old service's format included):
    a parameter's maximum is the lower of its contract's and these."""

    max_width: int = Field(default=2048, ge=8, description="Pixels, any `width` input.")
    max_height: int = Field(default=2048, ge=8, description="Pixels, any `height` input.")
    max_steps: int = Field(default=150, ge=1, description="Sampling steps.")
    max_batch_size: int = Field(default=8, ge=1, description="Images per job.")
    max_frames: int = Field(default=128, ge=1, description="Video frames per job.")
    max_output_pixels: int = Field(
        default=16 * 1024 * 1024,
        ge=64 * 64,
        description="Pixels of one output image (an upscale's input pixels x scale^2).",
    )

    def ceilings(self) -> dict[str, int]:
        """Ceiling per kind of parameter (`comfyfleet.catalog.CEILING_INPUTS`)."""
        return {
            "width": self.max_width,
            "height": self.max_height,
            "steps": self.max_steps,
            "batch_size": self.max_batch_size,
            "frames": self.max_frames,
            "output_pixels": self.max_output_pixels,
        }


class GraphsSettings(BaseModel):
    """Raw ComfyUI graphs (`/comfy/prompt`, `POST /api/v2/tasks {"graph"}`)."""

    denied_class_types: list[str] = Field(
        default_factory=list,
        description="Class types no raw graph may use on this fleet (e.g. nodes that run code "
        "or read files on the node).",
    )


class GatewaySettings(BaseModel):
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    cors_origins: list[str] = Field(default_factory=list)


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


class LoggingSettings(BaseModel):
    """Log levels of every ComfyFleet process, and the directory `comfyfleet up` writes to."""

    level: str = "INFO"
    levels: dict[str, str] = Field(
        default_factory=dict,
        description="Per logger, e.g. {comfyfleet.fleet: DEBUG, prefect: WARNING}.",
    )
    dir: Path = REPO_ROOT / "var" / "logs"

    @field_validator("level")
    @classmethod
    def _level(cls, value: str) -> str:
        return _log_level(value)

    @field_validator("levels")
    @classmethod
    def _levels(cls, value: dict[str, str]) -> dict[str, str]:
        return {name: _log_level(level) for name, level in value.items()}


def _log_level(value: str) -> str:
    level = str(value).upper()
    if level not in LOG_LEVELS:
        raise ValueError(f"unknown log level {value!r}; use one of {', '.join(LOG_LEVELS)}")
    return level


class EmbeddedSettings(BaseModel):
    """`comfyfleet up`: where it keeps its runtime files, how it supervises its processes."""

    var_dir: Path = Field(
        default=REPO_ROOT / "var",
        description="Prefect server home, local node folders, pid files (the ComfyUI venv "
        "stays in the checkout's var/comfyui).",
    )
    restart_backoff_s: float = Field(default=1.0, gt=0, description="first restart delay")
    restart_backoff_max_s: float = Field(default=30.0, gt=0)
    stop_grace_s: float = Field(default=10.0, gt=0, description="SIGTERM → SIGKILL after this")
    smoke_job: bool = True
    workers: int = Field(
        default=1,
        ge=1,
        description="ComfyFleet worker processes, each serving every node pool: a node's shift "
        "runs in whichever picks it up, and moves to another when that one dies.",
    )


def parse_rate(rate: str) -> list[Any]:
    """The limits of a rate such as `10/minute;100/hour` (none for "", `off`)."""
    if rate.strip().lower() in ("", "off", "none", "unlimited"):
        return []
    try:
        return list(parse_many(rate))
    except ValueError as exc:
        raise ValueError(f"{rate!r} is not a rate such as 10/minute;100/hour ({exc})") from None


CLIENT_ENV = ("COMFYFLEET_GATEWAY", "COMFYFLEET_TOKEN", "COMFYFLEET_CONFIG")
"""The CLI's own variables (the gateway URL, a token, the config path): not settings. Without
this, `COMFYFLEET_GATEWAY=http://…` would be read as the `gateway` section and fail."""


class _EnvSource(EnvSettingsSource):
    def _load_env_vars(self) -> Mapping[str, str | None]:
        env = super()._load_env_vars()
        skip = {name.lower() for name in CLIENT_ENV}
        return {k: v for k, v in env.items() if k.lower() not in skip}


class Settings(BaseSettings):
    """Everything a ComfyFleet process reads at start."""

    model_config = SettingsConfigDict(
        env_prefix="COMFYFLEET_",
        env_nested_delimiter="__",
        extra="forbid",
    )

    routing: RoutingSettings = Field(default_factory=RoutingSettings)
    nodes: list[NodeConfig] = Field(default_factory=list)
    health: HealthSettings = Field(default_factory=HealthSettings)
    jobs: JobSettings = Field(default_factory=JobSettings)
    database: DatabaseSettings = Field(default_factory=DatabaseSettings)
    prefect: PrefectSettings = Field(default_factory=PrefectSettings)
    store: StoreSettings = Field(default_factory=StoreSettings)
    batch: BatchSettings = Field(default_factory=BatchSettings)
    auth: AuthSettings = Field(default_factory=AuthSettings)
    gateway: GatewaySettings = Field(default_factory=GatewaySettings)
    webhooks: WebhookSettings = Field(default_factory=WebhookSettings)
    limits: LimitsSettings = Field(default_factory=LimitsSettings)
    graphs: GraphsSettings = Field(default_factory=GraphsSettings)
    docker: DockerSettings = Field(default_factory=DockerSettings)
    logging: LoggingSettings = Field(default_factory=LoggingSettings)
    embedded: EmbeddedSettings = Field(default_factory=EmbeddedSettings)
    defaults: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="Fleet-wide parameter defaults per workflow id (small sizes for CPU nodes).",
    )
    models: dict[str, str] = Field(
        default_factory=dict,
        description="Logical model names of the contracts mapped to this fleet's file names.",
    )
    workflow_dirs: list[Path] = Field(default_factory=lambda: [REPO_ROOT / "workflows"])

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        yaml_source = YamlConfigSettingsSource(settings_cls, yaml_file=config_path())
        return (init_settings, _EnvSource(settings_cls), yaml_source)

    def node(self, node_id: str) -> NodeConfig:
        for node in self.nodes:
            if node.id == node_id:
                return node
        known = ", ".join(n.id for n in self.nodes) or "none"
        raise KeyError(f"unknown node {node_id!r} (configured: {known})")


def read_settings(path: Path) -> Settings:
    """Settings with `path` as the YAML file (the environment still wins), e.g. to validate or
    reload a file other than the one in force."""
    token = _config_file.set(Path(path))
    try:
        return Settings()
    finally:
        _config_file.reset(token)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return Settings()


def format_errors(exc: Exception, path: Path) -> str:
    """A settings error with the location of each problem (the YAML line where known)."""
    if not isinstance(exc, ValidationError):
        return f"{path}: {exc}"
    lines = [f"{path}: invalid configuration"]
    for err in exc.errors():
        loc = [str(part) for part in err["loc"]]
        where = ".".join(loc) or "(top level)"
        line = yaml_line(path, loc)
        lines.append(f"  {where}{f' (line {line})' if line else ''}: {err['msg']}")
    return "\n".join(lines)


def yaml_line(path: Path, loc: Sequence[str]) -> int | None:
    """The 1-based line of `loc` (e.g. ["nodes", "0", "capacity"]) in the YAML file, or of the
    deepest part of it that exists there; None when the file has none of it."""
    try:
        node: Any = yaml.compose(path.read_text())
    except (OSError, yaml.YAMLError):
        return None
    line = None
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            match = next((v for k, v in node.value if str(k.value) == part), None)
            key = next((k for k, _ in node.value if str(k.value) == part), None)
            if match is None or key is None:
                break
            line, node = key.start_mark.line + 1, match
        elif isinstance(node, yaml.SequenceNode) and part.isdigit() and int(part) < len(node.value):
            node = node.value[int(part)]
            line = node.start_mark.line + 1
        else:
            break
    return line
