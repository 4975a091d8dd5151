"""Errors as JSON: every 4xx names the field and the reason; nothing surfaces as a bare 500.

Body of every error response (`ErrorBody`)::

    {"error": "invalid_parameter", "message": "width: must be a multiple of 8 ...",
     "field": "width", "errors": [{"field": "width", "message": "..."}]}

Mapping: `ParamError`, `InvalidInput`, `InputError`, `WebhookError`, request validation → 422;
`UnknownWorkflowError` → 422 with field `workflow` (404 where the workflow is the path);
`NotFound` → 404; `Conflict` → 409; `QuotaExceeded` → 429; HTTP errors keep their status. A raw
graph refused (`GraphError`) → 400 with ComfyUI's own body (`{"error": {type, message, details,
extra_info}, "node_errors": {…}}`), as ComfyUI's POST /prompt answers; no `raw_graphs`
permission → 403.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from comfyfleet.catalog import ParamError, UnknownWorkflowError
from comfyfleet.catalog.raw import GraphError
from comfyfleet.jobs.graphs import GraphsNotAllowed
from comfyfleet.jobs.inputs import InputError
from comfyfleet.jobs.webhooks import WebhookError
from comfyfleet.store import Conflict, InvalidInput, NotFound, QuotaExceeded

log = logging.getLogger(__name__)


class FieldError(BaseModel):
    field: str | None = None
    message: str


class ErrorBody(BaseModel):
    """The JSON body of every error response."""

    error: str = Field(description="Machine-readable code, e.g. invalid_parameter.")
    message: str = Field(description="What was wrong and what is allowed, for people.")
    field: str | None = Field(default=None, description="The request field at fault, if any.")
    errors: list[FieldError] = Field(default_factory=list)
    detail: dict[str, Any] | None = None


class ApiError(Exception):
    """Raise from a route for a JSON error with a status, a code and optionally a field."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        field: str | None = None,
        detail: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.field, self.detail, self.headers = field, detail, headers


def error_response(
    status: int,
    code: str,
    message: str,
    *,
    field: str | None = None,
    errors: list[FieldError] | None = None,
    detail: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body = ErrorBody(
        error=code,
        message=message,
        field=field,
        errors=errors if errors is not None else [FieldError(field=field, message=message)],
        detail=detail,
    )
    return JSONResponse(body.model_dump(exclude_none=True), status_code=status, headers=headers)


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorBody, "description": "No valid bearer token."},
    403: {"model": ErrorBody, "description": "Authenticated, but not allowed."},
    404: {"model": ErrorBody, "description": "No such object (or not yours)."},
    413: {"model": ErrorBody, "description": "Request body too large."},
    422: {"model": ErrorBody, "description": "Invalid input; `field` names it."},
}
"""Responses every authenticated route may give (documented in OpenAPI)."""


def _loc_field(loc: tuple[Any, ...] | list[Any]) -> str | None:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header", "cookie")]
    return ".".join(parts) or (str(loc[0]) if loc else None)


_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    409: "conflict",
    413: "too_large",
    415: "unsupported_media_type",
    429: "quota_exceeded",
}


def install(app: FastAPI, *, allowed_methods: Callable[[str], list[str]] | None = None) -> None:
    """Register the handlers on the app. `allowed_methods(path)` fills `Allow` on 405s."""

    @app.exception_handler(ApiError)
    async def _api(_: Request, exc: ApiError) -> JSONResponse:
        return error_response(
            exc.status,
            exc.code,
            exc.message,
            field=exc.field,
            detail=exc.detail,
            headers=exc.headers,
        )

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = []
        for err in exc.errors():
            field = _loc_field(err.get("loc", ()))
            errors.append(FieldError(field=field, message=str(err.get("msg", "invalid"))))
        first = errors[0] if errors else FieldError(message="invalid request")
        message = f"{first.field}: {first.message}" if first.field else first.message
        return error_response(422, "invalid_request", message, field=first.field, errors=errors)

    @app.exception_handler(ParamError)
    async def _param(_: Request, exc: ParamError) -> JSONResponse:
        return error_response(
            422,
            "invalid_parameter",
            str(exc),
            field=exc.param,
            errors=[FieldError(field=exc.param, message=exc.message)],
        )

    @app.exception_handler(UnknownWorkflowError)
    async def _workflow(_: Request, exc: UnknownWorkflowError) -> JSONResponse:
        return error_response(
            422, "unknown_workflow", str(exc), field="workflow", detail={"known": exc.known}
        )

    @app.exception_handler(InputError)
    async def _input(_: Request, exc: InputError) -> JSONResponse:
        return error_response(422, "invalid_input", str(exc), field="image")

    @app.exception_handler(WebhookError)
    async def _webhook(_: Request, exc: WebhookError) -> JSONResponse:
        return error_response(
            422, "invalid_webhook_url", f"webhook_url: {exc}", field="webhook_url"
        )

    @app.exception_handler(InvalidInput)
    async def _invalid(_: Request, exc: InvalidInput) -> JSONResponse:
        message = str(exc)
        field = message.split(" ", 1)[0].rstrip(":") if message else None
        return error_response(422, "invalid_input", message, field=field)

    @app.exception_handler(NotFound)
    async def _not_found(_: Request, exc: NotFound) -> JSONResponse:
        return error_response(404, "not_found", str(exc))

    @app.exception_handler(Conflict)
    async def _conflict(_: Request, exc: Conflict) -> JSONResponse:
        return error_response(409, "conflict", str(exc))

    @app.exception_handler(GraphError)
    async def _graph(_: Request, exc: GraphError) -> JSONResponse:
        return JSONResponse(exc.body, status_code=400)  # ComfyUI's own shape (POST /prompt)

    @app.exception_handler(GraphsNotAllowed)
    async def _graphs_not_allowed(_: Request, exc: GraphsNotAllowed) -> JSONResponse:
        return error_response(403, "forbidden", str(exc), field="graph")

    @app.exception_handler(QuotaExceeded)
    async def _quota(_: Request, exc: QuotaExceeded) -> JSONResponse:
        return error_response(
            429,
            "quota_exceeded",
            str(exc),
            detail={
                "kind": exc.kind,
                "limit": exc.limit,
                "current": exc.current,
                "scope": exc.scope,
            },
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        headers = dict(getattr(exc, "headers", None) or {})
        if exc.status_code == 400:
            # the framework's answer to a body it cannot decode (broken JSON encoding, bad
            # multipart): the same 422 as any other invalid body
            return error_response(422, "invalid_request", f"body: {message}", field="body")
        if exc.status_code == 405 and allowed_methods is not None:
            methods = allowed_methods(request.url.path)
            if methods:
                headers["Allow"] = ", ".join(methods)
        code = _CODES.get(exc.status_code, "error")
        return error_response(exc.status_code, code, message, headers=headers or None)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(
            500, "internal_error", "internal error; the gateway log has the details"
        )


async def send_error(
    send: Any, status: int, error: str, message: str, *, field: str | None = None,
    errors: list[dict[str, Any]] | None = None, headers: list[tuple[bytes, bytes]] | None = None,
) -> None:  # fmt: skip
    """An error answer in the gateway's JSON shape, sent from ASGI middleware (before any route
    runs)."""
    import json

    body = json.dumps(
        {"error": error, "field": field, "message": message, "errors": errors or []}
    ).encode()
    await send({
        "type": "http.response.start", "status": status,
        "headers": [(b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()), *(headers or [])],
    })  # fmt: skip
    await send({"type": "http.response.body", "body": body})
