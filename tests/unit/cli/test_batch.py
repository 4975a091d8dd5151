"""`comfyfleet batch submit FILE --workflow ID [--wait]` and `comfyfleet batch show ID`."""

from __future__ import annotations

import json
import re
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from comfyfleet.store import Database, list_jobs
from tests.fixtures.gateway import Accounts, complete_job
from tests.unit.api.test_tasks import png_bytes, stored_request
from tests.unit.cli.gateway_cli import run


@pytest.fixture
def alice(cli_env: str, api_users: Accounts, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COMFYFLEET_TOKEN", api_users.alice.token)


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("p.csv", "seconds,seed\n0.1,1\n0.2,2\n"),
        ("p.jsonl", '{"seconds": 0.1, "seed": 1}\n{"seconds": 0.2, "seed": 2}\n'),
        ("p.yaml", "- {seconds: 0.1, seed: 1}\n- {seconds: 0.2, seed: 2}\n"),
    ],
)
def test_batch_submit_queues_one_job_per_item_of_the_file(
    alice: None, api_db: Database, capsys: pytest.CaptureFixture[str], tmp_path: Path,
    name: str, text: str,
) -> None:  # fmt: skip
    (tmp_path / name).write_text(text)
    code, out = run(["batch", "submit", str(tmp_path / name), "--workflow", "delay",
                     "--param", "steps=3", "--json"], capsys)  # fmt: skip
    assert code == 0, out
    batch = json.loads(out)
    requests = [stored_request(api_db, j["id"]) for j in batch["jobs"]]
    # csv values are strings: the workflow's schema types them
    assert [(r["seconds"], r["seed"], r["steps"]) for r in requests] == [(0.1, 1, 3), (0.2, 2, 3)]


def test_a_txt_file_is_one_prompt_per_line(
    alice: None, api_db: Database, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    (tmp_path / "p.txt").write_text("a fox\n\nan owl\n")
    code, out = run(["batch", "submit", str(tmp_path / "p.txt"), "--workflow", "sd15-basic"],
                    capsys)  # fmt: skip
    assert code == 0, out
    assert "2 job(s) queued" in out
    prompts = [j.request["prompt"] for j in api_db.run(lambda s: list_jobs(s), readonly=True)]
    assert sorted(prompts) == ["a fox", "an owl"]


def test_bad_files_and_items_are_named_and_queue_nothing(
    alice: None, api_db: Database, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    (tmp_path / "p.jsonl").write_text('{"seconds": 1}\n{"seconds": \n')
    code, out = run(["batch", "submit", str(tmp_path / "p.jsonl"), "--workflow", "delay"], capsys)
    assert code == 1 and "p.jsonl: line 2: not JSON" in out
    (tmp_path / "q.jsonl").write_text('{"seconds": 1}\n{"seconds": -3}\n')
    code, out = run(["batch", "submit", str(tmp_path / "q.jsonl"), "--workflow", "delay"], capsys)
    assert code == 1 and "items[1].seconds" in out
    code, out = run(["batch", "submit", str(tmp_path / "gone.txt"), "--workflow", "delay"], capsys)
    assert code == 1 and "gone.txt" in out
    (tmp_path / "empty.txt").write_text("\n")
    code, out = run(["batch", "submit", str(tmp_path / "empty.txt"), "--workflow", "delay"], capsys)
    assert code == 1 and "no items" in out
    assert api_db.run(lambda s: list_jobs(s), readonly=True) == []


def test_batch_submit_wait_draws_the_ended_jobs_and_shows_the_batch(
    alice: None, api_db: Database, api_settings: Any, capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:  # fmt: skip
    (tmp_path / "p.jsonl").write_text('{"seconds": 0.1, "seed": 1}\n{"seconds": 0.1, "seed": 2}\n')

    def finisher() -> None:
        done: set[str] = set()
        for _ in range(400):
            for job in api_db.run(lambda s: list_jobs(s, status="queued"), readonly=True):
                complete_job(api_db, job.id, {"out.png": png_bytes()},
                             api_settings.store.outputs_dir)  # fmt: skip
                done.add(job.id)
                time.sleep(0.6)  # the CLI sees one ended before the other
            if len(done) == 2:
                return
            time.sleep(0.05)

    thread = threading.Thread(target=finisher)
    thread.start()
    code, out = run(["batch", "submit", str(tmp_path / "p.jsonl"), "--workflow", "delay",
                     "--wait"], capsys)  # fmt: skip
    thread.join()
    assert code == 0, out
    assert "1/2" in out and "2/2" in out, out  # the bar (plain lines off a terminal)
    assert "2 job(s), 2 completed (done)" in out
    [batch_id] = re.findall(r"^batch (\w+): 2 job\(s\)", out, flags=re.M)
    code, shown = run(["batch", "show", batch_id, "--json"], capsys)
    assert code == 0 and json.loads(shown)["counts"] == {"completed": 2}
    code, table = run(["batch", "show", batch_id], capsys)
    assert code == 0 and table.count("out.png") == 2


def test_batch_show_of_an_unknown_batch_says_so(
    alice: None, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out = run(["batch", "show", "nope"], capsys)
    assert code == 1 and "no batch 'nope'" in out
