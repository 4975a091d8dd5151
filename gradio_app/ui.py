"""The Gradio UI: `build_app(settings) -> gr.Blocks`.

Tabs: Text to image (SD1.5), SDXL, Image to video, Batch, My history, and Admin (shown to admins
only; every admin action checks the role again on the server). Each generation shows a live
progress bar driven by the job's real ComfyUI steps and the node it runs on, then the result.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gradio as gr

from comfyfleet.api.deps import Gateway
from comfyfleet.settings import Settings
from comfyfleet.store import list_jobs
from gradio_app.admin_ui import build_admin
from gradio_app.runner import Runner

HISTORY_COLUMNS = ["id", "workflow", "status", "node", "created", "prompt", "error"]
TITLE = "ComfyFleet"


def _gateway(settings: Settings) -> Gateway:
    from comfyfleet.api import create_app, gateway_of

    return gateway_of(create_app(settings))


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
            image = gr.Image(label="Result", type="filepath", interactive=False, height=420)
            info = gr.Markdown()

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
    ) -> tuple[str | None, str]:
        if not (prompt_ or "").strip():
            raise gr.Error("Write a prompt first.")
        principal = runner.principal(request)
        params: dict[str, Any] = {
            "prompt": prompt_,
            "negative_prompt": negative_ or None,
            "width": int(width_),
            "height": int(height_),
            "steps": int(steps_),
            "seed": int(seed_),
        }
        params = {k: v for k, v in params.items() if v is not None}
        job = runner.submit(principal, workflow, params, priority=priority_)
        job = await runner.follow(job, principal, progress)
        files = runner.files(job)
        return (files[0] if files else None), runner.summary(job)

    button.click(
        generate,
        [prompt, negative, width, height, steps, seed, priority],
        [image, info],
        api_name=f"generate_{workflow.replace('-', '_')}",
    )


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
            video = gr.Image(
                label="Video (animated WEBP)", type="filepath", interactive=False, height=420
            )
            file = gr.File(label="Download")
            info = gr.Markdown()

    async def animate(
        path: str | None,
        frames_: float,
        fps_: float,
        request: gr.Request,
        progress: gr.Progress = gr.Progress(),  # noqa: B008 (Gradio's idiom)
    ) -> tuple[Any, Any, str]:
        if not path:
            raise gr.Error("Upload an image first.")
        principal = runner.principal(request)
        from comfyfleet.api.images import store_image

        try:
            stored = store_image(runner.gateway.inputs, Path(path).read_bytes())
        except Exception as exc:  # ApiError with a message for people
            raise gr.Error(getattr(exc, "message", str(exc))) from None
        params = {"image": stored.ref, "frames": int(frames_), "fps": int(fps_)}
        job = runner.submit(principal, "svd-basic", params)
        job = await runner.follow(job, principal, progress)
        files = runner.files(job)
        return (files[0] if files else None), files, runner.summary(job)

    button.click(animate, [source, frames, fps], [video, file, info], api_name="animate")


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
        import asyncio
        import uuid

        lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
        if path:
            lines += [
                ln.strip()
                for ln in Path(path).read_text(errors="replace").splitlines()
                if ln.strip()
            ]
        if not lines:
            raise gr.Error("Give at least one prompt.")
        if len(lines) > 100:
            raise gr.Error("At most 100 prompts per batch.")
        principal = runner.principal(request)
        batch_id = uuid.uuid4().hex
        submitted = [
            runner.submit(principal, workflow_, {"prompt": p}, batch_id=batch_id) for p in lines
        ]
        done, failed, files = 0, 0, []
        pending = {job.id for job in submitted}
        from comfyfleet import jobs as jobs_api

        while pending:
            progress((done + failed, len(submitted)), desc="jobs finished", unit="job")
            await asyncio.sleep(0.5)
            for job_id in list(pending):
                job = await asyncio.to_thread(jobs_api.get, runner.db, job_id, principal=principal)
                if job.is_terminal:
                    pending.discard(job_id)
                    if job.status == "completed":
                        done += 1
                        files += runner.files(job)
                    else:
                        failed += 1
        return files, f"Batch `{batch_id}`: {done} completed, {failed} failed or cancelled."

    button.click(run_batch, [prompts, upload, workflow], [gallery, info], api_name="batch")


def _history_tab(runner: Runner) -> tuple[Any, list[Any]]:
    with gr.Row():
        refresh = gr.Button("Refresh")
        job_id = gr.Textbox(label="Selected job", interactive=False)
        rerun = gr.Button("Re-run with the same parameters")
    table = gr.Dataframe(headers=HISTORY_COLUMNS, interactive=False, wrap=True)
    with gr.Row():
        gallery = gr.Gallery(label="Recent images", columns=6)
        files = gr.File(label="Download the selected job's files", file_count="multiple")
    info = gr.Markdown()

    def load(request: gr.Request) -> tuple[list[list[Any]], list[str]]:
        principal = runner.principal(request)
        rows = runner.db.run(
            lambda s: list_jobs(s, owner_id=principal.user_id, limit=50, with_details=True),
            readonly=True,
        )
        table_rows, images = [], []
        for job in rows:
            table_rows.append(
                [
                    job.id,
                    job.workflow,
                    job.status,
                    job.node or "",
                    job.created_at.strftime("%Y-%m-%d %H:%M:%S"),
                    str(job.params.get("prompt", ""))[:80],
                    (job.error or "")[:80],
                ]
            )
            if job.status == "completed" and len(images) < 24:
                images += [f for f in runner.files(job) if f.endswith((".png", ".jpg", ".webp"))]
        return table_rows, images

    def select(evt: gr.SelectData, request: gr.Request) -> tuple[str, list[str]]:
        from comfyfleet import jobs as jobs_api

        row = evt.index[0] if isinstance(evt.index, list | tuple) else evt.index
        rows, _ = load(request)
        chosen = rows[row][0]
        job = jobs_api.get(runner.db, chosen, principal=runner.principal(request))
        return chosen, runner.files(job)

    async def again(
        chosen: str,
        request: gr.Request,
        progress: gr.Progress = gr.Progress(),  # noqa: B008 (Gradio's idiom)
    ) -> tuple[list[str], str]:
        from comfyfleet import jobs as jobs_api

        if not chosen:
            raise gr.Error("Select a job in the table first.")
        principal = runner.principal(request)
        old = jobs_api.get(runner.db, chosen, principal=principal)
        job = runner.submit(principal, old.workflow, dict(old.request))
        job = await runner.follow(job, principal, progress)
        return runner.files(job), runner.summary(job)

    refresh.click(load, None, [table, gallery])
    table.select(select, None, [job_id, files])
    rerun.click(again, [job_id], [files, info])
    return load, [table, gallery]


def build_app(settings: Settings, *, gateway: Gateway | None = None) -> gr.Blocks:
    """The UI over a gateway's shared objects (the web process passes its own)."""
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
        with gr.Tab("Batch", id="batch"):
            _batch_tab(runner)
        with gr.Tab("My history", id="history") as history:
            load_history, history_outputs = _history_tab(runner)
        with gr.Tab("Admin", id="admin", visible=False) as admin_tab:
            load_nodes, nodes_table = build_admin(runner)

        def whoami(request: gr.Request) -> tuple[str, Any]:
            principal = runner.principal(request)
            role = " (admin)" if principal.is_admin else ""
            return f"Logged in as **{principal.username}**{role}", gr.Tab(
                visible=principal.is_admin
            )

        demo.load(whoami, None, [who, admin_tab])
        history.select(load_history, None, history_outputs)
        admin_tab.select(load_nodes, None, [nodes_table])
    return demo
