"""The Gradio UI: `build_app(settings) -> gr.Blocks`.

Tabs: Text to image (SD1.5), SDXL, Image to video, Workflow (any catalog workflow, parameters
as JSON), Batch, My history (re-run, download; admins may show everyone's), and Admin (shown to
admins only; every admin action checks the role again on the server). Each generation shows, in
its result area, the job's position and the fleet's free slots while it waits, then a live
progress bar driven by the job's real ComfyUI steps and the sampler's previews, then the result;
its Cancel button cancels the job (interrupted on its node if it runs).
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import gradio as gr

from comfyfleet.api.deps import Gateway
from comfyfleet.settings import Settings
from comfyfleet.store import list_jobs, list_users
from gradio_app.admin_ui import build_admin
from gradio_app.runner import Runner

HISTORY_COLUMNS = ["id", "owner", "workflow", "status", "node", "created", "prompt", "error"]
TITLE = "ComfyFleet"
MAX_ACTIVE_EVENTS = 1000
"""Events Gradio runs at once across everyone (its default, 40, would queue the 41st person
behind the others; waiting on a job costs the web process almost nothing)."""


def _gateway(settings: Settings) -> Gateway:
    from comfyfleet.api import create_app, gateway_of

    return gateway_of(create_app(settings))


class _Result:
    """A result area: the image (previews while sampling, then the result), a status line, a
    Cancel button, and the id of the job this tab is watching."""

    def __init__(self, *, label: str = "Result") -> None:
        self.image = gr.Image(label=label, type="filepath", interactive=False, height=420)
        self.info = gr.Markdown(elem_classes=["job-info"])
        self.cancel = gr.Button("Cancel", variant="stop", size="sm")
        self.job = gr.State("")

    @property
    def outputs(self) -> list[Any]:
        return [self.image, self.info, self.job]

    def wire(self, runner: Runner, button: Any, fn: Any, inputs: list[Any], api_name: str) -> None:
        button.click(
            fn, inputs, self.outputs, api_name=api_name, concurrency_limit=None,
            show_progress_on=[self.image],  # the status line stays readable meanwhile
        )  # fmt: skip
        self.wire_cancel(runner)

    def wire_cancel(self, runner: Runner) -> None:
        async def cancel(job_id: str, request: gr.Request) -> str:
            if not job_id:
                raise gr.Error("No job of this tab is waiting or running.")
            job = await runner.cancel(job_id, await runner.principal(request))
            return f"Job `{job.id}` · cancelling…" if not job.is_terminal else runner.summary(job)

        self.cancel.click(cancel, [self.job], [self.info], concurrency_limit=None)


async def _run_job(
    runner: Runner, request: gr.Request, progress: gr.Progress, workflow: str,
    params: dict[str, Any], **kw: Any,
) -> AsyncIterator[tuple[Any, str, str]]:  # fmt: skip
    """Submit and watch a job for a `_Result` area: (image, status line, job id) as it goes."""
    principal = await runner.principal(request)
    job = await runner.submit(principal, workflow, params, **kw)
    yield None, f"Job `{job.id}` · {job.workflow} · queued", job.id
    async for seen in runner.watch(job, principal, progress):
        job = seen.job
        yield (seen.preview if seen.preview else gr.skip()), seen.text, job.id
    runner.ended(job)
    files = await runner.files(job) if job.status == "completed" else []
    yield (files[0] if files else None), runner.summary(job), ""


def _text_tab(runner: Runner, workflow: str, *, size: int) -> None:
    wf = runner.gateway.catalog.get(workflow)
    defaults = wf.defaults
    with gr.Row():
        with gr.Column():
            prompt = gr.Textbox(label="Prompt", lines=3, placeholder="a red fox in the snow")
            negative = gr.Textbox(label="Negative prompt", value=defaults.get("negative_prompt"))
            with gr.Row():
                width = gr.Number(label="Width", value=defaults.get("width") or size, precision=0)
                height = gr.Number(
                    label="Height", value=defaults.get("height") or size, precision=0
                )
                steps = gr.Number(label="Steps", value=defaults.get("steps") or 20, precision=0)
                seed = gr.Number(label="Seed (-1 = random)", value=-1, precision=0)
            priority = gr.Radio(["high", "normal", "low"], value="normal", label="Priority")
            button = gr.Button("Generate", variant="primary")
        with gr.Column():
            result = _Result()

    async def generate(
        prompt_: str,
        negative_: str,
        width_: float,
        height_: float,
        steps_: float,
        seed_: float,
        priority_: str,
        request: gr.Request,
        progress: gr.Progress = gr.Progress(),  # noqa: B008 (Gradio's idiom)
    ) -> AsyncIterator[tuple[Any, str, str]]:
        if not (prompt_ or "").strip():
            raise gr.Error("Write a prompt first.")
        params: dict[str, Any] = {
            "prompt": prompt_,
            "negative_prompt": negative_ or None,
            "width": int(width_),
            "height": int(height_),
            "steps": int(steps_),
            "seed": int(seed_),
        }
        params = {k: v for k, v in params.items() if v is not None}
        async for shown in _run_job(
            runner, request, progress, workflow, params, priority=priority_
        ):
            yield shown

    result.wire(
        runner,
        button,
        generate,
        [prompt, negative, width, height, steps, seed, priority],
        api_name=f"generate_{workflow.replace('-', '_')}",
    )


def _workflow_tab(runner: Runner) -> None:
    """Any catalog workflow with its parameters as JSON (the contract names and checks them)."""
    ids = sorted(runner.gateway.catalog.ids())
    with gr.Row():
        with gr.Column():
            workflow = gr.Dropdown(ids, value=ids[0] if ids else None, label="Workflow")
            schema = gr.Markdown()
            params = gr.Textbox(label="Parameters (JSON)", lines=4, value="{}")
            priority = gr.Radio(["high", "normal", "low"], value="normal", label="Priority")
            button = gr.Button("Run", variant="primary")
        with gr.Column():
            result = _Result()

    def describe(workflow_: str) -> str:
        wf = runner.gateway.catalog.get(workflow_)
        lines = [f"**{wf.id}** ({wf.capability})", ""]
        for name, spec in wf.parameters.items():
            lines.append(f"- `{name}`: {spec.type}, default `{wf.defaults.get(name)}`")
        return "\n".join(lines)

    async def run(
        workflow_: str,
        params_: str,
        priority_: str,
        request: gr.Request,
        progress: gr.Progress = gr.Progress(),  # noqa: B008 (Gradio's idiom)
    ) -> AsyncIterator[tuple[Any, str, str]]:
        if not workflow_:
            raise gr.Error("workflow: pick one.")
        try:
            values = json.loads(params_ or "{}")
        except ValueError as exc:
            raise gr.Error(f"parameters: not JSON ({exc})") from None
        if not isinstance(values, dict):
            raise gr.Error('parameters: give a JSON object, e.g. {"seed": 1}')
        async for shown in _run_job(
            runner, request, progress, workflow_, values, priority=priority_
        ):
            yield shown

    workflow.change(describe, [workflow], [schema])
    result.wire(runner, button, run, [workflow, params, priority], api_name="run_workflow")


def _video_tab(runner: Runner) -> None:
    defaults = runner.gateway.catalog.get("svd-basic").defaults
    with gr.Row():
        with gr.Column():
            source = gr.Image(label="Input image", type="filepath", sources=["upload"])
            with gr.Row():
                frames = gr.Number(label="Frames", value=defaults.get("frames") or 14, precision=0)
                fps = gr.Number(label="FPS", value=defaults.get("fps") or 6, precision=0)
            button = gr.Button("Animate", variant="primary")
        with gr.Column():
            result = _Result(label="Video (animated WEBP)")
            file = gr.File(label="Download")

    async def animate(
        path: str | None,
        frames_: float,
        fps_: float,
        request: gr.Request,
        progress: gr.Progress = gr.Progress(),  # noqa: B008 (Gradio's idiom)
    ) -> AsyncIterator[tuple[Any, str, str, Any]]:
        if not path:
            raise gr.Error("Upload an image first.")
        from comfyfleet.api.images import store_image

        try:
            data = await asyncio.to_thread(Path(path).read_bytes)
            stored = await asyncio.to_thread(store_image, runner.gateway.inputs, data)
        except Exception as exc:  # ApiError with a message for people
            raise gr.Error(getattr(exc, "message", str(exc))) from None
        params = {"image": stored.ref, "frames": int(frames_), "fps": int(fps_)}
        async for image, text, job_id in _run_job(runner, request, progress, "svd-basic", params):
            yield image, text, job_id, ([image] if image and not job_id else gr.skip())

    button.click(
        animate,
        [source, frames, fps],
        [*result.outputs, file],
        api_name="animate",
        concurrency_limit=None,
        show_progress_on=[result.image],
    )
    result.wire_cancel(runner)


def _batch_tab(runner: Runner) -> None:
    with gr.Row():
        with gr.Column():
            prompts = gr.Textbox(label="Prompts, one per line", lines=6)
            upload = gr.File(
                label="…or a text file of prompts", file_types=[".txt"], type="filepath"
            )
            workflow = gr.Dropdown(
                ["sd15-basic", "sdxl-basic"], value="sd15-basic", label="Workflow"
            )
            button = gr.Button("Run batch", variant="primary")
        with gr.Column():
            gallery = gr.Gallery(label="Results", columns=4)
            info = gr.Markdown()

    async def run_batch(
        text: str,
        path: str | None,
        workflow_: str,
        request: gr.Request,
        progress: gr.Progress = gr.Progress(),  # noqa: B008 (Gradio's idiom)
    ) -> tuple[list[str], str]:
        lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
        if path:
            content = await asyncio.to_thread(Path(path).read_text, errors="replace")
            lines += [ln.strip() for ln in content.splitlines() if ln.strip()]
        if not lines:
            raise gr.Error("Give at least one prompt.")
        if len(lines) > 100:
            raise gr.Error("At most 100 prompts per batch.")
        principal = await runner.principal(request)
        batch_id = uuid.uuid4().hex
        submitted = [
            await runner.submit(principal, workflow_, {"prompt": p}, batch_id=batch_id)
            for p in lines
        ]
        done, failed, files = 0, 0, []
        pending = {job.id for job in submitted}
        while pending:
            progress((done + failed, len(submitted)), desc="jobs finished", unit="job")
            await asyncio.sleep(0.5)
            for job_id in list(pending):
                job = await runner.get(job_id, principal)
                if job.is_terminal:
                    pending.discard(job_id)
                    if job.status == "completed":
                        done += 1
                        files += await runner.files(job)
                    else:
                        failed += 1
        return files, f"Batch `{batch_id}`: {done} completed, {failed} failed or cancelled."

    button.click(
        run_batch, [prompts, upload, workflow], [gallery, info], api_name="batch",
        concurrency_limit=None,
    )  # fmt: skip


def _history_tab(runner: Runner) -> tuple[Any, list[Any], Any]:
    with gr.Row():
        everyone = gr.Checkbox(label="Everyone's jobs (admins)", value=False, visible=False)
        refresh = gr.Button("Refresh")
        job_id = gr.Textbox(label="Selected job", interactive=False)
        rerun = gr.Button("Re-run with the same parameters")
    table = gr.Dataframe(
        headers=HISTORY_COLUMNS, interactive=False, wrap=True, elem_id="history-table"
    )
    with gr.Row():
        gallery = gr.Gallery(label="Recent images", columns=6)
        files = gr.File(label="Download the selected job's files", file_count="multiple")
    with gr.Row():
        again_image = gr.Image(
            label="Re-run", type="filepath", interactive=False, height=320, elem_id="rerun-image"
        )
        info = gr.Markdown(elem_classes=["job-info"], elem_id="rerun-info")
    again_job = gr.State("")

    async def load(all_users: bool, request: gr.Request) -> tuple[list[list[Any]], list[str], Any]:
        principal = await runner.principal(request)
        all_users = bool(all_users) and principal.is_admin
        owner_id = None if all_users else principal.user_id
        found = await runner.run(
            lambda s: list_jobs(s, owner_id=owner_id, limit=50, with_details=True),
            readonly=True,
        )
        names = await runner.run(
            lambda s: {u.id: u.username for u in list_users(s)}, readonly=True
        ) if all_users else {principal.user_id: principal.username}  # fmt: skip
        table_rows, images = [], []
        for job in found:
            table_rows.append(
                [
                    job.id,
                    names.get(job.owner_id, "?"),
                    job.workflow,
                    job.status,
                    job.node or "",
                    job.created_at.strftime("%Y-%m-%d %H:%M:%S"),
                    str(job.params.get("prompt", ""))[:80],
                    (job.error or "")[:80],
                ]
            )
            if job.status == "completed" and len(images) < 24:
                images += [
                    f for f in await runner.files(job) if f.endswith((".png", ".jpg", ".webp"))
                ]
        return table_rows, images, gr.Checkbox(visible=principal.is_admin)

    async def select(evt: gr.SelectData, table_: Any, request: gr.Request) -> tuple[str, list[str]]:
        row = evt.index[0] if isinstance(evt.index, list | tuple) else evt.index
        values = table_.values.tolist() if hasattr(table_, "values") else table_
        chosen = str(values[row][0])
        job = await runner.get(chosen, await runner.principal(request))
        return chosen, await runner.files(job)

    async def again(
        chosen: str,
        request: gr.Request,
        progress: gr.Progress = gr.Progress(),  # noqa: B008 (Gradio's idiom)
    ) -> AsyncIterator[tuple[Any, str, str]]:
        if not chosen:
            raise gr.Error("Select a job in the table first.")
        old = await runner.get(chosen, await runner.principal(request))
        async for shown in _run_job(runner, request, progress, old.workflow, dict(old.request)):
            yield shown

    refresh.click(load, [everyone], [table, gallery, everyone], concurrency_limit=None)
    everyone.change(load, [everyone], [table, gallery, everyone], concurrency_limit=None)
    table.select(select, [table], [job_id, files], concurrency_limit=None)
    rerun.click(
        again, [job_id], [again_image, info, again_job], concurrency_limit=None,
        show_progress_on=[again_image],
    )  # fmt: skip
    return load, [table, gallery, everyone], everyone


def build_app(settings: Settings, *, gateway: Gateway | None = None) -> gr.Blocks:
    """The UI over a gateway's shared objects (the web process passes its own).

    Many people use one web process at once: no listener is limited to one run at a time
    (Gradio's default); a job waits on the fleet, never on another person's job."""
    runner = Runner(gateway or _gateway(settings))
    with gr.Blocks(title=TITLE, analytics_enabled=False) as demo:
        demo.runner = runner  # type: ignore[attr-defined]
        with gr.Row():
            gr.Markdown(f"## {TITLE}")
            who = gr.Markdown(elem_id="whoami")
            gr.Button("Log out", link="/logout", size="sm", scale=0)
        with gr.Tab("Text to image", id="t2i"):
            _text_tab(runner, "sd15-basic", size=512)
        with gr.Tab("SDXL", id="sdxl"):
            _text_tab(runner, "sdxl-basic", size=1024)
        with gr.Tab("Image to video", id="i2v"):
            _video_tab(runner)
        with gr.Tab("Workflow", id="workflow"):
            _workflow_tab(runner)
        with gr.Tab("Batch", id="batch"):
            _batch_tab(runner)
        with gr.Tab("My history", id="history") as history:
            load_history, history_outputs, everyone = _history_tab(runner)
        with gr.Tab("Admin", id="admin", visible=False) as admin_tab:
            load_nodes, nodes_table = build_admin(runner)

        async def whoami(request: gr.Request) -> tuple[str, Any]:
            principal = await runner.principal(request)
            role = " (admin)" if principal.is_admin else ""
            return f"Logged in as **{principal.username}**{role}", gr.Tab(
                visible=principal.is_admin
            )

        demo.load(whoami, None, [who, admin_tab], concurrency_limit=None)
        history.select(load_history, [everyone], history_outputs, concurrency_limit=None)
        admin_tab.select(load_nodes, None, [nodes_table], concurrency_limit=None)
    demo.max_threads = MAX_ACTIVE_EVENTS
    demo.queue(default_concurrency_limit=None)
    return demo
