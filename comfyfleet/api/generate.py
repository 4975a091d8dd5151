"""Per-type task routes, with the old service's bodies: text-to-image, text-to-image-sdxl,
image-to-video (JSON, or multipart with the image in the same request).

Flat parameters (`{"prompt", "width", …, "workflow_name": "sdxl_basic"}`), `duration` x `fps` =
frames for image-to-video, `image_path` as the old name of its input image. They all go through
`tasks.submit_job` (contract validation, input images, quotas) like `POST /api/v2/tasks`.
"""

from __future__ import annotations

import asyncio
import math
from typing import Annotated, Any

from fastapi import APIRouter, File, Form, Request, Response, UploadFile

from comfyfleet.api.deps import CurrentUser, Gateway, GatewayDep
from comfyfleet.api.errors import ERROR_RESPONSES, ApiError
from comfyfleet.api.images import store_image
from comfyfleet.api.schemas import ImageToVideoRequest, SubmittedJob, TextToImageRequest
from comfyfleet.api.tasks import (
    SUBMIT_RESPONSES,
    TimeoutQuery,
    WaitQuery,
    find_workflow,
    respond,
    submit_job,
)
from comfyfleet.auth import Principal
from comfyfleet.catalog import ParamError

router = APIRouter(tags=["tasks"], responses=ERROR_RESPONSES)
PARAM_ALIASES = {"cfg_scale": "cfg", "sampler_name": "sampler", "guidance_scale": "cfg"}
_COMMON = ("priority", "webhook_url", "pinned_node", "workflow", "workflow_name")


def _flat_params(body: Any, exclude: tuple[str, ...] = _COMMON) -> dict[str, Any]:
    data = body.model_dump(exclude_none=True)
    params: dict[str, Any] = {}
    for key, value in data.items():
        if key in exclude:
            continue
        params[PARAM_ALIASES.get(key, key)] = value
    return params


async def _legacy(
    capability: str,
    body: Any,
    params: dict[str, Any],
    gateway: Gateway,
    principal: Principal,
    request: Request,
    response: Response,
    wait: bool,
    timeout: float,
) -> SubmittedJob:
    field = "workflow_name" if body.workflow_name and not body.workflow else "workflow"
    name = body.workflow or body.workflow_name
    workflow = find_workflow(gateway, name, capability=capability, field=field)
    job, secret = await asyncio.to_thread(
        submit_job,
        gateway,
        principal,
        workflow,
        params,
        priority=body.priority,
        webhook_url=body.webhook_url,
        pinned_node=body.pinned_node,
    )
    return await respond(
        gateway, request, response, principal, job, secret, wait=wait, timeout=timeout
    )


def _text_route(path: str, capability: str, doc: str) -> None:
    """One flat-body text-to-image route of the old service (SD1.5 and SDXL share the body)."""

    async def handler(
        body: TextToImageRequest,
        gateway: GatewayDep,
        principal: CurrentUser,
        request: Request,
        response: Response,
        wait: WaitQuery = False,
        timeout: TimeoutQuery = 60.0,
    ) -> SubmittedJob:
        return await _legacy(
            capability, body, _flat_params(body), gateway, principal, request, response, wait,
            timeout,
        )  # fmt: skip

    handler.__name__ = handler.__qualname__ = capability
    handler.__doc__ = doc
    router.post(path, status_code=202, response_model=SubmittedJob, responses=SUBMIT_RESPONSES)(
        handler
    )


_text_route(
    "/api/v2/tasks/text-to-image",
    "text_to_image",
    "SD1.5 text to image (default workflow `sd15-basic`); the old service's flat body.",
)
_text_route(
    "/api/v2/tasks/text-to-image-sdxl",
    "text_to_image_sdxl",
    "SDXL text to image (default `sdxl-basic`; `workflow_name: sdxl_basic` works too).",
)


def _video_params(body: ImageToVideoRequest) -> dict[str, Any]:
    params = _flat_params(body, (*_COMMON, "image", "image_path", "duration"))
    image = body.image if body.image is not None else body.image_path
    if image is None:
        raise ApiError(
            422,
            "missing_image",
            "image: required (an input ref, a gateway input URL or base64; "
            "`image_path` is the old name)",
            field="image",
        )
    params["image"] = image
    if body.duration is not None:
        if body.frames is not None:
            raise ApiError(
                422,
                "invalid_request",
                "duration: give duration or frames, not both",
                field="duration",
            )
        fps = body.fps if body.fps is not None else 6
        product = body.duration * fps
        if not math.isfinite(product):
            raise ApiError(
                422,
                "invalid_parameter",
                f"duration: duration x fps ({body.duration:g} x {fps}) is not a finite "
                "number of frames",
                field="duration",
            )
        frames = round(product)
        if frames < 1:
            raise ApiError(
                422,
                "invalid_parameter",
                "duration: duration x fps must give at least 1 frame",
                field="duration",
            )
        params["frames"] = frames
    return params


@router.post(
    "/api/v2/tasks/image-to-video",
    status_code=202,
    response_model=SubmittedJob,
    responses=SUBMIT_RESPONSES,
)
async def image_to_video(
    body: ImageToVideoRequest,
    gateway: GatewayDep,
    principal: CurrentUser,
    request: Request,
    response: Response,
    wait: WaitQuery = False,
    timeout: TimeoutQuery = 60.0,
) -> SubmittedJob:
    """SVD image to video (default `svd-basic`). frames = `duration` x `fps` (old body)."""
    params = _video_params(body)
    try:
        return await _legacy(
            "image_to_video", body, params, gateway, principal, request, response, wait, timeout
        )
    except ParamError as exc:
        if exc.param == "frames" and body.duration is not None:
            raise ApiError(
                422,
                "invalid_parameter",
                f"duration: duration x fps = {params['frames']} frames; {exc.message}",
                field="duration",
            ) from None
        raise


@router.post(
    "/api/v2/tasks/image-to-video/upload",
    status_code=202,
    response_model=SubmittedJob,
    responses=SUBMIT_RESPONSES,
)
async def image_to_video_upload(
    gateway: GatewayDep,
    principal: CurrentUser,
    request: Request,
    response: Response,
    image: Annotated[UploadFile, File(description="The input image (PNG, JPEG, WEBP…).")],
    frames: Annotated[int | None, Form()] = None,
    fps: Annotated[int | None, Form()] = None,
    duration: Annotated[float | None, Form()] = None,
    workflow: Annotated[str | None, Form(max_length=128)] = None,
    priority: Annotated[str, Form(pattern="^(high|normal|low)$")] = "normal",
    webhook_url: Annotated[str | None, Form(max_length=2000)] = None,
    wait: WaitQuery = False,
    timeout: TimeoutQuery = 60.0,
) -> SubmittedJob:
    """Image to video with the image uploaded in the same request (multipart/form-data)."""
    data = await image.read()
    stored = await asyncio.to_thread(store_image, gateway.inputs, data, field="image")
    body = ImageToVideoRequest(
        image=stored.ref,
        frames=frames,
        fps=fps,
        duration=duration,
        workflow=workflow,
        priority=priority,
        webhook_url=webhook_url,  # type: ignore[arg-type]
    )
    return await image_to_video(body, gateway, principal, request, response, wait, timeout)
