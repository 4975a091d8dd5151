"""What can go wrong when talking to a ComfyUI node, as a small tree of exceptions.

    ComfyUIError                 anything raised by this package
    ├── NodeUnavailable          the node did not answer: connect refused, timeout, 5xx, socket
    │                            dropped and not back within the budget — retry (same node, briefly)
    ├── PromptRejected           validation failed (HTTP 400): a deterministic error, do not retry
    ├── ExecutionFailed          a node raised while running the prompt: do not retry
    ├── Interrupted              the prompt was interrupted (POST /interrupt)
    └── PromptLost               the node no longer knows the prompt (it restarted): fail over

The client translates transport errors into these at the boundary (``raise ... from exc``), so
callers never see ``httpx`` or ``websockets`` exceptions. The exceptions pickle (Prefect may store
a failed state's exception).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

_MAX_DETAILS = 200


class ComfyUIError(Exception):
    """Base class of every error raised by :mod:`comfyfleet.comfyui`."""

    status_code: int | None = None
    """The HTTP status of the answer that caused it, when there was one."""


class NodeUnavailable(ComfyUIError):
    """The node did not answer (connect refused, timeout, HTTP 5xx, socket gone). Retryable."""

    def __init__(self, message: str, *, url: str | None = None, status_code: int | None = None):
        super().__init__(message)
        self.url = url
        self.status_code = status_code


@dataclass(frozen=True)
class InputProblem:
    """One entry of a rejected prompt's ``node_errors``, flattened."""

    node_id: str
    class_type: str | None
    input_name: str | None
    type: str
    message: str
    details: str

    def __str__(self) -> str:
        where = f"node {self.node_id}"
        if self.class_type:
            where += f" ({self.class_type})"
        if self.input_name:
            where += f" input {self.input_name!r}"
        text = self.message
        if self.details and self.details != self.input_name:
            details = self.details
            if len(details) > _MAX_DETAILS:
                details = details[: _MAX_DETAILS - 1] + "…"
            text = f"{text}: {details}"
        return f"{where}: {text}"


class PromptRejected(ComfyUIError):
    """ComfyUI refused the prompt (HTTP 400 from POST /prompt).

    ``error`` is the top-level ``{type, message, details, extra_info}``; ``node_errors`` maps node
    id to ``{errors: [...], class_type, dependent_outputs}``. An unknown ``class_type`` or a graph
    without output nodes is reported in ``error`` only, with empty ``node_errors``.
    """

    def __init__(self, error: dict[str, Any], node_errors: dict[str, Any] | None = None):
        super().__init__(error, node_errors or {})
        self.error = error
        self.node_errors = node_errors or {}

    @property
    def error_type(self) -> str | None:
        return self.error.get("type")

    @property
    def problems(self) -> list[InputProblem]:
        out: list[InputProblem] = []
        for node_id, entry in self.node_errors.items():
            entry = entry if isinstance(entry, dict) else {}
            for err in entry.get("errors") or []:
                extra = err.get("extra_info") or {}
                out.append(
                    InputProblem(
                        node_id=str(node_id),
                        class_type=entry.get("class_type"),
                        input_name=extra.get("input_name"),
                        type=str(err.get("type", "")),
                        message=str(err.get("message", "")),
                        details=str(err.get("details") or ""),
                    )
                )
        return out

    def __str__(self) -> str:
        message = str(self.error.get("message") or "prompt rejected")
        details = str(self.error.get("details") or "")
        problems = self.problems
        head = f"prompt rejected ({self.error_type}): {message}"
        if details and not problems:
            head += f" {details}"
        return "\n  ".join([head, *(str(p) for p in problems)])


class ExecutionFailed(ComfyUIError):
    """A node raised while the prompt ran (``execution_error``)."""

    def __init__(
        self,
        node_id: str | None,
        node_type: str | None,
        exception_type: str,
        exception_message: str,
        *,
        prompt_id: str | None = None,
        traceback: list[str] | None = None,
        executed: list[str] | None = None,
    ):
        super().__init__(node_id, node_type, exception_type, exception_message)
        self.node_id = node_id
        self.node_type = node_type
        self.exception_type = exception_type
        self.exception_message = exception_message
        self.prompt_id = prompt_id
        self.traceback = traceback or []
        self.executed = executed or []

    def __str__(self) -> str:
        kind = self.exception_type or "an error"
        return f"node {self.node_id} ({self.node_type}) raised {kind}: " + (
            self.exception_message.strip()
        )


class Interrupted(ComfyUIError):
    """The prompt was interrupted while ``node_id`` ran (``execution_interrupted``)."""

    def __init__(self, node_id: str | None, node_type: str | None, *, prompt_id: str | None = None):
        super().__init__(node_id, node_type)
        self.node_id = node_id
        self.node_type = node_type
        self.prompt_id = prompt_id

    def __str__(self) -> str:
        return f"prompt {self.prompt_id} interrupted at node {self.node_id} ({self.node_type})"


class PromptLost(ComfyUIError):
    """The node does not know the prompt any more (not queued, running or in history): it
    restarted, and ComfyUI keeps its queue and history in memory only. A node fault: run the
    prompt again, preferably elsewhere."""

    def __init__(self, prompt_id: str, reason: str = "unknown to the node"):
        super().__init__(prompt_id, reason)
        self.prompt_id = prompt_id
        self.reason = reason

    def __str__(self) -> str:
        return f"prompt {self.prompt_id} lost: {self.reason}"


def is_transient(exc: BaseException) -> bool:
    """True for faults worth retrying on the same node soon: :class:`NodeUnavailable` (also when it
    is the cause of ``exc``), and bare ``ConnectionError``/``TimeoutError``. Deterministic errors
    (rejected prompt, node exception, interruption) and :class:`PromptLost` are not transient."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, NodeUnavailable):
            return True
        if isinstance(current, ComfyUIError):
            return False
        if isinstance(current, ConnectionError | TimeoutError):
            return True
        current = current.__cause__
    return False


def is_node_fault(exc: BaseException) -> bool:
    """True when the node, not the prompt, is to blame: unavailable, or it forgot the prompt."""
    return isinstance(exc, NodeUnavailable | PromptLost)


def retry_if_transient(task: Any, task_run: Any, state: Any) -> bool:
    """A Prefect ``retry_condition_fn``: retry only if the failed state holds a transient error."""
    exc = getattr(state, "data", None)
    return isinstance(exc, BaseException) and is_transient(exc)


__all__ = [
    "ComfyUIError",
    "ExecutionFailed",
    "InputProblem",
    "Interrupted",
    "NodeUnavailable",
    "PromptLost",
    "PromptRejected",
    "is_node_fault",
    "is_transient",
    "retry_if_transient",
]
