"""What the UI does with ComfyFleet: who is logged in, submit a job, follow it, show its files.

Jobs go through `comfyfleet.jobs.submit`, the same path as REST and the CLI. Progress while a job
runs comes from the job's Prefect events (`comfy.progress` on `comfy.job.<id>`, through the
gateway's `ProgressHub`) and from the job row (status, node, durable progress), whichever is
newer. Errors reach the user as short `gr.Error`s; details go to the log.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

import gradio as gr

from comfyfleet import jobs
from comfyfleet.api.deps import Gateway
from comfyfleet.api.errors import ApiError
from comfyfleet.auth import Principal, authenticate_user
from comfyfleet.catalog import ParamError, UnknownWorkflowError
from comfyfleet.store import TERMINAL_JOB_STATUSES, QuotaExceeded, get_user
from comfyfleet.store.models import Job

log = logging.getLogger(__name__)
POLL_S = 0.5


class Runner:
    """The UI's view of one gateway (database, catalog, progress hub, input store)."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.db = gateway.db
        self._files = Path(tempfile.mkdtemp(prefix="comfyfleet-ui-"))

    # -- identity ---------------------------------------------------------------------------

    def login(self, username: str, password: str) -> bool:
        """Gradio's auth callback: a ComfyFleet user with the right password."""
        user = self.db.run(
            lambda s: authenticate_user(s, username=username, password=password), readonly=True
        )
        return user is not None

    def principal(self, request: gr.Request | None) -> Principal:
        username = getattr(request, "username", None) if request is not None else None
        if not username:
            raise gr.Error("Log in first.")
        user = self.db.run(lambda s: get_user(s, username=username), readonly=True)
        if user is None or user.disabled:
            raise gr.Error("Your account is disabled; ask an admin.")
        return Principal(user=user)

    def is_admin(self, request: gr.Request | None) -> bool:
        try:
            return self.principal(request).is_admin
        except gr.Error:
            return False

    def admin(self, request: gr.Request | None) -> Principal:
        principal = self.principal(request)
        if not principal.is_admin:
            raise gr.Error("Admins only.")
        return principal

    # -- jobs -------------------------------------------------------------------------------

    def submit(self, principal: Principal, workflow: str, params: dict[str, Any], **kw: Any) -> Job:
        """Queue a job; contract and quota errors become short messages."""
        from comfyfleet.api.tasks import resolve_images

        try:
            wf = self.gateway.catalog.get(workflow)
            params = resolve_images(self.gateway, wf, params)
            request = jobs.JobRequest(workflow=workflow, params=params, **kw)
            return jobs.submit(self.db, request, principal=principal, catalog=self.gateway.catalog)
        except ParamError as exc:
            raise gr.Error(f"{exc.param or 'parameters'}: {exc.message}") from None
        except (UnknownWorkflowError, QuotaExceeded) as exc:
            raise gr.Error(str(exc)) from None
        except ApiError as exc:
            raise gr.Error(exc.message) from None

    async def follow(self, job: Job, principal: Principal, progress: gr.Progress) -> Job:
        """Wait for the job to end, driving the progress bar with its real steps."""
        progress(0, desc="queued")
        shown: tuple[int, int] | None = None
        node = job.node
        async with self.gateway.hub.subscribe(job.id) as queue:
            loop = asyncio.get_running_loop()
            next_poll = loop.time()
            while True:
                timeout = max(next_poll - loop.time(), 0.0)
                try:
                    event = await asyncio.wait_for(queue.get(), timeout)
                except TimeoutError:
                    event = None
                if event is not None:
                    if event.kind == "progress":
                        value, maximum = event.payload.get("value"), event.payload.get("max")
                        node = event.payload.get("node") or node
                        if isinstance(value, int) and isinstance(maximum, int) and maximum > 0:
                            shown = (value, maximum)
                            progress((value, maximum), desc=f"on {node}", unit="step")
                    continue
                next_poll = loop.time() + POLL_S
                job = await asyncio.to_thread(jobs.get, self.db, job.id, principal=principal)
                node = job.node or node
                if job.status in TERMINAL_JOB_STATUSES:
                    break
                row = (job.progress_value, job.progress_max)
                if row[1] and (shown is None or row > shown):
                    shown = row
                    progress(row, desc=f"on {node}", unit="step")
                elif shown is None:
                    progress(0, desc=f"{job.status} on {node}" if node else job.status)
        if job.status == "failed":
            log.warning("job %s failed: %s", job.id, job.error)
            where = f" on {job.node}" if job.node else ""
            raise gr.Error(f"Job failed{where}: {(job.error or 'no reason given')[:300]}")
        if job.status == "cancelled":
            raise gr.Error("The job was cancelled.")
        return job

    def files(self, job: Job) -> list[str]:
        """Copies of the job's outputs where Gradio may serve them (never the store itself)."""
        from comfyfleet.api.files import output_path

        out = []
        folder = self._files / job.id
        folder.mkdir(parents=True, exist_ok=True)
        for output in job.outputs:
            try:
                source = output_path(self.gateway.settings.store.outputs_dir, output)
            except ApiError:
                continue
            target = folder / output.name
            if not target.exists():
                shutil.copyfile(source, target)
            out.append(str(target))
        return out

    def summary(self, job: Job) -> str:
        seconds = ""
        if job.started_at and job.finished_at:
            seconds = f", {(job.finished_at - job.started_at).total_seconds():.1f} s"
        return (
            f"Job `{job.id}` · {job.workflow} · node **{job.node or '?'}**{seconds} · "
            f"seed {job.params.get('seed', '—')}"
        )
