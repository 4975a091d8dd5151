"""`python -m bench.cost`: the control plane's CPU seconds per job, per component.

    python -m bench.cost                 # an embedded fleet of its own, 40 jobs, 1 run
    python -m bench.cost --runs 3 --jobs 40
    python -m bench.cost --attach        # the fleet `make up` runs (var/run/components.json)
    python -m bench.cost --count --py-spy   # also count API calls, DB statements, …; profile

Without `--attach` it starts the embedded fleet as `make up` does (`python -m comfyfleet up`,
without the smoke job) on free ports of its own, with its own config file, var dir, logs, job
store and Prefect home under `var/bench/cost-<UTC>/`, so it never collides with a `make up` on
the default ports, and stops it at the end. Then, per run:

1. wait until the fleet is idle (no job unfinished, no flow run pending or running but the nodes'
   shifts) and 3 s more;
2. measure each control-plane component's CPU per second over `--idle-seconds` (10);
3. submit `--jobs` (40) small jobs at once through REST (`POST /api/v2/tasks/text-to-image`,
   64×64, 1 step, a token of the `bench-cost` admin user created for the run) and wait until all
   have ended;
4. report, per component (Prefect server, worker, fleet service, web process; ComfyUI is shown
   but is not the control plane), CPU seconds between the first submit and the last completion
   (idle work included) per completed job, with wall time and jobs completed.

CPU is user + sys of each component's whole process tree (bench/cpu.py). A warm-up of
`--warmup` jobs runs first so no run pays for imports and first-call caches. Results: a table
on stdout and `bench/results/cost-<UTC>.json`.

`--count` (own fleet only) puts bench/probe on the fleet's PYTHONPATH: every control-plane
process then counts its HTTP calls by route and its SQL statements by database, verb and table
(bench/probe/sitecustomize.py), and the run also counts what the Prefect server recorded
(events by name, logs, artifacts, flow and task runs). `--py-spy` records each component with
py-spy during the burst (raw collapsed stacks, summarised by bench/pyspy.py). Both disturb the
CPU figures a little; use plain runs for those.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import yaml

from bench.cpu import CpuMeter, context_switches, idle_cpu_per_s
from comfyfleet.settings import REPO_ROOT, Settings

CONTROL_PLANE = ("prefect-server", "worker", "fleet-service", "web")


def is_control_plane(name: str) -> bool:
    """The four components every fleet has, and those scaled out: the Prefect server's loop
    services in their own process (`prefect.api_workers` > 1), more workers (`worker-2` …)."""
    return name in CONTROL_PLANE or name == "prefect-services" or name.startswith("worker-")


RESULTS_DIR = REPO_ROOT / "bench" / "results"
BENCH_VAR = REPO_ROOT / "var" / "bench"
PROBE_DIR = Path(__file__).resolve().parent / "probe"
BENCH_USER = "bench-cost"
JOB_BODY = {"prompt": "a lighthouse at dawn", "width": 64, "height": 64, "steps": 1}
TERMINAL = ("completed", "failed", "cancelled")
ACTIVE_RUN_STATES = ["PENDING", "RUNNING", "CANCELLING"]


def _log(message: str) -> None:
    print(f"[cost {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# -- the fleet -------------------------------------------------------------------------------


@dataclass
class Fleet:
    """The fleet measured: its settings and the pid of each component."""

    settings: Settings
    pids: dict[str, int]
    root: Path | None = None  # own fleet: where its files are
    up: subprocess.Popen[bytes] | None = None  # own fleet: `comfyfleet up`
    probe_dir: Path | None = None

    @property
    def gateway_url(self) -> str:
        host = self.settings.gateway.host
        host = "127.0.0.1" if host in ("0.0.0.0", "") else host
        return f"http://{host}:{self.settings.gateway.port}"

    @property
    def api_url(self) -> str:
        return self.settings.prefect.api_url.rstrip("/")

    @property
    def api_headers(self) -> dict[str, str]:
        """What a raw call to the Prefect API sends (its auth string, when the fleet has one)."""
        from comfyfleet.local.prefect_server import auth_headers, auth_string, auth_string_path

        return auth_headers(auth_string(auth_string_path(self.settings)))

    def control_plane(self) -> dict[str, int]:
        return {name: pid for name, pid in self.pids.items() if is_control_plane(name)}

    def nodes(self) -> dict[str, int]:
        return {name: pid for name, pid in self.pids.items() if name.startswith("comfyui-")}

    def stop(self) -> None:
        """Stop an own fleet: `comfyfleet up` stops its children; then make sure they are gone."""
        if self.up is None:
            return
        up, self.up = self.up, None
        if up.poll() is None:
            up.send_signal(signal.SIGTERM)
            try:
                up.wait(timeout=120)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(up.pid, signal.SIGKILL)
                up.wait()
        for name, pid in self.pids.items():
            if _alive(pid):
                _log(f"{name} (pid {pid}) outlived `comfyfleet up`; killing its group")
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def own_config(root: Path, ports: dict[str, int]) -> dict[str, Any]:
    """The shipped comfyfleet.yaml, moved to `root` and to the given free ports."""
    config = yaml.safe_load((REPO_ROOT / "comfyfleet.yaml").read_text()) or {}
    nodes = [n for n in config.get("nodes", []) if n.get("enabled", True)]
    if len(nodes) != 1:
        raise SystemExit("bench.cost expects exactly one enabled node in comfyfleet.yaml")
    node = {**nodes[0], "url": f"http://127.0.0.1:{ports['node']}"}
    config.update(
        nodes=[node],
        gateway={"host": "127.0.0.1", "port": ports["gateway"]},
        prefect={"api_url": f"http://127.0.0.1:{ports['prefect']}/api"},
        database={"url": f"sqlite:///{root / 'comfyfleet.db'}"},
        store={"outputs_dir": str(root / "outputs"), "inputs_dir": str(root / "inputs")},
        logging={"dir": str(root / "logs")},
        embedded={"var_dir": str(root / "var"), "smoke_job": False},
    )
    return config


def start_own_fleet(root: Path, *, count: bool, timeout: float = 300.0) -> Fleet:
    from comfyfleet.local.node import free_port

    root.mkdir(parents=True, exist_ok=True)
    ports = {"prefect": free_port(), "gateway": free_port(), "node": free_port()}
    config = own_config(root, ports)
    config_path = root / "comfyfleet.yaml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COMFYFLEET_", "PREFECT_"))}
    env["COMFYFLEET_CONFIG"] = str(config_path)
    probe_dir = None
    if count:
        probe_dir = root / "probe"
        probe_dir.mkdir(exist_ok=True)
        env["COMFYFLEET_BENCH_PROBE_DIR"] = str(probe_dir)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PROBE_DIR), env.get("PYTHONPATH")]))
    settings = Settings(**config)
    _log(f"starting an embedded fleet in {root} (Prefect :{ports['prefect']}, "
         f"web :{ports['gateway']}, node :{ports['node']})")  # fmt: skip
    with (root / "up.log").open("ab") as log:
        up = subprocess.Popen(
            [sys.executable, "-m", "comfyfleet", "up", "--no-smoke"], cwd=REPO_ROOT, env=env,
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    fleet = Fleet(settings, {}, root=root, up=up, probe_dir=probe_dir)
    state = settings.embedded.var_dir / "run" / "components.json"
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if up.poll() is not None:
                tail = (root / "up.log").read_text(errors="replace")[-3000:]
                raise RuntimeError(f"`comfyfleet up` exited ({up.returncode}):\n{tail}")
            with contextlib.suppress(OSError, ValueError):
                fleet.pids = read_components(state)
            if set(CONTROL_PLANE) <= set(fleet.pids) and _healthy(fleet.gateway_url):
                return fleet
            time.sleep(0.5)
        raise TimeoutError(f"the fleet was not up within {timeout:.0f} s (see {root}/up.log)")
    except BaseException:
        fleet.stop()
        raise


def read_components(path: Path) -> dict[str, int]:
    """Component name → pid of the running ones, from `comfyfleet up`'s components.json."""
    doc = json.loads(path.read_text())
    return {
        name: c["pid"]
        for name, c in doc.get("components", {}).items()
        if c.get("running") and c.get("pid")
    }


