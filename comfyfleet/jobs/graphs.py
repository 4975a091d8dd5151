"""Raw ComfyUI graphs as jobs: checked, then queued like any other job.

`submit_graph` is the one entry point (the `/comfy` API, `POST /api/v2/tasks {"graph"}` and
`comfyfleet submit --graph` all come through it). Before anything is written:

- the caller must hold the `raw_graphs` permission (admins do; `GraphsNotAllowed` otherwise);
- the graph must be well formed, use no class type the fleet denies
  (`graphs.denied_class_types`) and stay inside the fleet's ceilings (`limits.max_*`);
- every stored input it names must exist (uploads: `comfyfleet/<sha256>.<ext>`);
- some healthy node must have every class type and model file it names (`inventories`: what the
  fleet service last read from the healthy nodes' /object_info and /models).

A refusal is a `GraphError` with ComfyUI's own 400 body. A graph job is then a plain job (the
workflow `graph`): prioritised, fair-shared, routed to a node that has what it needs, failed
over, cancelled and accounted as every job is. A client-chosen id (a UUID, as ComfyUI accepts
one) becomes the job's id (its 32 hex digits); sending the same id again returns the same job.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

from comfyfleet import bell
from comfyfleet.auth import Principal
from comfyfleet.catalog.raw import (
    GRAPH_CAPABILITY,
    GRAPH_WORKFLOW,
    GraphError,
    Inventory,
    check_ceilings,
    check_denied,
    check_runnable,
    is_input_ref,
    node_error,
    normalize_inputs,
    parse_graph,
)
from comfyfleet.jobs.inputs import InputError, InputStore
from comfyfleet.jobs.service import charged
from comfyfleet.settings import Settings, get_settings
from comfyfleet.store import Conflict, Database, create_job, get_job
from comfyfleet.store.models import Job


class GraphsNotAllowed(Exception):
    """The caller may not submit raw graphs (the `raw_graphs` permission)."""


def job_id_of(prompt_id: str) -> str:
    """A ComfyUI prompt id (a UUID, any spelling) → the job id (32 hex digits). ValueError if
    it is not a UUID."""
    return uuid.UUID(str(prompt_id)).hex


def prompt_id_of(job_id: str) -> str:
    """The job's id as ComfyUI clients spell prompt ids: a hyphenated UUID."""
    try:
        return str(uuid.UUID(hex=job_id))
    except ValueError:  # a job id of another shape (a Prefect run's, say): as it is
        return job_id


def check_graph(
    graph: Any, *, settings: Settings, inputs: InputStore,
    inventories: Mapping[str, Inventory] | None,
) -> dict[str, Any]:  # fmt: skip
    """The graph as it will run (bare upload names made refs), or GraphError."""
    parsed = parse_graph(graph)
    check_denied(parsed, settings.graphs.denied_class_types)
    check_ceilings(parsed, settings.limits.ceilings())
    parsed = normalize_inputs(parsed, lambda name: (inputs.root / name).is_file())
    for node_id, node in parsed.items():
        for name, value in node["inputs"].items():
            if isinstance(value, str) and is_input_ref(value):
                try:
                    inputs.resolve(value)
                except InputError:
                    raise GraphError(
                        "prompt_outputs_failed_validation", "Prompt outputs failed validation",
                        details=f"{name}: unknown input {value!r}",
                        node_errors={node_id: node_error(
                            parsed, node_id, "value_not_in_list", "Value not in list",
                            f"{name}: {value!r} is not an uploaded file: upload it first "
                            "(/comfy/upload/image or POST /api/v2/inputs)",
                            input_name=name, received_value=value,
                        )},
                    ) from None  # fmt: skip
    if inventories is not None:
        check_runnable(parsed, inventories)
    return parsed


def submit_graph(
    db: Database, graph: Any, *, principal: Principal,
    inventories: Mapping[str, Inventory] | None, settings: Settings | None = None,
    inputs: InputStore | None = None, priority: str = "normal", webhook_url: str | None = None,
    prompt_id: str | None = None, client_id: str | None = None,
    extra_data: Mapping[str, Any] | None = None,
) -> tuple[Job, bool]:  # fmt: skip
    """Check and queue a raw graph (see the module docstring); returns (job, created now).

    `inventories`: the healthy nodes' inventories, by node id (None: do not check here; the
    router still sends the job only to a node that has what it needs)."""
    if not principal.user.may_run_graphs:
        raise GraphsNotAllowed(
            f"{principal.username} may not submit raw graphs: an admin grants the raw_graphs "
            f"permission (comfyfleet users grant {principal.username} raw_graphs)"
        )
    settings = settings or get_settings()
    inputs = inputs or InputStore(settings.store.inputs_dir)
    job_id = None
    if prompt_id is not None:
        try:
            job_id = job_id_of(prompt_id)
        except ValueError:
            raise GraphError(
                "invalid_prompt", "Invalid prompt",
                details=f"prompt_id {str(prompt_id)[:80]!r}: must be a UUID",
            ) from None  # fmt: skip
        known = _existing(db, job_id, principal)
        if known is not None:
            return known, False
    checked = check_graph(graph, settings=settings, inputs=inputs, inventories=inventories)
    params: dict[str, Any] = {"graph": checked}
    if extra_data:
        params["extra_data"] = dict(extra_data)

    def write(session: Any) -> Job:
        user, client = charged(session, principal)
        return create_job(
            session, workflow=GRAPH_WORKFLOW, capability=GRAPH_CAPABILITY, params=params,
            request={"client_id": client_id} if client_id else {}, owner=user, client=client,
            priority=priority, webhook_url=webhook_url, job_id=job_id,
        )  # fmt: skip

    try:
        job = db.run(write)
    except Conflict:  # the same id sent twice at once: the first one won
        known = _existing(db, job_id or "", principal)
        if known is None:
            raise
        return known, False
    bell.ring(bell.bell_dir(str(db.url)), bell.DISPATCH)
    return job, True


def _existing(db: Database, job_id: str, principal: Principal) -> Job | None:
    """The job with this id if it is the caller's; Conflict if it is someone else's."""
    job = db.run(lambda s: get_job(s, job_id=job_id, with_details=True), readonly=True)
    if job is None:
        return None
    if job.owner_id != principal.user_id:
        raise Conflict(f"prompt id {prompt_id_of(job_id)} is taken")
    return job


def client_of(job: Job) -> str | None:
    """The ComfyUI `client_id` the graph was sent with (whose websocket gets its messages)."""
    return (job.request or {}).get("client_id")
