"""`comfyfleet submit <capability|workflow> [--prompt TEXT] [--param k=v ...] [--image PATH]
[--priority P] [--webhook URL] [--wait [--download DIR]] [--json]`: a job through the gateway.

`comfyfleet submit --graph FILE [--priority P] [--webhook URL] [--wait …] [--json]` runs a raw
ComfyUI graph instead (FILE exported with ComfyUI's "Save (API)", `-` for stdin; the
`raw_graphs` permission): a graph the fleet refuses comes back as ComfyUI's 400, printed as its
message and one line per node error.

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
from comfyfleet.cli._gateway import check, client, request, unreachable


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("submit", help="submit a job through the gateway")
    parser.add_argument(
        "target", nargs="?", help="a capability (text_to_image, …) or a workflow id"
    )
    parser.add_argument(
        "--graph", metavar="FILE",
        help='a raw ComfyUI graph instead, exported with "Save (API)" (- reads stdin)',
    )  # fmt: skip
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
    if args.graph is not None:
        if args.target is not None:
            raise CliError(
                f"give either a capability/workflow ({args.target!r}) or --graph FILE, not both"
            )
        used = [flag for flag, value in (("--param", args.param), ("--prompt", args.prompt),
                                         ("--image", args.image)) if value]  # fmt: skip
        if used:
            raise CliError(
                f"{'/'.join(used)} set workflow parameters; a raw graph (--graph) has none: "
                "edit its values in the graph"
            )
        body: dict[str, Any] = {"graph": read_graph_file(args.graph), "priority": args.priority}
        if args.webhook:
            body["webhook_url"] = args.webhook
        return submitted(args, post_graph(args, body))
    if args.target is None:
        raise CliError("give a capability or workflow id (text_to_image, …), or --graph FILE")
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
    body = {"workflow": workflow["id"], "params": params, "priority": args.priority}
    if args.webhook:
        body["webhook_url"] = args.webhook
    return submitted(args, request(args, "POST", "/api/v2/tasks", json=body))


def submitted(args: argparse.Namespace, job: dict[str, Any]) -> int:
    """Print the job the gateway took (or follow it, with --wait); the exit status."""
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


def read_graph_file(name: str) -> dict[str, Any]:
    """The API-format graph in file `name` (`-`: stdin), or a CliError saying what is wrong."""
    from comfyfleet.catalog.draft import GraphFileError, read_graph

    if name == "-":
        text, source = sys.stdin.read(), "<stdin>"
    else:
        try:
            text, source = Path(name).read_text(encoding="utf-8"), name
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
            raise CliError(f"--graph {name}: {reason}") from None
    try:
        return read_graph(text, source)
    except GraphFileError as exc:
        raise CliError(str(exc)) from None


def post_graph(args: argparse.Namespace, body: dict[str, Any]) -> dict[str, Any]:
    """POST a raw graph; a refusal in ComfyUI's form (400) becomes a CliError with its message
    and one line per node error, a 403 says which permission it needs."""
    import httpx

    try:
        with client(args) as http:
            response = http.post("/api/v2/tasks", json=body)
    except httpx.HTTPError as exc:
        raise unreachable(args, exc) from None
    if response.status_code == 400:
        lines = comfy_error_lines(_json(response))
        if lines:
            raise CliError("\n  ".join([f"HTTP 400: {lines[0]}", *lines[1:]]))
    if response.status_code == 403:
        refusal = _json(response)
        message = refusal.get("message") if isinstance(refusal, dict) else None
        message = str(message or response.text[:300] or "forbidden")
        if "raw_graphs" not in message:
            message += " (raw graphs need the raw_graphs permission: ask an admin)"
        raise CliError(f"HTTP 403: {message}")
    return check(response)


def comfy_error_lines(body: Any) -> list[str]:
    """ComfyUI's refusal (`{"error": {type, message, details}, "node_errors": {…}}`) as lines:
    the message, then `node 3 (KSampler): value_not_in_list: message: details` per error. Empty
    when `body` is not in that form."""
    if not isinstance(body, dict) or not isinstance(body.get("error"), dict):
        return []
    error = body["error"]
    head = str(error.get("message") or error.get("type") or "the graph was refused")
    if error.get("details"):
        head += f": {error['details']}"
    lines = [head]
    node_errors = body.get("node_errors")
    for node_id, entry in (node_errors if isinstance(node_errors, dict) else {}).items():
        entry = entry if isinstance(entry, dict) else {}
        where = f"node {node_id} ({entry.get('class_type') or '?'})"
        for item in entry.get("errors") or [{}]:
            item = item if isinstance(item, dict) else {"message": str(item)}
            text = ": ".join(
                str(item[key]) for key in ("type", "message", "details") if item.get(key)
            )
            lines.append(f"{where}: {text or 'refused'}")
    return lines


def _json(response: Any) -> Any:
    try:
        return response.json()
    except ValueError:
        return None


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