def attach(components: Path | None) -> Fleet:
    settings = Settings()
    path = components or settings.embedded.var_dir / "run" / "components.json"
    pids = read_components(path)
    missing = [name for name in CONTROL_PLANE if name not in pids]
    if missing:
        _log(f"not in {path} (not measured): {', '.join(missing)}")
    return Fleet(settings, pids)


def _healthy(url: str) -> bool:
    with contextlib.suppress(httpx.HTTPError):
        return httpx.get(f"{url}/api/health", timeout=2).status_code == 200
    return False


# -- jobs ------------------------------------------------------------------------------------


class Store:
    """The fleet's job store, read directly (so waiting costs the web process nothing)."""

    def __init__(self, settings: Settings) -> None:
        from comfyfleet.store import Database

        self.db = Database.from_settings(settings)

    def token(self) -> str:
        """A bearer token of the `bench-cost` admin user (created on first use)."""
        import secrets

        from comfyfleet.auth import Principal, create_user, issue_token
        from comfyfleet.store.models import User

        def run(session: Any) -> str:
            user = session.query(User).filter_by(username=BENCH_USER).one_or_none()
            if user is None:
                user = create_user(
                    session, username=BENCH_USER, password=secrets.token_urlsafe(24), admin=True
                )
                session.flush()
            return issue_token(session, principal=Principal(user=user), ttl_minutes=240).token

        return self.db.run(run)

    def statuses(self, ids: list[str]) -> dict[str, tuple[str, datetime | None]]:
        from sqlalchemy import select

        from comfyfleet.store.models import Job

        stmt = select(Job.id, Job.status, Job.finished_at).where(Job.id.in_(ids))
        rows = self.db.run(lambda s: list(s.execute(stmt)), readonly=True)
        return {r.id: (r.status, r.finished_at) for r in rows}

    def unfinished(self) -> int:
        from sqlalchemy import func, select

        from comfyfleet.store.models import Job

        stmt = select(func.count()).select_from(Job).where(Job.status.not_in(TERMINAL))
        return self.db.run(lambda s: s.scalar(stmt), readonly=True) or 0

    def close(self) -> None:
        self.db.dispose()


