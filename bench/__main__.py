"""`python -m bench [--quick] [--only B1,B2]`: run the benchmarks, write the results, print a table.

Results: `bench/results/<UTC date-time>.json` (one key per benchmark with its figures and its
baselines' figures), `<UTC date-time>.md` (the report) and PNG plots beside them. Runtime files
(node folders, control-plane logs) go to `var/bench/<UTC date-time>/`.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path
from types import ModuleType
from typing import Any

from bench import b1_efficiency, b2_latency, b3_scale, b4_failover, b5_simulated, report
from bench.context import Context, round_floats
from comfyfleet.settings import REPO_ROOT

# B3 runs last: it replaces the main fleet's control plane with its own.
BENCHMARKS: dict[str, ModuleType] = {
    "B1": b1_efficiency,
    "B2": b2_latency,
    "B4": b4_failover,
    "B3": b3_scale,
    "B5": b5_simulated,
}
DEFAULT = ("B1", "B2", "B4", "B3")
"""What `make bench` runs; B5 (its own 30 min on simulated nodes) only when named."""
RESULTS_DIR = REPO_ROOT / "bench" / "results"


def _git() -> str:
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        return rev + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "?"


def _machine() -> str:
    mem = 0
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem = int(line.split()[1]) // 2**20
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    return (
        f"{os.cpu_count()} cores, {mem} GB RAM, Python {platform.python_version()}, "
        f"load average {load:.1f} at start"
    )


def parse_only(text: str | None) -> list[str]:
    if not text:
        return list(DEFAULT)
    wanted = [part.strip().upper() for part in text.split(",") if part.strip()]
    unknown = [w for w in wanted if w not in BENCHMARKS]
    if unknown:
        raise SystemExit(
            f"unknown benchmark(s) {', '.join(unknown)}; known: {', '.join(BENCHMARKS)}"
        )
    return [name for name in BENCHMARKS if name in wanted]


def _terminate(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="scaled-down run (< 5 min)")
    parser.add_argument("--only", help="comma-separated subset, e.g. B1,B2")
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)
    selected = parse_only(args.only)
    signal.signal(signal.SIGTERM, _terminate)
    ctx = Context.create(quick=args.quick, results_dir=args.results_dir)
    command = "QUICK=1 make bench" if args.quick else "make bench"
    if args.only:
        command = f"python -m bench {'--quick ' if args.quick else ''}--only {','.join(selected)}"
    results: dict[str, Any] = {
        "meta": {
            "started_utc": ctx.stamp,
            "mode": "quick" if args.quick else "full",
            "benchmarks": selected,
            "machine": _machine(),
            "git": _git(),
            "command": command,
            "prefect_db": ctx.prefect_db,
            "runtime_dir": str(ctx.run_dir),
        }
    }
    ctx.log(f"benchmarks {', '.join(selected)} ({results['meta']['mode']}); logs in {ctx.run_dir}")
    try:
        for name in selected:
            module = BENCHMARKS[name]
            t = time.monotonic()
            ctx.log(f"{name} {module.TITLE}: start")
            try:
                results[name] = module.run(ctx)
            except Exception as exc:
                ctx.log(f"{name} failed: {exc!r}")
                results[name] = {"error": repr(exc), "traceback": traceback.format_exc()[-4000:]}
            results[name]["wall_s"] = time.monotonic() - t
            ctx.log(f"{name}: done in {results[name]['wall_s']:.0f}s")
    finally:
        ctx.log("stopping nodes and control planes")
        ctx.close()
    results["meta"]["wall_s"] = time.monotonic() - ctx.started
    results["notes"] = ctx.notes
    rows, md = write_results(ctx, results)
    print(report.table(rows))
    print(f"\nreport: {md}")
    return 0


def write_results(ctx: Context, results: dict[str, Any]) -> tuple[list[tuple[str, ...]], Path]:
    out_dir = ctx.results_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    base = out_dir / ctx.stamp
    clean = round_floats(results)
    report.write_json(base.with_suffix(".json"), clean)
    rows: list[tuple[str, ...]] = []
    sections: dict[str, str] = {}
    plots: dict[str, list[Path]] = {}
    for name, module in BENCHMARKS.items():
        result = results.get(name)
        if result is None:
            continue
        key = f"{name} {module.TITLE}"
        if "error" in result and len(result) <= 3:
            rows.append((name, module.TITLE, "failed", result["error"][:100], ""))
            sections[key] = (
                f"Failed: `{result['error']}`\n\n```\n{result.get('traceback', '')}\n```"
            )
            continue
        try:
            rows += module.summary_rows(result)
            sections[key] = module.markdown(result)
            plots[key] = _plots(name, result, base)
        except Exception as exc:  # a report bug must not lose the JSON
            sections[key] = f"(report failed: {exc!r})"
            ctx.log(f"report of {name} failed: {exc!r}\n{traceback.format_exc()}")
    md = report.write_markdown(base.with_suffix(".md"), clean, rows, plots, sections)
    return rows, md


def _plots(name: str, result: dict[str, Any], base: Path) -> list[Path]:
    stem = base.name
    out: list[Path] = []
    if name == "B1":
        grouped: dict[str, dict[str, list[list[Any]]]] = {}
        for label, rows in result.get("timelines", {}).items():
            workload, _, system = label.rpartition(" / ")
            grouped.setdefault(workload, {})[system] = rows
        for workload, runs in grouped.items():
            path = base.parent / f"{stem}-b1-{report.slug(workload)}.png"
            out.append(report.plot_timelines(path, f"B1 {workload}: executions per node", runs))
    elif name == "B2":
        samples = result.get("samples", {})
        panels = {
            "submit → execution_start": {
                k: v.get("submit_to_start_s", []) for k, v in samples.items()
            },
            "execution_success → outputs visible": {
                k: v.get("end_to_visible_s", []) for k, v in samples.items()
            },
        }
        out.append(
            report.plot_cdfs(
                base.parent / f"{stem}-b2-latency-cdf.png", "B2 dispatch latency (CDF)", panels
            )
        )
    elif name == "B4" and result.get("trials"):
        out.append(report.plot_failover(base.parent / f"{stem}-b4-failover.png", result["trials"]))
    elif name == "B3":
        series = {
            f"Prefect on {v}": (result.get(f"prefect_{v}") or {})
            .get("rss", {})
            .get("series_total_mb", [])
            for v in ("postgres", "sqlite")
        }
        series = {k: v for k, v in series.items() if v}
        if series:
            out.append(report.plot_rss(base.parent / f"{stem}-b3-rss.png", series))
    return out


if __name__ == "__main__":
    sys.exit(main())
