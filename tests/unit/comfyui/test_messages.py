"""The typed websocket protocol: recorded ComfyUI frames parse into the right models."""

from __future__ import annotations

import json
import struct
from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from comfyfleet.comfyui import (
    Executed,
    Executing,
    ExecutionCached,
    ExecutionError,
    ExecutionInterrupted,
    ExecutionStart,
    ExecutionSuccess,
    FeatureFlags,
    HistoryEntry,
    PreviewFrame,
    Progress,
    ProgressState,
    Status,
    UnknownBinary,
    UnknownMessage,
    output_files,
    parse_binary,
    parse_message,
    parse_text,
)
from comfyfleet.comfyui.messages import timestamp_to_datetime
from tests.unit.comfyui import ws_recordings as rec


def parse(frame: dict) -> object:
    return parse_text(json.dumps(frame))


def test_success_sequence_parses_into_one_model_per_message_type() -> None:
    kinds = [type(parse(frame)) for frame in rec.success()]
    assert kinds == [
        Status,
        ExecutionStart,
        ExecutionCached,
        Executing,
        ProgressState,
        Progress,
        Progress,
        Progress,
        Progress,
        ProgressState,
        Executed,
        Executing,
        Executed,
        ExecutionSuccess,
        Status,
        Executing,
    ]


def test_status_exposes_queue_remaining_and_sid() -> None:
    message = parse(rec.greeting(queue_remaining=3, sid="abc"))
    assert isinstance(message, Status)
    assert message.queue_remaining == 3
    assert message.sid == "abc"
    assert message.prompt_id is None


def test_executing_with_null_node_is_the_finished_marker() -> None:
    done = parse(rec.frame("executing", node=None, prompt_id=rec.PROMPT_ID))
    running = parse(rec.frame("executing", node="2", display_node="2", prompt_id=rec.PROMPT_ID))
    assert isinstance(done, Executing) and done.finished and done.node is None
    assert isinstance(running, Executing) and not running.finished and running.node == "2"


def test_progress_and_progress_state_carry_values_per_node() -> None:
    progress = parse(rec.frame("progress", value=3, max=4, prompt_id=rec.PROMPT_ID, node="1"))
    assert isinstance(progress, Progress)
    assert (progress.value, progress.max, progress.node) == (3, 4, "1")
    state = parse(rec.success()[4])
    assert isinstance(state, ProgressState)
    assert state.nodes["1"].state == "running"
    assert state.nodes["1"].real_node_id == "1"


def test_executed_keeps_the_nodes_ui_output() -> None:
    message = parse(rec.success()[12])
    assert isinstance(message, Executed)
    assert message.node == "2"
    assert message.output["images"][0]["filename"] == "ComfyUI_temp_plfop_00001_.png"


def test_execution_cached_lists_cached_node_ids() -> None:
    message = parse(rec.cached()[2])
    assert isinstance(message, ExecutionCached)
    assert message.nodes == ["1", "2"]


def test_execution_error_carries_node_exception_and_traceback() -> None:
    message = parse(rec.execution_error()[7])
    assert isinstance(message, ExecutionError)
    assert message.node_id == "2"
    assert message.node_type == "TestFail"
    assert message.exception_type == "RuntimeError"
    assert message.exception_message == "boom\n"
    assert message.executed == ["1"]
    assert len(message.traceback) == 2
    assert message.current_inputs["message"] == ["boom"]


def test_execution_interrupted_names_the_node() -> None:
    message = parse(rec.execution_interrupted()[5])
    assert isinstance(message, ExecutionInterrupted)
    assert (message.node_id, message.node_type, message.executed) == ("1", "TestDelay", [])


def test_feature_flags_answer_parses_and_keeps_unknown_flags() -> None:
    message = parse(rec.frame("feature_flags", supports_preview_metadata=True, new_flag=1))
    assert isinstance(message, FeatureFlags)
    assert message.supports_preview_metadata is True
    assert message.model_extra == {"new_flag": 1}


def test_unknown_type_becomes_unknown_message_with_its_data() -> None:
    message = parse(rec.UNKNOWN_FRAMES[0])
    assert isinstance(message, UnknownMessage)
    assert message.type == "crystools.monitor"
    assert message.data["cpu_utilization"] == 12.5
    assert message.prompt_id is None
    custom = parse(rec.UNKNOWN_FRAMES[1])
    assert isinstance(custom, UnknownMessage) and custom.prompt_id == rec.PROMPT_ID


def test_known_type_with_unexpected_data_becomes_unknown_message() -> None:
    message = parse(rec.UNKNOWN_FRAMES[2])
    assert isinstance(message, UnknownMessage)
    assert message.type == "progress"


def test_extra_fields_from_custom_nodes_are_tolerated_and_kept() -> None:
    frame = rec.frame("executed", node="5", output={"text": ["hi"]}, prompt_id="p", extra=[1, 2])
    message = parse(frame)
    assert isinstance(message, Executed)
    assert message.model_extra == {"extra": [1, 2]}


def test_text_frame_that_is_not_a_json_object_raises_value_error() -> None:
    with pytest.raises(ValueError):
        parse_text("not json")
    with pytest.raises(ValueError):
        parse_text("[1, 2]")