async def submit_burst(url: str, token: str, n: int) -> tuple[list[str], list[str]]:
    """POST n jobs at once; (job ids accepted, errors)."""
    headers = {"Authorization": f"Bearer {token}"}
    limits = httpx.Limits(max_connections=n, max_keepalive_connections=n)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:

        async def one() -> str:
            r = await client.post("/api/v2/tasks/text-to-image", json=JOB_BODY, headers=headers)
            if r.status_code != 202:
                raise RuntimeError(f"{r.status_code}: {r.text[:200]}")
            return r.json()["id"]

        results = await asyncio.gather(*(one() for _ in range(n)), return_exceptions=True)
    ids = [r for r in results if isinstance(r, str)]
    errors = [repr(r) for r in results if not isinstance(r, str)]
    return ids, errors


def wait_jobs(
    store: Store, ids: list[str], *, timeout: float, poll_s: float = 0.1
) -> dict[str, tuple[str, datetime | None]]:
    deadline = time.monotonic() + timeout
    while True:
        seen = store.statuses(ids)
        if all(s in TERMINAL for s, _ in seen.values()) and len(seen) == len(ids):
            return seen
        if time.monotonic() >= deadline:
            return seen
        time.sleep(poll_s)


def active_flow_runs(api_url: str, headers: dict[str, str] | None = None) -> int:
    """Flow runs pending or running, but the nodes' shifts (tag `shift`: they run for as long as
    their worker, they are not work in flight)."""
    body = {"flow_runs": {"state": {"type": {"any_": ACTIVE_RUN_STATES}}}, "limit": 200}
    r = httpx.post(f"{api_url}/flow_runs/filter", json=body, headers=headers, timeout=30)
    r.raise_for_status()
    return sum(1 for run in r.json() if "shift" not in (run.get("tags") or []))


def wait_idle(fleet: Fleet, store: Store, *, timeout: float = 300.0, settle_s: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if store.unfinished() == 0 and active_flow_runs(fleet.api_url, fleet.api_headers) == 0:
            time.sleep(settle_s)
            return
        time.sleep(0.5)
    raise TimeoutError(f"the fleet did not go idle within {timeout:.0f} s")


# -- one run ---------------------------------------------------------------------------------


@dataclass
class RunResult:
    jobs: int
    completed: int = 0
    failed: int = 0
    unfinished: int = 0
    submit_errors: list[str] = field(default_factory=list)
    submit_s: float = 0.0
    wall_s: float = 0.0
    last_finished_s: float | None = None
    idle_cpu_per_s: dict[str, float] = field(default_factory=dict)
    idle_wakeups_per_s: dict[str, float] = field(default_factory=dict)
    cpu_s: dict[str, float] = field(default_factory=dict)
    cpu_s_per_job: dict[str, float] = field(default_factory=dict)
    idle_cpu_s_per_job: dict[str, float] = field(default_factory=dict)
    processes: dict[str, int] = field(default_factory=dict)
    machine_busy_cores: float = 0.0
    other_processes_cores: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items()}


