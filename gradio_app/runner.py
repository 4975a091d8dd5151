"""What the UI does with ComfyFleet: who is logged in, submit a job, watch it, cancel it, show
its files.

Jobs go through `comfyfleet.jobs`, the same path as REST and the CLI. While a job waits, the
watcher shows its position in the backlog and the fleet's free slots (the gateway's shared
`QueueView`, read at most once a second for everyone); while it runs, its real ComfyUI steps
(the job's Prefect events through the gateway's `ProgressHub`, and the job row, whichever is
newer) and the sampler's latest preview (comfyfleet.jobs.previews).

The web process serves many people at once on one event loop: every database call, password
check and file copy here runs in a thread (`asyncio.to_thread`), never on the loop. Errors reach
the user as short `gr.Error`s; details go to the log.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr

from comfyfleet import jobs
from comfyfleet.api.deps import Gateway
from comfyfleet.api.errors import ApiError
from comfyfleet.auth import Principal, check_login, run_hashing
from comfyfleet.catalog import ParamError, UnknownWorkflowError
from comfyfleet.jobs.previews import read_preview
from comfyfleet.store import TERMINAL_JOB_STATUSES, NotFound, QuotaExceeded, get_user
from comfyfleet.store.models import Job

log = logging.getLogger(__name__)
POLL_S = 0.5


@dataclass(frozen=True)
class Seen:
    """One look at a job being watched: the job, and what the person should see now."""

    job: Job
    text: str
    preview: str | None = None
    """A new preview image (a file path) since the last look, if any."""


class Runner:
    """The UI's view of one gateway (database, catalog, progress hub, queue view, stores)."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.db = gateway.db
        self._files = Path(tempfile.mkdtemp(prefix="comfyfleet-ui-"))

    # -- identity ---------------------------------------------------------------------------

    async def login(self, username: str, password: str) -> bool:
        """Gradio's auth callback: a ComfyFleet user with the right password. The hash is
        computed in the hashing threads (Gradio awaits this on the event loop); failed attempts are
        throttled in front of it (`comfyfleet.api.throttle`)."""
        user = await run_hashing(check_login, self.db, username=username, password=password)
        return user is not None

    async def principal(self, request: gr.Request | None) -> Principal:
        username = getattr(request, "username", None) if request is not None else None
        if not username:
            raise gr.Error("Log in first.")
        user = await asyncio.to_thread(
            self.db.run, lambda s: get_user(s, username=username), readonly=True
        )
        if user is None or user.disabled:
            raise gr.Error("Your account is disabled; ask an admin.")
        return Principal(user=user)

    async def admin(self, request: gr.Request | None) -> Principal:
        principal = await self.principal(request)
        if not principal.is_admin:
            raise gr.Error("Admins only.")
        return principal

    async def run(self, fn: Any, *, readonly: bool = False) -> Any:
        """`fn(session)` in one transaction, in a thread."""
        return await asyncio.to_thread(self.db.run, fn, readonly=readonly)

    # -- jobs -------------------------------------------------------------------------------

    async def submit(
        self, principal: Principal, workflow: str, params: dict[str, Any], **kw: Any
    ) -> Job:
        """Queue a job; contract and quota errors become short messages."""
        started = time.monotonic()
        job = await asyncio.to_thread(self._submit, principal, workflow, params, kw)
        log.info("job %s of %s queued in %.0f ms", job.id, principal.username,
                 1000 * (time.monotonic() - started))  # fmt: skip
        return job

    def _submit(
        self, principal: Principal, workflow: str, params: dict[str, Any], kw: dict[str, Any]
    ) -> Job:
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

    async def get(self, job_id: str, principal: Principal) -> Job:
        try:
            return await asyncio.to_thread(jobs.get, self.db, job_id, principal=principal)
        except NotFound:
            raise gr.Error(f"No job {job_id} of yours.") from None

    async def cancel(self, job_id: str, principal: Principal) -> Job:
        """Cancel through the jobs service: a queued job never runs; a running one is
        interrupted on its node."""
        job = await self.get(job_id, principal)
        if job.status in TERMINAL_JOB_STATUSES:
            return job
        return await asyncio.to_thread(jobs.cancel, self.db, job_id, principal=principal)

    def _look(self, job_id: str, principal: Principal, seq: int | None) -> tuple[Job, Any]:
        """The job row and, while it runs, a preview newer than `seq` (one thread hop)."""
        job = jobs.get(self.db, job_id, principal=principal)
        preview = None
        if job.status == "running":
            preview = read_preview(
                job.id, outputs_dir=self.gateway.settings.store.outputs_dir, newer_than=seq
            )
        return job, preview

    def _keep_preview(self, job_id: str, data: bytes, n: int) -> str:
        folder = self._files / job_id
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"preview-{n}.jpg"
        path.write_bytes(data)
        return str(path)

    def _waiting(self, job: Job) -> str:
        where = f"`{job.id}` · {job.workflow}"
        if job.status == "queued" and self.gateway.queue is not None:
            queue = self.gateway.queue.snapshot()
            ahead = queue.position(job.id)
            return (
                f"Job {where} · queued · position {ahead} "
                f"({ahead} job{'s' if ahead != 1 else ''} ahead) · "
                f"{queue.free_slots} of {queue.slots} slots free"
            )
        node = f" on **{job.node}**" if job.node else ""
        return f"Job {where} · {job.status}{node}"

    async def watch(
        self, job: Job, principal: Principal, progress: gr.Progress
    ) -> AsyncIterator[Seen]:
        """Follow the job to its end: what to show at each change (position while queued,
        steps and previews while it runs); the last `Seen` has the ended job."""
        progress(0, desc="queued")
        shown: tuple[int, int] | None = None
        node = job.node
        seq: int | None = None
        text = ""
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
                job, preview = await asyncio.to_thread(self._look, job.id, principal, seq)
                node = job.node or node
                if job.status in TERMINAL_JOB_STATUSES:
                    break
                row = (job.progress_value, job.progress_max)
                if row[1] and (shown is None or row > shown):
                    shown = row
                    progress(row, desc=f"on {node}", unit="step")
                elif shown is None:
                    progress(0, desc=f"{job.status} on {node}" if node else job.status)
                now = await asyncio.to_thread(self._waiting, job)
                path = None
                if preview is not None:
                    seq = preview.seq
                    path = await asyncio.to_thread(
                        self._keep_preview, job.id, preview.data, preview.seq
                    )
                if path is not None or now != text:
                    text = now
                    yield Seen(job=job, text=text, preview=path)
        yield Seen(job=job, text=self.summary(job))

    def ended(self, job: Job) -> None:
        """Raise the person's message for a job that did not complete (cancelled is quiet)."""
        if job.status == "failed":
            log.warning("job %s failed: %s", job.id, job.error)
            where = f" on {job.node}" if job.node else ""
            raise gr.Error(f"Job failed{where}: {(job.error or 'no reason given')[:300]}")

    async def files(self, job: Job) -> list[str]:
        """Copies of the job's outputs where Gradio may serve them (never the store itself)."""
        return await asyncio.to_thread(self._copy_files, job)

    def _copy_files(self, job: Job) -> list[str]:
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
        if job.status == "cancelled":
            return f"Job `{job.id}` · {job.workflow} · cancelled"
        if job.status == "failed":
            return f"Job `{job.id}` · {job.workflow} · failed: {(job.error or '')[:300]}"
        seconds = ""
        if job.started_at and job.finished_at:
            seconds = f", {(job.finished_at - job.started_at).total_seconds():.1f} s"
        return (
            f"Job `{job.id}` · {job.workflow} · node **{job.node or '?'}**{seconds} · "
            f"seed {job.params.get('seed', '—')}"
        )
