"""Request and response models of the REST API (what /docs shows)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    Strict,
    StringConstraints,
    model_validator,
)

Priority = Literal["high", "normal", "low"]
JobStatusName = Literal["queued", "dispatched", "running", "completed", "failed", "cancelled"]

MAX_PROMPT = 10_000
URL_PATTERN = r"^https?://[A-Za-z0-9.\-]+(:[0-9]{1,5})?(/[A-Za-z0-9._~/%\-]*)?$"
"""A node URL: http(s), a host name or IPv4 address, an optional port and path."""


def _json_number(value: Any) -> Any:
    if isinstance(value, str | bool):
        raise ValueError("must be a JSON number")
    return value


Int = Annotated[int, Strict(False), BeforeValidator(_json_number)]
"""An integer as JSON Schema means it: `5` or `5.0`, never `"5"` or `true`."""
Float = Annotated[float, Strict(False), BeforeValidator(_json_number)]


Name = Annotated[str, StringConstraints(min_length=1, max_length=64)]
"""A short identifier in a request (a capability, …)."""


class Body(BaseModel):
    """Base of request bodies: strict JSON types (`0` is not `false`, `"5"` is not `5`), finite
    numbers only (`NaN` and `Infinity` are refused)."""

    model_config = ConfigDict(strict=True, allow_inf_nan=False)


MAX_IMAGE_FIELD = 30 * 1024 * 1024  # a base64 image of ~22 MB


# -- jobs -------------------------------------------------------------------------------------


class ProgressOut(BaseModel):
    value: int
    max: int
    node_id: str | None = None


class AttemptOut(BaseModel):
    id: str
    number: int
    node: str
    status: str
    reason: str | None = None
    flow_run_id: str | None = None
    created_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    gpu_seconds: float = 0.0


class OutputOut(BaseModel):
    name: str
    url: str | None = Field(default=None, description="Download URL (owner or admin).")
    sha256: str
    size: int
    content_type: str
    node: str | None = None
    prompt_id: str | None = None


class JobOut(BaseModel):
    """The REST job JSON (CONVENTIONS.md)."""

    id: str
    workflow: str
    capability: str
    status: JobStatusName
    priority: Priority
    progress: ProgressOut
    node: str | None = None
    attempts: list[AttemptOut] = Field(default_factory=list)
    outputs: list[OutputOut] = Field(default_factory=list)
    error: str | None = None
    created_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    gpu_seconds: float = 0.0
    owner: str | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    batch_id: str | None = None
    cancel_requested: bool = False
    position: int | None = Field(
        default=None,
        description="While queued: how many queued jobs the dispatcher would place before this "
        "one (priorities, aging and fair share as they stand now). Set by GET /api/v2/tasks/{id}.",
    )
    free_slots: int | None = Field(
        default=None, description="While queued: the fleet's free slots now."
    )


class SubmittedJob(JobOut):
    """A job just submitted (202), or finished within `?wait=true` (200)."""

    task_id: str = Field(description="Same as `id` (the old service's name).")
    webhook_secret: str | None = Field(
        default=None,
        description="Signing secret of your webhooks, shown ONCE when it was created now.",
    )


class JobPage(BaseModel):
    items: list[JobOut]
    total: int
    limit: int
    offset: int


class BatchOut(BaseModel):
    batch_id: str
    jobs: list[SubmittedJob]


class ComfyError(BaseModel):
    type: str
    message: str
    details: str = ""
    extra_info: dict[str, Any] = Field(default_factory=dict)


class ComfyErrorBody(BaseModel):
    """ComfyUI's own answer to a prompt it will not queue (its POST /prompt): a raw graph
    refused by the fleet."""

    error: ComfyError
    node_errors: dict[str, Any]


# -- task requests ----------------------------------------------------------------------------


class _Common(Body):
    priority: Priority = "normal"
    webhook_url: str | None = Field(
        default=None, max_length=2000, description="POSTed (signed) when the job ends."
    )
    pinned_node: str | None = Field(default=None, max_length=64)


class TaskRequest(_Common):
    """Any catalog workflow with its parameters (`GET /api/v2/workflows` lists the schemas), or
    a raw ComfyUI graph (`graph`, API format: the `raw_graphs` permission)."""

    model_config = ConfigDict(extra="forbid")

    workflow: str | None = Field(
        default=None, max_length=128, description="Catalog workflow id, e.g. sd15-basic."
    )
    params: dict[str, Any] = Field(default_factory=dict)
    graph: dict[str, Any] | None = Field(
        default=None,
        description='A raw ComfyUI graph ("Save (API)" format) instead of workflow + params; '
        "refused with ComfyUI's own 400 body when no healthy node can run it.",
    )
    batch_id: str | None = Field(default=None, max_length=64)

    @model_validator(mode="after")
    def _workflow_or_graph(self) -> TaskRequest:
        if (self.workflow is None) == (self.graph is None):
            raise ValueError("give either workflow (with params) or graph, not both")
        if self.graph is not None and (self.params or self.pinned_node):
            raise ValueError("a graph takes no params or pinned_node: edit the graph instead")
        return self


class BatchRequest(_Common):
    """Several jobs of one workflow: one per prompt (same other parameters)."""

    model_config = ConfigDict(extra="forbid")

    workflow: str = Field(default="sd15-basic", max_length=128)
    prompts: list[str] = Field(min_length=1, max_length=100)
    params: dict[str, Any] = Field(default_factory=dict)


MAX_BATCH_ITEMS = 1000


class BatchCreate(_Common):
    """A batch: one job of `workflow` per item (a parameter set), `defaults` under each item.

    The shape of a batch file (comfyfleet.jobs.batch_files) sent as JSON: `comfyfleet batch
    submit FILE` reads the file and posts its items here."""

    model_config = ConfigDict(extra="forbid")

    workflow: str = Field(max_length=128, description="Catalog workflow id, e.g. sd15-basic.")
    items: list[dict[str, Any]] = Field(min_length=1, max_length=MAX_BATCH_ITEMS)
    defaults: dict[str, Any] = Field(
        default_factory=dict, description="Parameters every item has unless it sets them."
    )


class BatchStatusOut(BaseModel):
    """A batch as its owner sees it: how many of its jobs are in each status, and the jobs."""

    batch_id: str
    total: int
    counts: dict[str, int] = Field(description="Jobs per status (only the statuses present).")
    done: bool = Field(description="Every job ended (completed, failed or cancelled).")
    jobs: list[JobOut]


class TextToImageRequest(_Common):
    """The old service's body; any other parameter of the workflow may be given too."""

    model_config = ConfigDict(extra="allow")

    prompt: str = Field(max_length=MAX_PROMPT)
    negative_prompt: str | None = Field(default=None, max_length=MAX_PROMPT)
    width: Int | None = None
    height: Int | None = None
    steps: Int | None = None
    cfg: Float | None = None
    seed: Int | None = None
    sampler: str | None = Field(default=None, max_length=64)
    scheduler: str | None = Field(default=None, max_length=64)
    batch_size: Int | None = None
    checkpoint: str | None = Field(default=None, max_length=255)
    workflow: str | None = Field(default=None, max_length=128, description="Catalog id.")
    workflow_name: str | None = Field(
        default=None, max_length=128, description="Old service's workflow name (sdxl_basic, …)."
    )


