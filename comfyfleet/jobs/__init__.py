"""A job's life: submit, look at, cancel and wait for jobs (`service`, re-exported here: the one
entry point every caller uses), and what happens to a job on its way: its attempts as their flow
runs live them (`attempts`), its input images (`inputs`), its output files (`outputs`) and the
webhook message when it ends (`webhooks`). The SQL is the store's (comfyfleet.store)."""

from comfyfleet.jobs.service import (
    DEFAULT_WORKFLOWS,
    JobRequest,
    Priority,
    as_json,
    cancel,
    check_image,
    get,
    list_for,
    load_catalog,
    load_workflow,
    submit,
    wait,
)

__all__ = [
    "DEFAULT_WORKFLOWS",
    "JobRequest",
    "Priority",
    "as_json",
    "cancel",
    "check_image",
    "get",
    "list_for",
    "load_catalog",
    "load_workflow",
    "submit",
    "wait",
]
