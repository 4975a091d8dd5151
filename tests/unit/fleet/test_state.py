"""Node state: status words, the snapshot file every process reads, the registry merged over it."""

from __future__ import annotations

import json
from pathlib import Path

from comfyfleet.fleet import state as node_state
from comfyfleet.fleet.state import NodeState, merge_state, node_states, node_status
from comfyfleet.settings import NodeConfig, Settings


def test_node_status_words() -> None:
    assert node_status(enabled=True, in_flight=0, answers=True) == "up"
    assert node_status(enabled=True, in_flight=3, answers=False) == "down"
    assert node_status(enabled=True, in_flight=0, answers=None) == "unknown"
    assert node_status(enabled=False, in_flight=2, answers=True) == "draining"
    assert node_status(enabled=False, in_flight=0, answers=True) == "disabled"


def test_the_snapshot_round_trips_and_reads_unknown_once_stale(tmp_path: Path) -> None:
    path = tmp_path / "fleet-nodes.json"
    assert node_states(path=path) == []  # no fleet service yet
    state = NodeState(
        id="gpu-1", url="http://gpu-1:8188", state="up", circuit="closed", healthy=True,
        reachable=True, in_flight=1, queue_depth=2, models={"checkpoints": ["a.ckpt"]},
    )  # fmt: skip
    node_state.write_snapshot(path, [state], probe_interval_s=2.0)
    assert [p.name for p in tmp_path.iterdir()] == ["fleet-nodes.json"]  # no temp file left
    [read] = node_states(path=path)
    assert read == state
    written = json.loads(path.read_text())["written_at"]
    [old] = node_states(path=path, now=written + node_state.STALE_AFTER_S + 1)
    assert old.stale and old.state == "unknown" and not old.healthy


def test_merge_state_takes_the_registry_over_the_snapshot() -> None:
    known = NodeState(id="gpu-1", url="http://old:8188", state="up", healthy=True, reachable=True,
                      queue_depth=1)  # fmt: skip
    config = NodeConfig(id="gpu-1", url="http://new:8188", capacity=4, enabled=False)
    merged = merge_state(config, known, in_flight=2)
    assert merged.url == "http://new:8188" and merged.capacity == 4
    assert merged.state == "draining" and merged.draining and not merged.healthy
    assert merged.load == 0.5
    fresh = merge_state(NodeConfig(id="gpu-9", url="http://x:1"), None, in_flight=0)
    assert fresh.state == "unknown"


def test_state_path_is_beside_the_sqlite_database(tmp_path: Path) -> None:
    settings = Settings(database={"url": f"sqlite:///{tmp_path / 'x' / 'cf.db'}"})
    assert node_state.state_path(settings) == tmp_path / "x" / "fleet-nodes.json"
    mysql = Settings(database={"url": "mysql+pymysql://u:p@db/comfyfleet"})
    assert node_state.state_path(mysql).name == "fleet-nodes.json"
