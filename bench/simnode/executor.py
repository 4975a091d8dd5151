"""Running one prompt on a simulated node, message for message as ComfyUI 0.3.75's
`PromptExecutor.execute_async` sends them.

`execution_start`, `execution_cached`; per node a `progress_state` (running), `executing`, the
node's own `progress_state`/`progress`/preview frames, `executed` when it has UI output, a
`progress_state` (finished); cached output nodes only replay `executed`; then
`execution_success`, or `execution_error` / `execution_interrupted` at the failing node. Who gets
what is ComfyUI's rule: job messages go to the prompt's `client_id` session and are not sent at
all without one, except `progress_state`, `progress`, preview frames and `execution_interrupted`,
which then go to every session. What each class does (sleep, save a file, fail) is
`behaviours.py`.
"""

from __future__ import annotations

import time
import traceback
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from bench.simnode import behaviours, media
from bench.simnode.catalog import SAMPLERS, default_value, is_output
from bench.simnode.graph import cache_keys, execution_order, is_link
from bench.simnode.validate import full_type_name

if TYPE_CHECKING:
    from bench.simnode.node import QueueItem, SimNode


class Interrupted(Exception):
    """ComfyUI's `InterruptProcessingException`: `/interrupt` was noticed."""


@dataclass(frozen=True)
class Outcome:
    """What a prompt left for its history entry."""

    success: bool
    messages: list[tuple[str, dict[str, Any]]]
    outputs: dict[str, Any]
    meta: dict[str, Any]


def now_ms() -> int:
    """ComfyUI's timestamps: milliseconds since the epoch."""
    return int(time.time() * 1000)


def _format_value(value: Any) -> Any:
    if value is None or isinstance(value, int | float | bool | str):
        return value
    return str(value)


class Run:
    """One prompt being executed: what the behaviours see and the messages it sends."""

    def __init__(self, node: SimNode, item: QueueItem) -> None:
        self.node = node
        self.prompt_id: str = item[1]
        self.prompt: dict[str, dict[str, Any]] = item[2]
        self.outputs: list[str] = list(item[4])
        self.client_id: str | None = item[3].get("client_id")
        self.messages: list[tuple[str, dict[str, Any]]] = []
        self.executed: list[str] = []
        self.ui: dict[str, dict[str, Any]] = {}
        self.progress: dict[str, dict[str, Any]] = {}
        self.work_s: dict[str, float] = {}

    # -- what behaviours use -------------------------------------------------------------------

    def value(self, node_id: str, name: str) -> Any:
        """A literal input of a node, else its declared default (None for a link)."""
        inputs = self.prompt[node_id].get("inputs", {})
        if name in inputs:
            value = inputs[name]
            return None if is_link(value) else value
        info = self.node.catalog.get(self.prompt[node_id]["class_type"])
        return None if info is None else default_value(info, name)

    def check_interrupt(self) -> None:
        if self.node.interrupted:
            raise Interrupted("Processing interrupted")

    def step(self, node_id: str, value: float, total: float, *, preview: bool = False) -> None:
        """ComfyUI's progress hook (`ProgressBar.update_absolute`): interrupt check, then
        `progress_state`, `progress` and, for samplers, a preview frame."""
        self.check_interrupt()
        value = min(value, total)
        self._state(node_id, "running", value, total)
        previews = preview and self.node.config.previews
        metadata = self.node.wants_preview_metadata(self.client_id)
        if previews and metadata:
            meta = {
                "node_id": node_id,
                "prompt_id": self.prompt_id,
                "display_node_id": node_id,
                "parent_node_id": None,
                "real_node_id": node_id,
            }
            self.node.send_binary(media.preview_frame(media.preview_jpeg(), meta), self.client_id)
        progress = {"value": value, "max": total, "prompt_id": self.prompt_id, "node": node_id}
        self.node.send("progress", progress, self.client_id)
        if previews and not metadata:
            self.node.send_binary(media.preview_frame(media.preview_jpeg(), None), self.client_id)

    # -- messages ------------------------------------------------------------------------------

    def add_message(self, event: str, data: dict[str, Any], *, broadcast: bool) -> None:
        data = {**data, "timestamp": now_ms()}
        self.messages.append((event, data))
        if self.client_id is not None or broadcast:
            self.node.send(event, data, self.client_id)

    def _state(self, node_id: str, state: str, value: float, total: float) -> None:
        self.progress[node_id] = {"state": state, "value": value, "max": total}
        nodes = {
            nid: {
                "value": entry["value"],
                "max": entry["max"],
                "state": entry["state"],
                "node_id": nid,
                "prompt_id": self.prompt_id,
                "display_node_id": nid,
                "parent_node_id": None,
                "real_node_id": nid,
            }
            for nid, entry in self.progress.items()
        }
        state = {"prompt_id": self.prompt_id, "nodes": nodes}
        self.node.send("progress_state", state, self.client_id)

    def _executed(self, node_id: str, output: dict[str, Any] | None) -> None:
        executed = {"node": node_id, "display_node": node_id, "output": output}
        self.node.send("executed", {**executed, "prompt_id": self.prompt_id}, self.client_id)

    def _finish(self, node_id: str) -> None:
        total = self.progress.get(node_id, {}).get("max", 1)
        self._state(node_id, "finished", total, total)

    # -- one node ------------------------------------------------------------------------------

    def replay(self, node_id: str, cached_ui: dict[str, Any] | None) -> None:
        """A cached node: its `executed` again (ComfyUI does this only with a client id)."""
        if self.client_id is not None:
            self._executed(node_id, (cached_ui or {}).get("output"))
            if cached_ui is not None:
                self.ui[node_id] = cached_ui
        self._finish(node_id)

    async def run_node(self, node_id: str) -> None:
        self._state(node_id, "running", 0.0, 1.0)
        if self.client_id is not None:
            self.node.last_node_id = node_id
            executing = {"node": node_id, "display_node": node_id, "prompt_id": self.prompt_id}
            self.node.send("executing", executing, self.client_id)
        self.check_interrupt()
        output = await behaviours.perform(self, node_id)
        if output:
            self.ui[node_id] = {
                "meta": {
                    "node_id": node_id,
                    "display_node": node_id,
                    "parent_node": None,
                    "real_node_id": node_id,
                },
                "output": output,
            }
            if self.client_id is not None:
                self._executed(node_id, output)
        self._finish(node_id)
        self.executed.append(node_id)

    def fail(self, node_id: str, exc: Exception) -> None:
        base = {
            "prompt_id": self.prompt_id,
            "node_id": node_id,
            "node_type": self.prompt[node_id]["class_type"],
            "executed": list(self.executed),
        }
        if isinstance(exc, Interrupted):
            self.add_message("execution_interrupted", base, broadcast=True)
            return
        details = {
            "exception_message": f"{exc}\n",
            "exception_type": full_type_name(type(exc)),
            "traceback": traceback.format_tb(exc.__traceback__),
            "current_inputs": self._current_inputs(node_id),
            "current_outputs": list(self.prompt),
        }
        self.add_message("execution_error", {**base, **details}, broadcast=False)

    def _current_inputs(self, node_id: str) -> dict[str, list[Any]]:
        """The failing node's inputs as ComfyUI formats them (a linked value as a string)."""
        node = self.prompt[node_id]
        info = self.node.catalog.get(node["class_type"]) or {"input": {}}
        names = [*info["input"].get("required", {}), *info["input"].get("optional", {})]
        inputs = node.get("inputs", {})
        formatted: dict[str, list[Any]] = {}
        for name in names:
            if name not in inputs:
                continue
            value = inputs[name]
            if is_link(value):
                source = self.prompt.get(value[0], {}).get("class_type", "?")
                formatted[name] = [f"<output {value[1]} of {source} node {value[0]}>"]
            else:
                formatted[name] = [_format_value(value)]
        return formatted


