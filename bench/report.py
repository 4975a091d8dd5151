"""Writing the results: `bench/results/<UTC>.json`, `<UTC>.md` with PNG plots, a summary table."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.stats import cdf_points

HEADER = ("bench", "figure", "ComfyFleet", "baselines / detail", "goal")


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:60]


def write_json(path: Path, results: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2, sort_keys=False, allow_nan=False) + "\n")
    return path


def table(rows: Sequence[Sequence[str]], header: Sequence[str] = HEADER) -> str:
    """A plain-text table (fixed-width columns) for the terminal."""
    rows = [tuple(str(c) for c in r) + ("",) * (len(header) - len(r)) for r in rows]
    widths = [
        max(len(str(h)), *(len(r[i]) for r in rows)) if rows else len(str(h))
        for i, h in enumerate(header)
    ]
    line = "  ".join("-" * w for w in widths)
    out = ["  ".join(str(h).ljust(w) for h, w in zip(header, widths, strict=True)), line]
    out += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(out)


def markdown_table(rows: Sequence[Sequence[str]], header: Sequence[str] = HEADER) -> str:
    def esc(c: Any) -> str:
        return str(c).replace("|", "\\|")

    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(esc(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


# -- plots -----------------------------------------------------------------------------------


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_timelines(path: Path, title: str, runs: dict[str, list[list[Any]]]) -> Path:
    """One panel per system: a bar per prompt on its node's row (seconds from the first submit)."""
    plt = _pyplot()
    fig, axes = plt.subplots(len(runs), 1, figsize=(10, 2.0 + 1.6 * len(runs)), squeeze=False)
    span = max((end for rows in runs.values() for _, _, end in rows), default=1.0)
    for ax, (name, rows) in zip(axes[:, 0], runs.items(), strict=True):
        nodes = sorted({n for n, _, _ in rows})
        for y, node in enumerate(nodes):
            bars = [(s, e - s) for n, s, e in rows if n == node]
            ax.broken_barh(
                bars, (y - 0.4, 0.8), facecolors="tab:blue", edgecolor="white", linewidth=0.3
            )
        ax.set_yticks(range(len(nodes)), nodes)
        ax.set_xlim(0, span * 1.02)
        ax.set_title(name, fontsize=10, loc="left")
        ax.grid(axis="x", alpha=0.3)
    axes[-1, 0].set_xlabel("seconds since the first submit")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def plot_cdfs(
    path: Path, title: str, panels: dict[str, dict[str, list[float]]], *, log_x: bool = True
) -> Path:
    """Empirical CDFs, one panel per measure, one line per system."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4), squeeze=False)
    for ax, (measure, series) in zip(axes[0], panels.items(), strict=True):
        for name, values in series.items():
            values = [v for v in values if v is not None and not math.isnan(v)]
            if not values:
                continue
            xs, ys = cdf_points([max(v, 1e-4) for v in values])
            ax.step(xs, ys, where="post", label=f"{name} (n={len(xs)})")
        if log_x:
            ax.set_xscale("log")
        ax.set_xlabel(f"{measure} (s)")
        ax.set_ylabel("fraction of jobs")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def plot_failover(path: Path, trials: list[dict[str, Any]]) -> Path:
    """Per trial: detection, re-dispatch, running elsewhere and completion after the kill."""
    plt = _pyplot()
    keys = ["detected_s", "redispatched_s", "running_elsewhere_s", "completed_s"]
    fig, ax = plt.subplots(figsize=(8, 4))
    for i, key in enumerate(keys):
        ys = [t.get(key) for t in trials]
        xs = [k + 1 + (i - 1.5) * 0.12 for k, y in enumerate(ys) if isinstance(y, float)]
        ax.scatter(xs, [y for y in ys if isinstance(y, float)], label=key.removesuffix("_s"), s=20)
    ax.set_xlabel("trial")
    ax.set_ylabel("seconds after kill -9")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("B4 failover")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def plot_rss(path: Path, series: dict[str, list[float]]) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 3.5))
    for name, values in series.items():
        ax.plot(range(len(values)), values, label=name)
    ax.set_xlabel("seconds")
    ax.set_ylabel("control-plane RSS (MB)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("B3 control-plane memory under load")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


# -- markdown --------------------------------------------------------------------------------


def write_markdown(
    path: Path,
    results: dict[str, Any],
    rows: Sequence[Sequence[str]],
    plots: dict[str, list[Path]],
    sections: dict[str, str],
) -> Path:
    meta = results.get("meta", {})
    lines = [
        f"# ComfyFleet benchmarks — {meta.get('started_utc', '')}",
        "",
        f"Mode: **{meta.get('mode')}**; {meta.get('machine', '')}; git {meta.get('git', '?')}; "
        f"Prefect server database (B1/B2/B4): {meta.get('prefect_db')}; wall time "
        f"{meta.get('wall_s', 0):.0f} s. Reproduce: `{meta.get('command')}`.",
        "",
        "Benchmarks report, they do not assert. Job length is exact (the test delay node); every",
        "node is a real ComfyUI 0.3.75 on CPU. Other processes on the machine are measured and",
        "shown per run (`other_processes_cores`), because they share the two cores.",
        "",
        "## Summary",
        "",
        markdown_table(rows),
        "",
    ]
    notes = results.get("notes") or []
    if notes:
        lines += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
    for key, text in sections.items():
        lines += [f"## {key}", "", text, ""]
        for plot in plots.get(key, []):
            lines += [f"![{plot.stem}]({plot.name})", ""]
    lines += [
        "Raw figures: " + f"[`{path.with_suffix('.json').name}`]({path.with_suffix('.json').name})",
        "",
    ]
    path.write_text("\n".join(lines))
    return path


def fmt(value: Any, digits: int = 2) -> str:
    if isinstance(value, float):
        return "n/a" if math.isnan(value) else f"{value:.{digits}f}"
    return str(value)
