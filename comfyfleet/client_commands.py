"""CLI: commands that talk to the gateway with a bearer token.

    comfyfleet login [--username U] [--password-stdin]
    comfyfleet submit <capability|workflow> [--prompt TEXT] [--param k=v ...] [--image PATH]
                      [--priority P] [--webhook URL] [--wait [--download DIR]] [--json]
    comfyfleet jobs list [--status S] [--all] [--limit N] [--json] | show ID [--json] | cancel ID

The token comes from `COMFYFLEET_TOKEN`, else from `comfyfleet login`, which stores it per gateway
in `$XDG_CONFIG_HOME/comfyfleet/tokens.json` (default ~/.config; file mode 0600). The gateway is
`--gateway URL` / `COMFYFLEET_GATEWAY` (default http://127.0.0.1:8000). `submit --wait` follows
the job's event stream and draws a progress bar of its real steps on stderr.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
from pathlib import Path
from typing import Any

from comfyfleet.cli import CliError, group, print_table

CAPABILITY_WORKFLOWS = {
    "text_to_image": "sd15-basic",
    "text-to-image": "sd15-basic",
    "text_to_image_sdxl": "sdxl-basic",
    "text-to-image-sdxl": "sdxl-basic",
    "image_to_video": "svd-basic",
    "image-to-video": "svd-basic",
    "image_to_image": "sd15-img2img",
    "image-to-image": "sd15-img2img",
}


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("login", help="log in to the gateway and store a token")
    parser.add_argument("--username", help="default: your OS user name")
    parser.add_argument(
        "--password-stdin", action="store_true", help="read the password from stdin"
    )
    parser.set_defaults(func=cmd_login)

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


# -- tokens and HTTP --------------------------------------------------------------------------


def token_file() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "comfyfleet" / "tokens.json"


def _stored() -> dict[str, Any]:
    try:
        return json.loads(token_file().read_text())
    except (OSError, ValueError):
        return {}


def save_token(gateway: str, token: str, username: str) -> Path:
    path = token_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    data = _stored()
    data[gateway.rstrip("/")] = {"token": token, "username": username}
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(data, fh, indent=1)
    return path


def token_for(gateway: str) -> str:
    token = os.environ.get("COMFYFLEET_TOKEN")
    if token:
        return token
    entry = _stored().get(gateway.rstrip("/"))
    if not entry:
        raise CliError(
            f"not logged in to {gateway}: run `comfyfleet login` (or set COMFYFLEET_TOKEN)"
        )
    return entry["token"]


def client(args: argparse.Namespace, *, auth: bool = True, timeout: float = 30.0) -> Any:
    import httpx

    headers = {"Authorization": f"Bearer {token_for(args.gateway)}"} if auth else {}
    return httpx.Client(base_url=args.gateway, headers=headers, timeout=timeout)


def check(response: Any) -> Any:
    """The JSON of a successful response, or a CliError with the gateway's message."""
    if response.status_code < 400:
        return response.json() if response.content else None
    try:
        body = response.json()
        message = body.get("message") or body
    except ValueError:
        message = response.text[:300]
    if response.status_code == 401:
        message = f"{message} (run `comfyfleet login`)"
    raise CliError(f"HTTP {response.status_code}: {message}")


def _request(args: argparse.Namespace, method: str, path: str, **kwargs: Any) -> Any:
    import httpx

    try:
        with client(args) as http:
            return check(http.request(method, path, **kwargs))
    except httpx.HTTPError as exc:
        raise CliError(f"cannot reach the gateway at {args.gateway}: {exc}") from None


# -- commands ---------------------------------------------------------------------------------


def cmd_login(args: argparse.Namespace) -> int:
    import httpx

    username = args.username or getpass.getuser()
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = getpass.getpass(f"Password for {username}@{args.gateway}: ")
    try:
        with client(args, auth=False) as http:
            body = check(
                http.post("/api/v2/auth/login", json={"username": username, "password": password})
            )
    except httpx.HTTPError as exc:
        raise CliError(f"cannot reach the gateway at {args.gateway}: {exc}") from None
    path = save_token(args.gateway, body["access_token"], username)
    role = " (admin)" if body.get("is_admin") else ""
    print(f"logged in to {args.gateway} as {username}{role}; token in {path}")
    return 0


def _typed(value: str, schema: dict[str, Any]) -> Any:
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
    workflow_id = CAPABILITY_WORKFLOWS.get(args.target, args.target)
    workflow = _request(args, "GET", f"/api/v2/workflows/{workflow_id}")
    properties = workflow["parameters"].get("properties", {})
    params: dict[str, Any] = {}
    for item in args.param:
        key, sep, value = item.partition("=")
        if not sep:
            raise CliError(f"--param {item!r}: use K=V")
        params[key] = _typed(value, properties.get(key, {}))
    if args.prompt is not None:
        params["prompt"] = args.prompt
    if args.image is not None:
        try:
            data = args.image.read_bytes()
        except OSError as exc:
            raise CliError(f"--image {args.image}: {exc.strerror}") from None
        stored = _request(args, "POST", "/api/v2/inputs", files={"file": (args.image.name, data)})
        params["image"] = stored["ref"]
    body: dict[str, Any] = {"workflow": workflow["id"], "params": params, "priority": args.priority}
    if args.webhook:
        body["webhook_url"] = args.webhook
    job = _request(args, "POST", "/api/v2/tasks", json=body)
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
    """Follow the job's events, drawing a progress bar on stderr; the job JSON at the end."""
    import httpx

    tty = sys.stderr.isatty()
    status, bar = "queued", ""
    try:
        with client(args, timeout=None) as http:
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
                        if event == "status":
                            status = data["status"]
                            bar = f"{status}{' on ' + data['node'] if data.get('node') else ''}"
                        elif event == "progress" and data.get("max"):
                            done = int(30 * data["value"] / data["max"])
                            bar = (
                                f"[{'#' * done}{' ' * (30 - done)}] {data['value']}/{data['max']}"
                                f" on {data.get('node') or '?'}"
                            )
                        elif event == "end":
                            break
                        print(
                            ("\r" if tty else "") + bar + (" " * 8 if tty else ""),
                            end="" if tty else "\n",
                            file=sys.stderr,
                            flush=True,
                        )
    except httpx.HTTPError as exc:
        raise CliError(f"lost the event stream of job {job_id}: {exc}") from None
    if tty:
        print(file=sys.stderr)
    return _request(args, "GET", f"/api/v2/tasks/{job_id}")


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


def cmd_jobs_list(args: argparse.Namespace) -> int:
    query: dict[str, Any] = {"limit": args.limit}
    if args.status:
        query["status"] = args.status
    if args.all:
        query["all"] = "true"
    page = _request(args, "GET", "/api/v2/tasks", params=query)
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
    job = _request(args, "GET", f"/api/v2/tasks/{args.job_id}")
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
    job = _request(args, "DELETE", f"/api/v2/tasks/{args.job_id}")
    print(f"{job['id']} {job['status']}")
    return 0
