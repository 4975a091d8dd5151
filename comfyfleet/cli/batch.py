"""`comfyfleet batch submit FILE --workflow ID [--param K=V ...] [--priority P] [--wait] [--json]`
and `comfyfleet batch show ID [--json]`: a batch through the gateway (`/api/v2/batches`).

FILE is read here, as the batch flow reads its files (comfyfleet.jobs.batch_files: csv, jsonl,
yaml, txt), and its items are sent to the gateway, which validates every item before it queues
any. `--param` values apply to every item that does not set them. `--wait` draws a progress bar of
the jobs that ended and exits 1 if any of them did not complete.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from comfyfleet.cli import CliError, group, print_table
from comfyfleet.cli._gateway import request

POLL_S = 0.5


def register(subparsers: argparse._SubParsersAction) -> None:
    batch = group(subparsers, "batch", help="submit a batch file, look at a batch")
    parser = batch.add_parser("submit", help="one job per item of a batch file")
    parser.add_argument("file", type=Path, help="a .csv, .jsonl, .yaml/.yml or .txt batch file")
    parser.add_argument("--workflow", required=True, metavar="ID", help="the workflow to run")
    parser.add_argument(
        "--param", "-p", action="append", default=[], metavar="K=V",
        help="a parameter of every item that does not set it (repeatable)",
    )  # fmt: skip
    parser.add_argument("--priority", choices=["high", "normal", "low"], default="normal")
    parser.add_argument("--wait", action="store_true", help="follow the jobs to their end")
    parser.add_argument("--json", action="store_true", help="print the batch JSON")
    parser.set_defaults(func=cmd_submit)
    parser = batch.add_parser("show", help="a batch's jobs and their statuses")
    parser.add_argument("batch_id", metavar="ID")
    parser.add_argument("--json", action="store_true", help="print the batch JSON")
    parser.set_defaults(func=cmd_show)


def _defaults(pairs: list[str], properties: dict[str, Any]) -> dict[str, Any]:
    from comfyfleet.cli.submit import typed

    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise CliError(f"--param {pair!r}: use K=V")
        out[key] = typed(value, properties.get(key, {}))
    return out


def cmd_submit(args: argparse.Namespace) -> int:
    from comfyfleet.cli.submit import typed
    from comfyfleet.jobs.batch_files import BatchFileError, read_items, typed_items

    try:
        items = read_items(args.file)
    except BatchFileError as exc:
        raise CliError(str(exc)) from None
    if not items:
        raise CliError(f"{args.file}: no items (a batch needs at least one)")
    workflow = request(args, "GET", f"/api/v2/workflows/{args.workflow}")
    properties = workflow["parameters"].get("properties", {})
    items = typed_items(
        items, suffix=args.file.suffix, parse=lambda k, v: typed(v, properties.get(k, {}))
    )
    defaults = _defaults(args.param, properties)
    body = {"workflow": workflow["id"], "items": items, "defaults": defaults,
            "priority": args.priority}  # fmt: skip
    made = request(args, "POST", "/api/v2/batches", json=body)
    batch_id = made["batch_id"]
    if not args.wait:
        if args.json:
            print(json.dumps(made, indent=1))
        else:
            print(f"batch {batch_id}: {len(made['jobs'])} job(s) queued")
            print(f"follow it with `comfyfleet batch show {batch_id}`")
        return 0
    batch = follow(args, batch_id, total=len(made["jobs"]))
    _print(batch, as_json=args.json)
    return 0 if batch["counts"].get("completed", 0) == batch["total"] else 1


def follow(args: argparse.Namespace, batch_id: str, *, total: int) -> dict[str, Any]:
    """Poll the batch until every job ended, drawing a bar of the ended jobs; its JSON."""
    from comfyfleet.cli._progress import Bar

    with Bar(f"batch {batch_id[:8]}") as bar:
        while True:
            batch = request(args, "GET", f"/api/v2/batches/{batch_id}")
            counts = batch["counts"]
            ended = sum(counts.get(s, 0) for s in ("completed", "failed", "cancelled"))
            running = counts.get("running", 0) + counts.get("dispatched", 0)
            note = f"{running} running" + (
                f", {counts['failed']} failed" if counts.get("failed") else ""
            )
            bar.update(ended, batch["total"] or total, note)
            if batch["done"]:
                return batch
            time.sleep(POLL_S)


def cmd_show(args: argparse.Namespace) -> int:
    batch = request(args, "GET", f"/api/v2/batches/{args.batch_id}")
    _print(batch, as_json=args.json)
    return 0


def _print(batch: dict[str, Any], *, as_json: bool) -> None:
    if as_json:
        print(json.dumps(batch, indent=1))
        return
    counts = ", ".join(f"{n} {status}" for status, n in batch["counts"].items())
    state = "done" if batch["done"] else "in progress"
    print(f"batch {batch['batch_id']}: {batch['total']} job(s), {counts} ({state})")
    print_table(
        ["JOB", "STATUS", "NODE", "OUTPUTS", "ERROR"],
        [
            [j["id"], j["status"], j.get("node") or "-",
             ", ".join(o["name"] for o in j.get("outputs", [])) or "-",
             (j.get("error") or "")[:60]]
            for j in batch["jobs"]
        ],
    )  # fmt: skip
