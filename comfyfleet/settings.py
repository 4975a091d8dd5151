"""Process settings: one `Settings`, read once.

Sources, strongest first: environment variables (`COMFYFLEET_` prefix, nested with `__`, e.g.
`COMFYFLEET_ROUTING__STRATEGY=round_robin`), the YAML config file (`comfyfleet.yaml` at the repo
root, or the path in `COMFYFLEET_CONFIG`), then the defaults below.

Shared infrastructure (the node registry, database credentials) lives in Prefect blocks; per-run
input lives in flow parameters. This module holds only what a process needs to start.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from contextvars import ContextVar
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator
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


class NodeConfig(BaseModel):
    """One ComfyUI node as listed in `comfyfleet.yaml` (applied to its ComfyUINode block)."""

    id: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{0,62}$")
    url: str
    capacity: int = Field(default=2, ge=1, le=64)
    capabilities: list[str] = Field(
        default_factory=lambda: [
            "text_to_image",
            "text_to_image_sdxl",
            "image_to_video",
            "image_to_image",
        ]
    )
    weight: float = Field(default=1.0, gt=0)
    priority: int = 0
    enabled: bool = True
    metadata: dict[str, Any] = Field(default_factory=dict)
    pool_type: PoolType = Field(
        default="comfyfleet",
        description="`comfyfleet`: the in-process worker runs the node's flows; `docker`: a "
        "Prefect Docker worker runs each flow in a container of `docker.image`.",
    )


class RoutingSettings(BaseModel):
    strategy: Strategy = "least_loaded"


class HealthSettings(BaseModel):
    probe_interval_s: float = Field(default=2.0, gt=0)
    failures_to_open: int = Field(default=3, ge=1)
    open_cooldown_s: float = Field(default=15.0, gt=0)
    quarantine_faults_per_hour: int = Field(default=20, ge=1)


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
        "postgresql+asyncpg://user:pw@host:5432/db for PostgreSQL (comfyfleet.prefect_server).",
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


class AuthSettings(BaseModel):
    token_ttl_minutes: int = Field(default=1440, ge=1)
    open_registration: bool = False


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
    auth: AuthSettings = Field(default_factory=AuthSettings)
    gateway: GatewaySettings = Field(default_factory=GatewaySettings)
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