def _plan_work(run: Run, order: list[str], cached: set[str]) -> dict[str, float]:
    """Seconds of work per node: none when a test delay/fail node sets the pace, else the
    node's ``seconds`` (÷ speed) split over its sampler nodes, or its output nodes."""
    classes = {node_id: run.prompt[node_id]["class_type"] for node_id in run.prompt}
    if any(c in behaviours.PACED_CLASSES for c in classes.values()):
        return {}
    todo = [node_id for node_id in order if node_id not in cached]
    targets = [n for n in todo if classes[n] in SAMPLERS] or [
        n for n in todo if is_output(run.node.catalog.get(classes[n]))
    ]
    if not targets:
        return {}
    share = run.node.config.seconds / run.node.config.speed / len(targets)
    return dict.fromkeys(targets, share)


async def execute(node: SimNode, item: QueueItem) -> Outcome:
    """Run ``item`` to its end; the node's queue bookkeeping is the caller's."""
    run = Run(node, item)
    node.interrupted = False
    node.client_id = run.client_id
    run.add_message("execution_start", {"prompt_id": run.prompt_id}, broadcast=False)
    keys = cache_keys(run.prompt, salt=lambda node_id: behaviours.cache_salt(run, node_id))
    live = set(keys.values())
    node.cache = {key: ui for key, ui in node.cache.items() if key in live}
    cached = [node_id for node_id in run.prompt if keys[node_id] in node.cache]
    run.add_message(
        "execution_cached", {"nodes": cached, "prompt_id": run.prompt_id}, broadcast=False
    )

    def output_node(node_id: str) -> bool:
        return is_output(node.catalog.get(run.prompt[node_id]["class_type"]))

    order = execution_order(run.prompt, run.outputs, is_output=output_node, cached=set(cached))
    run.work_s = _plan_work(run, order, set(cached))
    success = True
    for node_id in order:
        key = keys[node_id]
        if key in node.cache:
            run.replay(node_id, node.cache[key])
            continue
        try:
            await run.run_node(node_id)
        except Exception as exc:
            run.fail(node_id, exc)
            success = False
            break
        node.cache[key] = run.ui.get(node_id)
    else:
        run.add_message("execution_success", {"prompt_id": run.prompt_id}, broadcast=False)
    node.last_node_id = None
    outputs = {node_id: ui["output"] for node_id, ui in run.ui.items()}
    meta = {node_id: ui["meta"] for node_id, ui in run.ui.items()}
    return Outcome(success=success, messages=run.messages, outputs=outputs, meta=meta)


__all__ = ["Interrupted", "Outcome", "Run", "execute", "now_ms"]
