"""What `python -m bench.cost --count --py-spy` adds to a run: counts and profiles.

- Counts from the processes (bench/probe/sitecustomize.py): HTTP requests by route, websocket
  messages, SQL statements and commits, per component, over the burst (from just before the
  first submit until every flow run has ended) and per second while idle.
- Counts from the Prefect server, over the same window: events by name (state transitions
  included: `prefect.flow-run.*`, `prefect.task-run.*`), log records by logger, and how many
  artifacts, flow runs and task runs were created.
- py-spy: `py-spy record --format raw` of each component during the burst; bench/pyspy.py
  summarises the collapsed stacks.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from bench.cost import Fleet, RunResult, _log, active_flow_runs

PY_SPY = Path(sys.executable).with_name("py-spy")


class Detail:
    """Hooks around a burst: `before_burst()`, then `after_burst(started, result)`."""

    def __init__(
        self, fleet: Fleet, root: Path, *, count: bool, py_spy: bool, rate: int = 50
    ) -> None:
        self.fleet, self.root, self.count, self.py_spy = fleet, root, count, py_spy
        self.rate = rate
        self.runs = 0
        self._spies: dict[str, tuple[subprocess.Popen[bytes], Path]] = {}
        self._snap: dict[str, Counter[str]] = {}
        self._t0 = 0.0
        self._server: dict[str, int] = {}

    # -- the probe ---------------------------------------------------------------------------

    def snapshot(self, *, timeout: float = 3.0) -> dict[str, Counter[str]]:
        """Each component's cumulative counts, written after this call began."""
        assert self.fleet.probe_dir is not None
        asked = time.time()
        names = {pid: name for name, pid in self.fleet.pids.items()}
        deadline = time.monotonic() + timeout
        while True:
            docs = []
            for path in self.fleet.probe_dir.glob("*.json"):
                try:
                    docs.append(json.loads(path.read_text()))
                except (OSError, ValueError):
                    continue
            live = [d for d in docs if d["t"] > asked - 5]
            if all(d["t"] >= asked for d in live) or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        out: dict[str, Counter[str]] = {}
        for doc in live:
            name = names.get(doc["pid"]) or _label(doc["argv"])
            out.setdefault(name, Counter()).update(doc["counts"])
        return out

    def idle(self, seconds: float) -> dict[str, Any]:
        """While the fleet is idle: counts per second of each component (its polling loops)
        and, with py-spy, a profile of each (`idle-<component>.txt`)."""
        self._start_spies("idle")
        first = self.snapshot() if self.count else {}
        t0 = time.monotonic()
        time.sleep(seconds)
        second = self.snapshot() if self.count else {}
        elapsed = time.monotonic() - t0
        out: dict[str, Any] = {"seconds": elapsed}
        if self._spies:
            out["py_spy"] = self._stop_spies()
        if self.count:
            out["per_s"] = {
                name: _sorted({k: v / elapsed for k, v in _delta(second, first, name).items()})
                for name in sorted(set(first) | set(second))
            }
        return out

    def _start_spies(self, tag: str) -> None:
        if not self.py_spy:
            return
        out = self.root / "py-spy"
        out.mkdir(parents=True, exist_ok=True)
        for name, pid in self.fleet.control_plane().items():
            path = out / f"{tag}-{name}.txt"
            cmd = [str(PY_SPY), "record", "--pid", str(pid), "--rate", str(self.rate),
                   "--format", "raw", "--nonblocking", "-o", str(path)]  # fmt: skip
            with (out / f"{tag}-{name}.log").open("wb") as log:
                spy = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
            self._spies[name] = (spy, path)
        time.sleep(2.0)  # attached before the work starts

    def _stop_spies(self) -> dict[str, str]:
        for spy, _ in self._spies.values():
            spy.send_signal(signal.SIGINT)
        for name, (spy, _) in self._spies.items():
            try:
                spy.wait(timeout=60)
            except subprocess.TimeoutExpired:
                spy.kill()
                spy.wait()
                _log(f"py-spy of {name} did not stop on SIGINT; killed")
        paths = {name: str(path) for name, (_, path) in self._spies.items()}
        self._spies.clear()
        return paths

    def _server_totals(self) -> dict[str, int]:
        api = self.fleet.api_url
        out = {}
        for what in ("flow_runs", "task_runs", "artifacts"):
            r = httpx.post(
                f"{api}/{what}/count", json={}, headers=self.fleet.api_headers, timeout=30
            )
            r.raise_for_status()
            out[what] = int(r.json())
        return out

    # -- hooks -------------------------------------------------------------------------------

    def before_burst(self) -> None:
        self.runs += 1
        if self.count:
            self._server = self._server_totals()
            self._snap = self.snapshot()
            self._t0 = time.monotonic()
        self._start_spies(f"run{self.runs}")

    def after_burst(self, started: datetime, result: RunResult) -> dict[str, Any]:
        extra: dict[str, Any] = {}
        if self._spies:
            extra["py_spy"] = self._stop_spies()
        if not self.count:
            return extra
        deadline = time.monotonic() + 120
        while (
            active_flow_runs(self.fleet.api_url, self.fleet.api_headers)
            and time.monotonic() < deadline
        ):
            time.sleep(0.2)  # the last flow runs finish their final states after their jobs
        time.sleep(1.0)
        end = self.snapshot()
        window = time.monotonic() - self._t0
        ended = datetime.now(UTC)
        jobs = max(result.completed, 1)
        totals = self._server_totals()
        extra["counts"] = {
            "window_s": window,
            "jobs_completed": result.completed,
            "per_job": {
                name: _sorted({k: v / jobs for k, v in _delta(end, self._snap, name).items()})
                for name in sorted(set(end) | set(self._snap))
            },
            "prefect_server": {
                "created_per_job": {k: (totals[k] - self._server[k]) / jobs for k in totals},
                "events_per_job": _sorted(
                    {k: v / jobs for k, v in self._events(started, ended).items()}
                ),
                "log_records_per_job": _sorted(
                    {k: v / jobs for k, v in self._logs(started, ended).items()}
                ),
            },
        }
        return extra

    # -- the Prefect server's records ----------------------------------------------------------

    def _events(self, since: datetime, until: datetime) -> dict[str, int]:
        body = {"filter": {"occurred": {"since": since.isoformat(), "until": until.isoformat()}}}
        r = httpx.post(
            f"{self.fleet.api_url}/events/count-by/event", json=body,
            headers=self.fleet.api_headers, timeout=60,
        )  # fmt: skip
        r.raise_for_status()
        return {row["value"]: row["count"] for row in r.json()}

    def _logs(self, since: datetime, until: datetime) -> dict[str, int]:
        out: Counter[str] = Counter()
        offset = 0
        window = {"timestamp": {"after_": since.isoformat(), "before_": until.isoformat()}}
        while True:
            body = {"logs": window, "limit": 200, "offset": offset}
            r = httpx.post(
                f"{self.fleet.api_url}/logs/filter", json=body,
                headers=self.fleet.api_headers, timeout=60,
            )  # fmt: skip
            r.raise_for_status()
            rows = r.json()
            out.update(f"{row['name']} {_level(row['level'])}" for row in rows)
            if len(rows) < 200:
                return dict(out)
            offset += len(rows)