def test_messages_are_frozen() -> None:
    message = parse(rec.success()[1])
    with pytest.raises(ValidationError):
        message.prompt_id = "other"  # type: ignore[misc]


def test_timestamps_are_milliseconds_since_the_epoch() -> None:
    assert timestamp_to_datetime(1_000) == datetime(1970, 1, 1, 0, 0, 1, tzinfo=UTC)
    assert timestamp_to_datetime(None) is None


def test_binary_event_1_is_a_preview_frame_with_its_format() -> None:
    jpeg = parse_binary(rec.preview_image(rec.JPEG_BYTES, 1))
    assert isinstance(jpeg, PreviewFrame)
    assert (jpeg.event, jpeg.image_format, jpeg.content_type) == (1, "JPEG", "image/jpeg")
    assert jpeg.image == rec.JPEG_BYTES
    assert jpeg.metadata is None and jpeg.prompt_id is None
    png = parse_binary(rec.preview_image(rec.PNG_BYTES, 2))
    assert isinstance(png, PreviewFrame) and png.image_format == "PNG"
    assert "image=" not in repr(png)  # the bytes stay out of logs


def test_binary_event_4_is_a_preview_frame_with_metadata() -> None:
    frame = parse_binary(rec.preview_with_metadata(prompt_id="p-1", node_id="7"))
    assert isinstance(frame, PreviewFrame)
    assert frame.event == 4
    assert frame.image == rec.PNG_BYTES
    assert frame.image_format == "PNG" and frame.content_type == "image/png"
    assert (frame.prompt_id, frame.node_id) == ("p-1", "7")


def test_other_binary_events_become_unknown_binary() -> None:
    message = parse_binary(rec.progress_text(node_id="3", text="loading"))
    assert isinstance(message, UnknownBinary)
    assert message.event == 3
    assert message.payload.endswith(b"loading")


def test_binary_event_4_with_broken_metadata_is_unknown_binary() -> None:
    broken = struct.pack(">I", 4) + struct.pack(">I", 50) + b"{not json"
    assert isinstance(parse_binary(broken), UnknownBinary)


def test_binary_frame_without_event_header_raises_value_error() -> None:
    with pytest.raises(ValueError):
        parse_binary(b"\x00\x01")


def test_parse_message_reads_history_pairs() -> None:
    message = parse_message("execution_success", {"prompt_id": "p", "timestamp": 5})
    assert isinstance(message, ExecutionSuccess) and message.timestamp == 5
    assert isinstance(parse_message("execution_success", ["odd"]), UnknownMessage)


def test_history_entry_of_success_ends_with_execution_success() -> None:
    entry = HistoryEntry.from_json(rec.PROMPT_ID, rec.history_entry()[rec.PROMPT_ID])
    assert entry.succeeded and entry.completed
    assert entry.number == 20
    assert entry.extra_data["client_id"] == rec.CLIENT_ID
    assert isinstance(entry.terminal_message(), ExecutionSuccess)
    assert [f.filename for f in entry.files] == ["ComfyUI_temp_plfop_00001_.png"]


def test_history_entry_of_failure_ends_with_the_stored_error() -> None:
    entry = HistoryEntry.from_json(rec.PROMPT_ID, rec.history_error()[rec.PROMPT_ID])
    terminal = entry.terminal_message()
    assert not entry.succeeded
    assert isinstance(terminal, ExecutionError)
    assert terminal.node_type == "TestFail" and terminal.exception_message == "boom\n"
    interrupted = HistoryEntry.from_json(rec.PROMPT_ID, rec.history_interrupted()[rec.PROMPT_ID])
    assert isinstance(interrupted.terminal_message(), ExecutionInterrupted)


def test_history_entry_without_messages_makes_up_the_terminal_from_status() -> None:
    body = rec.history_entry(status_str="error", messages=[])[rec.PROMPT_ID]
    terminal = HistoryEntry.from_json(rec.PROMPT_ID, body).terminal_message()
    assert isinstance(terminal, ExecutionError)
    assert "error" in terminal.exception_message


def test_output_files_lists_every_file_with_kind_and_animation() -> None:
    outputs = {
        "1": {"test_delay": [0.4]},
        "9": {
            "images": [
                {"filename": "a_00001_.png", "subfolder": "", "type": "output"},
                {"filename": "a_00002_.png", "subfolder": "s", "type": "output"},
            ]
        },
        "12": {
            "images": [{"filename": "clip_00001_.webp", "subfolder": "", "type": "output"}],
            "animated": [True],
        },
        "14": {"gifs": [{"filename": "v_00001.mp4", "subfolder": "", "type": "output"}]},
    }
    files = output_files(outputs)
    assert [(f.node_id, f.filename, f.kind, f.animated) for f in files] == [
        ("9", "a_00001_.png", "images", False),
        ("9", "a_00002_.png", "images", False),
        ("12", "clip_00001_.webp", "images", True),
        ("14", "v_00001.mp4", "gifs", True),
    ]
    assert files[1].view_params() == {
        "filename": "a_00002_.png",
        "subfolder": "s",
        "type": "output",
    }
