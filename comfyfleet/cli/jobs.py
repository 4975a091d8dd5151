"""`comfyfleet jobs list [--status S] [--all] [--limit N] [--json] | show ID [--json] | cancel ID`:
your jobs on the gateway."""

from __future__ import annotations

import argparse
import json
from typing import Any

from comfyfleet.cli import group, print_table
from comfyfleet.cli._gateway import request


def register(subparsers: argparse._SubParsersAction) -> None:
    jobs = group(subparsers, "jobs", help="your jobs on the gateway")
    parser = jobs.add_parser("list", help="your jobs, newest first")
    parser.add_argument(
        "--status", help="queued, dispatched, running, completed, failed, cancelled"
    )
    parser.add_argument("--all", action="store_true", help="admins: everyone's jobs")
    parser.add_argument("--limit", type=int, default=20)
    parser.add_argument("--json", action="store_true")
    parser.set_defaults(func=cmd_jobs_list)
    parser = jobs.add_parser("show", help="one job: status, progress, node, attempts, outputs")
    parser.add_argument("job_id")
    parser.add_argument("--json", action="store_true")
    parser.set_defaults(func=cmd_jobs_show)
    parser = jobs.add_parser("cancel", help="cancel a job")
    parser.add_argument("job_id")
    parser.set_defaults(func=cmd_jobs_cancel)


def cmd_jobs_list(args: argparse.Namespace) -> int:
    query: dict[str, Any] = {"limit": args.limit}
    if args.status:
        query["status"] = args.status
    if args.all:
        query["all"] = "true"
    page = request(args, "GET", "/api/v2/tasks", params=query)
    if args.json:
        print(json.dumps(page, indent=1))
        return 0
    rows = [
        [
            j["id"],
            j["workflow"],
            j["status"],
            f"{j['progress']['value']}/{j['progress']['max']}",
            j.get("node") or "",
            (j.get("created_at") or "")[:19],
            j.get("owner") or "",
        ]
        for j in page["items"]
    ]
    print_table(["id", "workflow", "status", "progress", "node", "created", "owner"], rows)
    print(f"{len(rows)} of {page['total']} job(s)")
    return 0


def cmd_jobs_show(args: argparse.Namespace) -> int:
    job = request(args, "GET", f"/api/v2/tasks/{args.job_id}")
    if args.json:
        print(json.dumps(job, indent=1))
        return 0
    progress = job["progress"]
    print(f"job       {job['id']}\nworkflow  {job['workflow']} ({job['capability']})")
    print(
        f"status    {job['status']}  progress {progress['value']}/{progress['max']}  "
        f"node {job.get('node') or '-'}  priority {job['priority']}"
    )
    if job.get("error"):
        print(f"error     {job['error']}")
    for attempt in job.get("attempts", []):
        print(
            f"attempt   #{attempt['number']} {attempt['node']} {attempt['status']}"
            f"{' - ' + attempt['reason'] if attempt.get('reason') else ''}"
        )
    for output in job.get("outputs", []):
        print(f"output    {output['name']} ({output['size']} bytes) {output['url']}")
    return 0


def cmd_jobs_cancel(args: argparse.Namespace) -> int:
    job = request(args, "DELETE", f"/api/v2/tasks/{args.job_id}")
    print(f"{job['id']} {job['status']}")
    return 0
