"""The profile summaries (bench/pyspy.py) and the probe's keys (bench/probe/sitecustomize.py)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

from bench.cost_detail import prefect_calls
from bench.pyspy import busy, by_cause, parse, top_self, top_total, total

RAW = """\
process 7:"python -m x";main (app.py:3);loop (app.py:9);EpollSelector.select (selectors.py:468) 50
main (app.py:3);handle (api/runs.py:20);execute (sqlalchemy/engine.py:5) 30
main (app.py:3);handle (api/runs.py:21);dumps (json/__init__.py:231) 10
_connection_worker_thread (aiosqlite/core.py:59) 8
_send_heartbeats.<locals>.heartbeat_loop (prefect/flow_engine.py:354) 40
not a sample line
"""


def _probe() -> ModuleType:
    """The probe is a `sitecustomize` module: load it by path (it installs nothing unless
    COMFYFLEET_BENCH_PROBE_DIR is set)."""
    source = Path(__file__).resolve().parents[3] / "bench" / "probe" / "sitecustomize.py"
    spec = importlib.util.spec_from_file_location("bench_probe", source)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_parse_drops_line_numbers_and_the_process_frame() -> None:
    stacks = parse(RAW)
    assert stacks[0] == (
        ("main (app.py)", "loop (app.py)", "EpollSelector.select (selectors.py)"),
        50,
    )
    assert len(stacks) == 5 and total(stacks) == 138


def test_busy_leaves_out_threads_that_wait_but_keeps_aiosqlite() -> None:
    stacks = busy(parse(RAW))
    assert total(stacks) == 48
    assert top_self(stacks, 1) == [("execute (sqlalchemy/engine.py)", 30)]
    assert ("handle (api/runs.py)", 40) in top_total(stacks)


def test_by_cause_takes_the_first_rule_that_matches_and_formats_its_groups() -> None:
    rules = [
        ("json", r"^dumps "),
        ("API {0}", r"^(\w+) \(api/"),
        ("SQLite", r"aiosqlite"),
    ]
    causes = by_cause(busy(parse(RAW)), rules)
    assert causes == {"json": 10, "API handle": 30, "SQLite": 8}
    assert by_cause(parse("main (app.py:1) 3"), rules) == {"other": 3}


def test_probe_routes_replace_ids_and_keep_names() -> None:
    probe = _probe()
    assert probe.route("/api/flow_runs/3fa85f64-5717-4562-b3fc-2c963f66afa6/set_state") == (
        "/api/flow_runs/{id}/set_state"
    )
    assert probe.route("/history/0123456789abcdef0123456789abcdef-2") == "/history/{id}"
    assert probe.route("/api/work_pools/comfyui-gpu-1/get_scheduled_flow_runs") == (
        "/api/work_pools/comfyui-gpu-1/get_scheduled_flow_runs"
    )


def test_probe_names_a_statement_by_its_verb_and_first_table() -> None:
    probe = _probe()
    assert probe.statement('SELECT a FROM "flow_run" JOIN x') == "SELECT flow_run"
    assert probe.statement("  update jobs set x = 1") == "UPDATE jobs"
    assert probe.statement("BEGIN") == "BEGIN -"


def test_prefect_calls_sum_the_processes_requests_to_the_api_only() -> None:
    per_process = {
        "worker": {"http POST 127.0.0.1:4200/api/logs/": 2.0, "http GET 127.0.0.1:8188/queue": 1},
        "fleet-service": {"http POST 127.0.0.1:4200/api/logs/": 1.0, "sql x.db BEGIN -": 9.0},
    }
    assert prefect_calls(per_process, "127.0.0.1:4200") == {"POST /api/logs/": 3.0}
