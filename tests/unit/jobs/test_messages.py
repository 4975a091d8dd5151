"""The message log of raw graph jobs (what /comfy/ws relays) and how an attempt prepares a raw
graph: sent as it is, its stored inputs synced, every file it makes an output."""

from __future__ import annotations

from pathlib import Path

import pytest

from comfyfleet.comfyui.messages import Executing, Progress, Status
from comfyfleet.jobs.attempts import AttemptInfo
from comfyfleet.jobs.messages import MessageLog, messages_path, read_messages
from comfyfleet.jobs.shift import _prepare
from comfyfleet.settings import Settings

JOB = "0123456789abcdef0123456789abcdef"


@pytest.fixture(autouse=True)
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    settings = Settings(store={"outputs_dir": str(tmp_path / "out")})
    monkeypatch.setattr("comfyfleet.jobs.messages.get_settings", lambda: settings)
    return tmp_path / "out"


def test_messages_are_kept_in_order_and_read_from_where_the_reader_was(store: Path) -> None:
    log = MessageLog(JOB)
    log.write(Status())  # not kept: the gateway says its own status
    log.write(Executing(node="1", prompt_id=f"{JOB}-1"))
    path = messages_path(JOB)
    first, offset = read_messages(path, 0)
    assert first == [
        {"type": "executing", "data": {"prompt_id": f"{JOB}-1", "node": "1", "display_node": None}}
    ]
    log.write(Progress(node="1", value=1, max=4, prompt_id=f"{JOB}-1"))
    log.close()
    with path.open("a") as fh:
        fh.write('{"type": "half a li')  # a line being written is not read yet
    more, offset2 = read_messages(path, offset)
    assert [m["type"] for m in more] == ["progress"] and more[0]["data"]["max"] == 4
    assert read_messages(path, offset2) == ([], offset2)
    assert path.parent == store / JOB


def test_a_raw_graph_is_sent_as_it_is_with_its_inputs_and_every_output() -> None:
    ref = f"comfyfleet/{'c' * 64}.png"
    graph = {"1": {"class_type": "LoadImage", "inputs": {"image": ref}},
             "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0]}}}  # fmt: skip
    info = AttemptInfo(JOB, f"{JOB}-1", "gpu-1", "graph",
                       {"graph": graph, "extra_data": {"extra_pnginfo": {"a": 1}}})  # fmt: skip
    prepared = _prepare(info)
    assert prepared.raw and prepared.graph == graph and prepared.output_nodes == []
    assert prepared.inputs == [ref] and prepared.extra_data == {"extra_pnginfo": {"a": 1}}