class ImageToVideoRequest(_Common):
    """The old service's body. `image`/`image_path`: an uploaded input ref (`comfyfleet/<sha>.png`),
    a URL of this gateway's input store, or the image itself in base64 (or a data: URL)."""

    model_config = ConfigDict(extra="allow")

    image: str | None = Field(default=None, max_length=MAX_IMAGE_FIELD)
    image_path: str | None = Field(default=None, max_length=MAX_IMAGE_FIELD)
    duration: Float | None = Field(default=None, description="Seconds; frames = duration x fps.")
    fps: Int | None = None
    frames: Int | None = None
    width: Int | None = None
    height: Int | None = None
    steps: Int | None = None
    seed: Int | None = None
    workflow: str | None = Field(default=None, max_length=128)
    workflow_name: str | None = Field(default=None, max_length=128)


class InputOut(BaseModel):
    ref: str = Field(description="Pass this as the image parameter.")
    url: str
    sha256: str
    size: int
    content_type: str


# -- workflows --------------------------------------------------------------------------------


class WorkflowOut(BaseModel):
    id: str
    capability: str
    title: str
    description: str = ""
    parameters: dict[str, Any] = Field(description="JSON schema of the params object.")
    models: dict[str, list[str]] = Field(default_factory=dict)


# -- auth -------------------------------------------------------------------------------------