def one_run(
    fleet: Fleet, store: Store, token: str, *, jobs: int, idle_s: float, timeout: float,
    hooks: Any = None,
) -> RunResult:  # fmt: skip
    wait_idle(fleet, store)
    measured = {**fleet.control_plane(), **fleet.nodes()}
    result = RunResult(jobs=jobs)
    _log(f"idle: measuring {idle_s:g} s")
    switches = {name: context_switches(pid) for name, pid in measured.items()}
    t0 = time.monotonic()
    result.idle_cpu_per_s = idle_cpu_per_s(measured, idle_s)
    elapsed = time.monotonic() - t0
    result.idle_wakeups_per_s = {
        name: (context_switches(pid) - switches[name]) / elapsed for name, pid in measured.items()
    }
    if hooks is not None:
        hooks.before_burst()
    _log(f"burst: {jobs} jobs")
    started = datetime.now(UTC)
    with CpuMeter(measured) as meter:
        t0 = time.monotonic()
        ids, result.submit_errors = asyncio.run(submit_burst(fleet.gateway_url, token, jobs))
        result.submit_s = time.monotonic() - t0
        seen = wait_jobs(store, ids, timeout=timeout)
    result.wall_s = meter.wall_s
    result.cpu_s = meter.cpu_s()
    result.processes = meter.processes()
    busy = meter.machine_busy_s()
    result.machine_busy_cores = busy / meter.wall_s
    result.other_processes_cores = max(busy - sum(result.cpu_s.values()), 0.0) / meter.wall_s
    statuses = [s for s, _ in seen.values()]
    result.completed = statuses.count("completed")
    result.failed = statuses.count("failed") + statuses.count("cancelled")
    result.unfinished = len(ids) - result.completed - result.failed
    finished = [f for s, f in seen.values() if f is not None and s in TERMINAL]
    if finished:
        last = max(finished).replace(tzinfo=UTC) if max(finished).tzinfo is None else max(finished)
        result.last_finished_s = (last - started).total_seconds()
    if result.completed:
        result.cpu_s_per_job = {k: v / result.completed for k, v in result.cpu_s.items()}
        result.idle_cpu_s_per_job = {
            k: v * result.wall_s / result.completed for k, v in result.idle_cpu_per_s.items()
        }
    if hooks is not None:
        result.extra = hooks.after_burst(started, result)
    return result


# -- report ----------------------------------------------------------------------------------


def python_speed_ms() -> float:
    """A fixed pure-Python loop, best of 5, in ms of CPU: the machine's speed, recorded beside
    the CPU figures (CPU-seconds per job scale with it; the same runs measured 0.17–0.20 CPU-s
    per job one day and 0.35 another, on the same machine kind)."""
    best = float("inf")
    for _ in range(5):
        start = time.process_time()
        sum(i * i for i in range(1_000_000))
        best = min(best, time.process_time() - start)
    return best * 1000


