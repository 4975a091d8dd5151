"""Translating ComfyUI's HTTP answers into results and errors (shared by the client)."""

from __future__ import annotations

import functools
import ssl
from typing import Any

import httpx

from comfyfleet.comfyui.errors import ComfyUIError, NodeUnavailable, PromptRejected
from comfyfleet.comfyui.results import FileRef, OutputFile, UploadedFile


@functools.cache
def tls_context() -> ssl.SSLContext:
    """The process's one TLS context for HTTP clients (`verify=tls_context()`). httpx builds a
    new one per client and loads the CA bundle into it: 65 ms of CPU on this machine kind, which a
    client per attempt paid on every job (bench/README.md, "A B1 profile")."""
    return httpx.create_ssl_context()


def raise_if_unavailable(response: httpx.Response) -> None:
    if response.status_code >= 500 or response.status_code in (408, 429):
        request = response.request
        raise NodeUnavailable(
            f"{request.method} {request.url}: HTTP {response.status_code}",
            url=str(request.url),
            status_code=response.status_code,
        )


def unexpected(response: httpx.Response) -> ComfyUIError:
    request = response.request
    try:
        body = response.text[:300]
    except httpx.ResponseNotRead:
        body = ""
    message = f"{request.method} {request.url}: HTTP {response.status_code} {body}"
    error = ComfyUIError(message.strip())
    error.status_code = response.status_code
    return error


def json_body(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError as exc:
        raise ComfyUIError(
            f"{response.request.method} {response.request.url}: not JSON: {response.text[:200]!r}"
        ) from exc


def rejection(response: httpx.Response) -> PromptRejected:
    try:
        payload = response.json()
    except ValueError:
        payload = None
    if isinstance(payload, dict) and ("error" in payload or "node_errors" in payload):
        error = payload.get("error")
        if not isinstance(error, dict):
            error = {"type": "error", "message": str(error)}
        node_errors = payload.get("node_errors")
        return PromptRejected(error, node_errors if isinstance(node_errors, dict) else {})
    return PromptRejected({"type": "http_400", "message": response.text[:500]}, {})


def view_params(file_ref: FileRef) -> dict[str, str]:
    if isinstance(file_ref, OutputFile):
        return file_ref.view_params()
    if isinstance(file_ref, UploadedFile):
        return {"filename": file_ref.name, "subfolder": file_ref.subfolder, "type": file_ref.type}
    filename = file_ref.get("filename") or file_ref.get("name")
    if not filename:
        raise ValueError(f"file reference without a filename: {file_ref!r}")
    return {
        "filename": str(filename),
        "subfolder": str(file_ref.get("subfolder") or ""),
        "type": str(file_ref.get("type") or "output"),
    }
