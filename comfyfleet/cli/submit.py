"""`comfyfleet submit <capability|workflow> [--prompt TEXT] [--param k=v ...] [--image PATH]
[--priority P] [--webhook URL] [--wait [--download DIR]] [--json]`: a job through the gateway.

`--wait` follows the job's event stream and draws a progress bar of its real steps on stderr
(comfyfleet.cli._progress).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from comfyfleet.cli import CliError
from comfyfleet.cli._gateway import check, client, request


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("submit", help="submit a job through the gateway")
    parser.add_argument("target", help="a capability (text_to_image, …) or a workflow id")
    parser.add_argument("--prompt", help="the prompt (same as --param prompt=…)")
    parser.add_argument(
        "--param",
        "-p",
        action="append",
        default=[],
        metavar="K=V",
        help="a workflow parameter (repeatable)",
    )
    parser.add_argument("--image", type=Path, help="an input image to upload for `image`")
    parser.add_argument("--priority", choices=["high", "normal", "low"], default="normal")
    parser.add_argument("--webhook", help="URL POSTed (signed) when the job ends")
    parser.add_argument("--wait", action="store_true", help="follow the job to its end")
    parser.add_argument("--download", type=Path, metavar="DIR", help="with --wait: save outputs")
    parser.add_argument("--json", action="store_true", help="print the job JSON")
    parser.set_defaults(func=cmd_submit)


def workflow_for(target: str) -> str:
    """A capability (`text_to_image` or `text-to-image`) names its default workflow
    (comfyfleet.jobs.DEFAULT_WORKFLOWS); anything else is a workflow id."""
    from comfyfleet.jobs import DEFAULT_WORKFLOWS

    return DEFAULT_WORKFLOWS.get(target.replace("-", "_"), target)


def typed(value: str, schema: dict[str, Any]) -> Any:
    kind = schema.get("type")
    try:
        if kind == "integer":
            return int(value)
        if kind == "number":
            return float(value)
        if kind == "boolean":
            return value.strip().lower() in ("1", "true", "yes", "on")
    except ValueError:
        return value  # the gateway names the parameter and what it allows
    return value


def cmd_submit(args: argparse.Namespace) -> int:
    workflow_id = workflow_for(args.target)
    workflow = request(args, "GET", f"/api/v2/workflows/{workflow_id}")
    properties = workflow["parameters"].get("properties", {})
    params: dict[str, Any] = {}
    for item in args.param:
        key, sep, value = item.partition("=")
        if not sep:
            raise CliError(f"--param {item!r}: use K=V")
        params[key] = typed(value, properties.get(key, {}))
    if args.prompt is not None:
        params["prompt"] = args.prompt
    if args.image is not None:
        try:
            data = args.image.read_bytes()
        except OSError as exc:
            raise CliError(f"--image {args.image}: {exc.strerror}") from None
        stored = request(args, "POST", "/api/v2/inputs", files={"file": (args.image.name, data)})
        params["image"] = stored["ref"]
    body: dict[str, Any] = {"workflow": workflow["id"], "params": params, "priority": args.priority}
    if args.webhook:
        body["webhook_url"] = args.webhook
    job = request(args, "POST", "/api/v2/tasks", json=body)
    if job.get("webhook_secret"):
        print(f"webhook signing secret (shown once): {job['webhook_secret']}", file=sys.stderr)
    if not args.wait:
        print(json.dumps(job, indent=1) if args.json else job["id"])
        return 0
    job = follow(args, job["id"])
    if args.json:
        print(json.dumps(job, indent=1))
    else:
        print(f"{job['id']} {job['status']} on {job.get('node') or '?'}")
        for output in job.get("outputs", []):
            print(f"  {output['name']}  {output['url']}")
    if args.download and job["status"] == "completed":
        download(args, job, args.download)
    return 0 if job["status"] == "completed" else 1


def follow(args: argparse.Namespace, job_id: str) -> dict[str, Any]:
    """Follow the job's events, drawing a progress bar of its steps on stderr; the job JSON at
    the end."""
    import httpx

    from comfyfleet.cli._progress import Bar

    try:
        with client(args, timeout=None) as http, Bar(f"job {job_id[:8]}") as bar:
            with http.stream("GET", f"/api/v2/tasks/{job_id}/events") as response:
                if response.status_code >= 400:
                    response.read()
                    check(response)
                event = "message"
                for line in response.iter_lines():
                    if line.startswith("event:"):
                        event = line[6:].strip()
                    elif line.startswith("data:"):
                        data = json.loads(line[5:].strip())
                        on = f" on {data['node']}" if data.get("node") else ""
                        if event == "status":
                            bar.update(0, None, f"{data['status']}{on}")
                        elif event == "progress" and data.get("max"):
                            bar.update(data["value"], data["max"], f"steps{on or ' on ?'}")
                        elif event == "end":
                            break
    except httpx.HTTPError as exc:
        raise CliError(f"lost the event stream of job {job_id}: {exc}") from None
    return request(args, "GET", f"/api/v2/tasks/{job_id}")


def download(args: argparse.Namespace, job: dict[str, Any], folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    with client(args, timeout=300) as http:
        for output in job["outputs"]:
            response = http.get(output["url"])
            if response.status_code >= 400:
                check(response)
            target = folder / Path(output["name"]).name
            target.write_bytes(response.content)
            print(f"saved {target}")
