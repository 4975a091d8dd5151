"""What the benchmarks of one run share: the nodes, the main fleet, the clock and the log.

Node layout (all real ComfyUI CPU nodes with the test delay node):
- the fleet: `gpu-1`…`gpu-4` at speed 1 (capability `delay`: homogeneous runs, B2, B4) and
  `gpu-5` (speed 2), `gpu-6` (speed 4); `gpu-1`, `gpu-2`, `gpu-5`, `gpu-6` also have
  `bench_hetero` (the heterogeneous B1 variant: speeds 1, 1, 2, 4);
- full mode also starts a second, identical set `rr-*` / `sd-*` … for the baselines, so the two
  baselines of a workload run at the same time on their own nodes (they need next to no CPU) and
  the fleet always runs alone. Quick mode runs the baselines one after the other on the fleet's
  own nodes.
B3 registers every node started so far (plus more up to 16 in full mode) in its own control plane.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.fleet import BENCH_VAR, ControlPlane, NodeEntry, NodeSet, postgres_available

FLEET_NODES: list[tuple[str, float, list[str]]] = [
    ("gpu-1", 1.0, ["delay", "bench_hetero"]),
    ("gpu-2", 1.0, ["delay", "bench_hetero"]),
    ("gpu-3", 1.0, ["delay"]),
    ("gpu-4", 1.0, ["delay"]),
    ("gpu-5", 2.0, ["bench_hetero"]),
    ("gpu-6", 4.0, ["bench_hetero"]),
]
HOMOGENEOUS = ["gpu-1", "gpu-2", "gpu-3", "gpu-4"]
HETEROGENEOUS = ["gpu-1", "gpu-2", "gpu-5", "gpu-6"]
# Baseline twins in full mode: round-robin on `rr-*`, seed-like on `sd-*` (same speeds).
BASELINE_SETS = {
    "round_robin": {
        "homogeneous": [("rr-1", 1.0), ("rr-2", 1.0), ("rr-3", 1.0), ("rr-4", 1.0)],
        "heterogeneous": [("rr-1", 1.0), ("rr-2", 1.0), ("rr-5", 2.0), ("rr-6", 4.0)],
    },
    "seed_like": {
        "homogeneous": [("sd-1", 1.0), ("sd-2", 1.0), ("sd-3", 1.0), ("sd-4", 1.0)],
        "heterogeneous": [("sd-1", 1.0), ("sd-2", 1.0), ("sd-5", 2.0), ("sd-6", 4.0)],
    },
}


@dataclass
class Context:
    quick: bool
    stamp: str
    run_dir: Path
    results_dir: Path
    nodes: NodeSet
    prefect_db: str = "postgres"
    started: float = field(default_factory=time.monotonic)
    fleet: ControlPlane | None = None
    notes: list[str] = field(default_factory=list)
    _log: Callable[[str], None] | None = None

    @classmethod
    def create(cls, *, quick: bool, results_dir: Path) -> Context:
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        run_dir = BENCH_VAR / stamp
        run_dir.mkdir(parents=True, exist_ok=True)
        prefect_db = "postgres" if postgres_available() else "sqlite"
        ctx = cls(
            quick=quick,
            stamp=stamp,
            run_dir=run_dir,
            results_dir=results_dir,
            nodes=NodeSet(run_dir / "nodes"),
            prefect_db=prefect_db,
        )
        if prefect_db == "sqlite":
            ctx.note("PostgreSQL is unreachable on 127.0.0.1:5432: the Prefect server uses SQLite.")
        return ctx

    def log(self, message: str) -> None:
        elapsed = time.monotonic() - self.started
        line = f"[bench {elapsed:6.0f}s] {message}"
        print(line, file=sys.stderr, flush=True)
        with (self.run_dir / "bench.log").open("a") as fh:
            fh.write(line + "\n")

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)

    @property
    def separate_baseline_nodes(self) -> bool:
        return not self.quick

    def main_fleet(self) -> ControlPlane:
        """The fleet of B1/B2/B4 (started on first use)."""
        if self.fleet is not None:
            return self.fleet
        t = time.monotonic()
        specs = [(n, s) for n, s, _ in FLEET_NODES]
        if self.separate_baseline_nodes:
            for sets in BASELINE_SETS.values():
                for group in sets.values():
                    specs += [s for s in group if s not in specs]
        self.log(f"starting {len(specs)} ComfyUI nodes")
        self.nodes.ensure(specs)
        self.log(
            f"nodes ready in {time.monotonic() - t:.1f}s; starting the control plane "
            f"(Prefect server on {self.prefect_db})"
        )
        entries = [NodeEntry(n, self.nodes[n].url, caps) for n, _, caps in FLEET_NODES]
        cp = ControlPlane(self.run_dir / "fleet", entries, prefect_db=self.prefect_db)
        try:
            cp.start()
        except BaseException:
            cp.stop()
            raise
        self.fleet = cp
        self.log(
            f"control plane ready ({', '.join(f'{k} {v:.1f}s' for k, v in cp.timings.items())})"
        )
        self._warm_up(cp)
        return cp

    def _warm_up(self, cp: ControlPlane) -> None:
        """One short job per node and workflow, so no benchmark measures a cold worker."""
        from bench.drive import FleetDriver

        t = time.monotonic()
        driver = FleetDriver(cp)
        batch = f"warm-up-{self.stamp}"
        n = 0
        per_workflow = 1 if self.quick else 4
        for workflow in ("delay", "delay-hetero"):
            for _ in range(per_workflow):
                driver.submit(workflow, {"seconds": 0.1, "steps": 1}, batch=batch)
                n += 1
        ok = driver.wait_batch(batch, n, timeout=120)
        driver.close()
        time.sleep(2)  # the warm-up's flow runs finish (artifacts, final state) after their jobs
        self.log(f"warm-up: {n} jobs {'done' if ok else 'NOT done'} in {time.monotonic() - t:.1f}s")

    def stop_main_fleet(self) -> None:
        if self.fleet is not None:
            self.fleet.stop()
            self.fleet = None

    def node_pairs(self, ids: list[str]) -> list[tuple[str, str]]:
        return [(i, self.nodes[i].url) for i in ids]

    def speeds(self, ids: list[str]) -> dict[str, float]:
        return {i: self.nodes[i].speed for i in ids}

    def close(self) -> None:
        self.stop_main_fleet()
        self.nodes.stop_all()


def round_floats(value: Any, digits: int = 4) -> Any:
    """JSON-friendly copy with floats rounded (NaN → None)."""
    if isinstance(value, float):
        return None if value != value else round(value, digits)
    if isinstance(value, dict):
        return {str(k): round_floats(v, digits) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [round_floats(v, digits) for v in value]
    return value