def table(runs: list[RunResult]) -> str:
    """Per component: idle CPU/s, CPU-s per job of every run, their mean and the mean share of
    it that idle work would have cost over the same wall time."""
    names = [*CONTROL_PLANE, *sorted({n for r in runs for n in r.cpu_s if n not in CONTROL_PLANE})]
    ours = [n for n in names if is_control_plane(n)]
    per_run = [f"run {i + 1}" for i in range(len(runs))]
    head = [
        "component",
        "idle wake-ups/s",
        "idle CPU/s",
        *per_run,
        "mean CPU-s/job",
        "of which idle",
    ]

    def row(label: str, parts: list[str]) -> list[str]:
        idle = _mean([sum(r.idle_cpu_per_s.get(n, 0.0) for n in parts) for r in runs])
        wakeups = _mean([sum(r.idle_wakeups_per_s.get(n, 0.0) for n in parts) for r in runs])
        per_job = [sum(r.cpu_s_per_job.get(n, 0.0) for n in parts) if r.completed else None
                   for r in runs]  # fmt: skip
        idle_job = _mean([sum(r.idle_cpu_s_per_job.get(n, 0.0) for n in parts) if r.completed
                          else None for r in runs])  # fmt: skip
        return [label, f"{wakeups or 0:.0f}", _f(idle), *[_f(v) for v in per_job],
                _f(_mean(per_job)), _f(idle_job)]  # fmt: skip

    rows = [row(n if n in ours else f"({n}: not control plane)", [n]) for n in names]
    rows.append(row("control plane", ours))
    rows.append(["wall s", "", "", *[f"{r.wall_s:.1f}" for r in runs], "", ""])
    rows.append(["jobs completed", "", "", *[f"{r.completed}/{r.jobs}" for r in runs], "", ""])
    rows.append(["other processes, cores", "", "",
                 *[f"{r.other_processes_cores:.2f}" for r in runs], "", ""])  # fmt: skip
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows, strict=True)]
    lines = [" | ".join(str(c).ljust(w) for c, w in zip(head, widths, strict=True))]
    lines.append("-+-".join("-" * w for w in widths))
    lines += [" | ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(lines)


def _mean(values: list[float | None]) -> float | None:
    got = [v for v in values if v is not None]
    return sum(got) / len(got) if got else None


def _f(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _git() -> str:
    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10
        ).stdout.strip()

    try:
        return git("rev-parse", "--short", "HEAD") + (
            "+dirty" if git("status", "--porcelain") else ""
        )
    except (OSError, subprocess.SubprocessError):
        return "?"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.cost",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--jobs", type=int, default=40, help="jobs per burst (40)")
    parser.add_argument("--runs", type=int, default=1, help="bursts, each after an idle wait (1)")
    parser.add_argument("--idle-seconds", type=float, default=10.0, help="idle measurement (10)")
    parser.add_argument("--warmup", type=int, default=2, help="jobs run before measuring (2)")
    parser.add_argument("--timeout", type=float, default=600.0, help="per burst (600 s)")
    parser.add_argument("--attach", action="store_true", help="measure the running `make up`")
    parser.add_argument("--components", type=Path, help="components.json (with --attach)")
    parser.add_argument(
        "--count",
        action="store_true",
        help="count API calls, SQL, events, logs, artifacts (own fleet only)",
    )
    parser.add_argument("--py-spy", action="store_true", help="profile each component (py-spy)")
    parser.add_argument("--py-spy-rate", type=int, default=50, help="samples per second (50)")
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)
    if args.count and args.attach:
        parser.error("--count needs a fleet of its own (it sets the processes' PYTHONPATH)")
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    root = BENCH_VAR / f"cost-{stamp}"
    fleet = attach(args.components) if args.attach else start_own_fleet(root, count=args.count)
    runs: list[RunResult] = []
    extra: dict[str, Any] = {}
    store = Store(fleet.settings)
    try:
        hooks = None
        if args.count or args.py_spy:
            from bench.cost_detail import Detail

            hooks = Detail(fleet, root, count=args.count, py_spy=args.py_spy, rate=args.py_spy_rate)
        token = store.token()
        if args.warmup:
            _log(f"warm-up: {args.warmup} jobs")
            wait_idle(fleet, store)
            ids, errors = asyncio.run(submit_burst(fleet.gateway_url, token, args.warmup))
            if errors:
                raise RuntimeError(f"warm-up submissions failed: {errors[:3]}")
            wait_jobs(store, ids, timeout=args.timeout)
        if hooks is not None:
            wait_idle(fleet, store)
            extra["idle_counts"] = hooks.idle(args.idle_seconds)
        for i in range(args.runs):
            _log(f"run {i + 1}/{args.runs}")
            runs.append(one_run(
                fleet, store, token, jobs=args.jobs, idle_s=args.idle_seconds,
                timeout=args.timeout, hooks=hooks,
            ))  # fmt: skip
            r = runs[-1]
            _log(f"run {i + 1}: {r.completed}/{r.jobs} completed in {r.wall_s:.1f} s")
    finally:
        store.close()
        fleet.stop()
    speed_ms = python_speed_ms()
    doc = {
        "meta": {
            "started_utc": stamp,
            "git": _git(),
            "mode": "attach" if args.attach else "own fleet",
            "runtime_dir": str(root) if not args.attach else None,
            "cores": os.cpu_count(),
            "python_speed_ms": speed_ms,
            "load_average_at_end": os.getloadavg()[0],
            "pids": fleet.pids,
            "prefect_api_url": fleet.api_url,
            "args": {k: str(v) for k, v in vars(args).items()},
            "job": JOB_BODY,
        },
        "runs": [r.as_json() for r in runs],
        "mean_cpu_s_per_job": {
            name: _mean([r.cpu_s_per_job.get(name) for r in runs])
            for name in {n for r in runs for n in r.cpu_s}
        },
        **extra,
    }
    args.results_dir.mkdir(parents=True, exist_ok=True)
    out = args.results_dir / f"cost-{stamp}.json"
    out.write_text(json.dumps(doc, indent=2, default=str))
    print(table(runs))
    print(f"\nmachine speed: a fixed Python loop took {speed_ms:.0f} ms of CPU (python_speed_ms)")
    print(f"results: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