def _level(level: int) -> str:
    return {10: "DEBUG", 20: "INFO", 30: "WARNING", 40: "ERROR"}.get(level, str(level))


def _delta(after: dict[str, Counter[str]], before: dict[str, Counter[str]], name: str) -> Counter:
    diff = Counter(after.get(name, Counter()))
    diff.subtract(before.get(name, Counter()))
    return Counter({k: v for k, v in diff.items() if v > 0})


def _sorted(counts: dict[str, float]) -> dict[str, float]:
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def _label(argv: list[str]) -> str:
    """A process the fleet's state file does not name (e.g. `comfyfleet up` itself)."""
    text = " ".join(argv)
    if "comfyfleet" in text and " up" in f" {text}":
        return "up"
    return text[:60] or "?"


def _api_route(key: str, prefix: str) -> str | None:
    """`METHOD /route` when a counted key is a request to the Prefect API at `prefix`."""
    kind, _, rest = key.partition(" ")
    method, _, target = rest.partition(" ")
    if kind == "http" and target.startswith(prefix):
        return f"{method} {target[len(prefix) :]}"
    return None


def prefect_calls(per_process: dict[str, dict[str, float]], prefix: str) -> dict[str, float]:
    """Prefect API requests by route, summed over the processes (`METHOD /route`)."""
    out: Counter[str] = Counter()
    for counts in per_process.values():
        for key, value in counts.items():
            route = _api_route(key, prefix)
            if route is not None:
                out[route] += value
    return _sorted(dict(out))


def summary(doc: dict[str, Any]) -> str:
    """Markdown tables of a `--count` run: Prefect API calls by route (per job and, idle, per
    second), then per process the rest of what it counted, then the server's records."""
    url = httpx.URL(doc["meta"]["prefect_api_url"])
    prefix = f"{url.host}:{url.port}"
    idle = doc.get("idle_counts", {}).get("per_s", {})
    lines: list[str] = []
    for i, run in enumerate(doc["runs"], 1):
        counts = run.get("extra", {}).get("counts")
        if not counts:
            continue
        per_job = counts["per_job"]
        lines += [f"### run {i}: {counts['jobs_completed']} jobs, {counts['window_s']:.0f} s", ""]
        lines += ["| Prefect API call | per job | idle, per s |", "|---|---:|---:|"]
        calls, idle_calls = prefect_calls(per_job, prefix), prefect_calls(idle, prefix)
        for route, n in calls.items():
            lines.append(f"| `{route}` | {n:.2f} | {idle_calls.get(route, 0):.2f} |")
        lines.append(f"| **total** | **{sum(calls.values()):.1f}** | "
                     f"**{sum(idle_calls.values()):.2f}** |")  # fmt: skip
        for name, kv in per_job.items():
            rest = {k: v for k, v in kv.items() if _api_route(k, prefix) is None}
            if not rest:
                continue
            lines += ["", f"{name}:", "", "| counted | per job | idle, per s |", "|---|---:|---:|"]
            for key, n in rest.items():
                lines.append(f"| `{key}` | {n:.2f} | {idle.get(name, {}).get(key, 0):.2f} |")
        server = counts["prefect_server"]
        lines += ["", "Prefect server records:", "", "| record | per job |", "|---|---:|"]
        for key, n in server["created_per_job"].items():
            lines.append(f"| {key} created | {n:.2f} |")
        for key, n in server["events_per_job"].items():
            lines.append(f"| event `{key}` | {n:.2f} |")
        for key, n in server["log_records_per_job"].items():
            lines.append(f"| log records `{key}` | {n:.2f} |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """`python -m bench.cost_detail RESULTS.json`: the tables of a `--count` run."""
    path = Path((argv or sys.argv[1:])[0])
    doc = json.loads(path.read_text())
    print(summary(doc))


if __name__ == "__main__":
    main()
