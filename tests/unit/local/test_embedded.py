"""`comfyfleet up`'s processes for the scale-out settings: more workers, the Prefect server's loop
services apart when it runs several API processes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from comfyfleet.local.embedded import EmbeddedFleet, StartError
from comfyfleet.settings import Settings


def fleet(tmp_path: Path, **sections: Any) -> tuple[EmbeddedFleet, list[Any]]:
    sections = {"embedded": {"var_dir": str(tmp_path)}, "logging": {"dir": str(tmp_path)},
                **sections}  # fmt: skip
    settings = Settings(**sections)
    emb = EmbeddedFleet(settings)
    started: list[Any] = []
    emb._supervise = started.append  # type: ignore[method-assign]
    return emb, started


def test_embedded_workers_start_that_many_worker_processes_with_their_own_names(
    tmp_path: Path,
) -> None:
    emb, started = fleet(tmp_path, embedded={"var_dir": str(tmp_path), "workers": 3})
    emb._start_children()
    names = [c.name for c in started]
    assert names == ["worker", "worker-2", "worker-3", "fleet-service", "web"]
    second = started[1].argv
    assert second[second.index("--name") + 1].endswith("-2")
    assert "--name" not in started[0].argv


def test_several_api_processes_without_redis_refuse_to_start_naming_the_setting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    emb, _ = fleet(tmp_path, prefect={
        "api_url": "http://127.0.0.1:4999/api", "api_workers": 2,
        "database_url": "postgresql://postgres@127.0.0.1:5432/x",
    })  # fmt: skip
    monkeypatch.setattr("comfyfleet.local.embedded._get_ok", lambda url: False)
    monkeypatch.setattr("comfyfleet.local.embedded._port_free", lambda host, port: True)
    with pytest.raises(StartError, match=r"prefect\.redis_url"):
        emb._start_prefect()