class LoginRequest(Body):
    username: str = Field(min_length=1, max_length=64)
    password: str = Field(min_length=1, max_length=1024)


class TokenOut(BaseModel):
    access_token: str
    token_type: Literal["bearer"] = "bearer"
    expires_at: datetime | None = None
    expires_in: int = Field(description="Seconds until the token expires.")
    username: str
    is_admin: bool
    client_id: str | None = None


class RegisterRequest(Body):
    client_name: str = Field(min_length=1, max_length=128)
    description: str = Field(default="", max_length=1000)


class ClientOut(BaseModel):
    client_id: str
    client_name: str
    description: str = ""
    owner: str | None = None
    created_at: datetime | None = None
    revoked: bool = False


class RegisteredClient(ClientOut):
    client_secret: str = Field(description="Shown once; store it now.")
    webhook_secret: str = Field(description="Signs this client's webhooks; shown once.")


class ClientTokenRequest(Body):
    client_id: str = Field(min_length=1, max_length=64)
    client_secret: str = Field(min_length=1, max_length=512)


class MeOut(BaseModel):
    username: str
    is_admin: bool
    client_id: str | None = None


class WebhookSecretOut(BaseModel):
    scope: str
    webhook_secret: str = Field(description="Shown once; earlier secrets stop signing.")


# -- admin ------------------------------------------------------------------------------------


PERMISSIONS = ("raw_graphs",)
Permission = Literal["raw_graphs"]
"""`raw_graphs`: submit raw ComfyUI graphs (`/comfy/prompt`, `POST /api/v2/tasks {"graph"}`)."""


class UserOut(BaseModel):
    username: str
    role: str
    disabled: bool
    created_at: datetime | None = None
    max_running: int | None = None
    max_queued: int | None = None
    daily_gpu_seconds: float | None = None
    permissions: list[Permission] = Field(
        default_factory=list, description="What the user may do beyond plain jobs."
    )


class PermissionsUpdate(Body):
    raw_graphs: bool | None = Field(
        default=None, description="Grant (true) or withdraw (false) raw graphs; null: unchanged."
    )


class UserCreate(Body):
    username: str = Field(min_length=2, max_length=64, pattern=r"^[a-z0-9][a-z0-9_.@-]{1,63}$")
    password: str = Field(min_length=8, max_length=1024)
    admin: bool = False


class QuotaUpdate(Body):
    max_running: Int | None = Field(default=None, ge=0)
    max_queued: Int | None = Field(default=None, ge=0)
    daily_gpu_seconds: Float | None = Field(default=None, ge=0)


class NodeCreate(Body):
    model_config = ConfigDict(extra="forbid")

    id: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{0,62}$")
    url: str = Field(max_length=500, pattern=URL_PATTERN)
    capacity: Int = Field(default=2, ge=1, le=64)
    capabilities: list[Name] | None = Field(default=None, max_length=32)
    weight: Float = Field(default=1.0, gt=0, le=1000)
    priority: Int = Field(default=0, ge=-1000, le=1000)
    enabled: bool = True
    metadata: dict[str, Any] = Field(default_factory=dict)


class BacklogRow(BaseModel):
    capability: str
    priority: Priority
    queued: int


class NodePerformance(BaseModel):
    node: str
    attempts: int
    completed: int
    failed: int
    node_faults: int
    gpu_seconds: float
    in_flight: int


class TaskPerformance(BaseModel):
    workflow: str
    total: int
    by_status: dict[str, int]
    avg_queue_wait_s: float | None = None
    avg_run_s: float | None = None
    p95_run_s: float | None = None


class RollupOut(BaseModel):
    key: str
    gpu_seconds: float
    attempts: int
    jobs: int


class StatsOut(BaseModel):
    jobs_per_hour: list[dict[str, Any]]
    gpu_seconds_by_node: list[RollupOut]
    gpu_seconds_by_user: list[RollupOut]
    queue_wait_by_workflow: dict[str, float | None]


class JoinTokenOut(BaseModel):
    token: str = Field(description="Shown once.")
    id: int | None = Field(default=None, description="Revoke it by this id.")
    note: str = ""
    expires_at: datetime | None = None
    single_use: bool = False


class HealthOut(BaseModel):
    status: Literal["ok", "degraded"]
    database: str
    prefect: str
    nodes: dict[str, int]
    version: str
