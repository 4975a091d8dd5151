"""`comfyfleet submit`: `--wait` follows a job's progress and downloads its outputs; `--graph`
sends a raw graph and prints the fleet's refusals readably."""

from __future__ import annotations

import json
import re
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest

from comfyfleet.store import Database
from tests.fixtures.gateway import Accounts, complete_job
from tests.unit.api.test_tasks import png_bytes
from tests.unit.cli.gateway_cli import run


def test_submit_wait_follows_progress_and_downloads(
    cli_env: str,
    api_users: Accounts,
    api_db: Database,
    api_settings: Any,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: Any,
    tmp_path: Path,
) -> None:
    monkeypatch.setenv("COMFYFLEET_TOKEN", api_users.alice.token)

    def finisher() -> None:
        import time

        from comfyfleet.store import list_jobs

        for _ in range(200):
            queued = api_db.run(lambda s: list_jobs(s, status="queued"), readonly=True)
            if queued:
                outputs = api_settings.store.outputs_dir
                complete_job(api_db, queued[0].id, {"out.png": png_bytes()}, outputs, delay=0.6)
                return
            time.sleep(0.05)

    thread = threading.Thread(target=finisher)
    thread.start()
    code, out = run(["submit", "delay", "--wait", "--download", str(tmp_path / "dl")], capsys)
    thread.join()
    assert code == 0, out
    assert "completed on gpu-1" in out
    assert re.search(r"job \w+ [1-4]/4 steps on gpu-1", out), out  # the progress of real steps
    assert (tmp_path / "dl" / "out.png").read_bytes()[:4] == b"\x89PNG"


# -- `submit --graph FILE`, against a fake gateway (httpx.MockTransport) ------------------------

GRAPH_FILE = Path(__file__).resolve().parents[3] / "workflows" / "text_to_image" / "sd15-basic.json"
JOB_ID = "0123abcd-0000-4000-8000-000000000000"


class FakeGateway:
    """Answers the CLI's requests from `routes` ((method, path) -> response); records them."""

    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []
        job = {"id": JOB_ID, "status": "queued", "node": None, "outputs": []}
        self.routes: dict[tuple[str, str], httpx.Response] = {
            ("POST", "/api/v2/tasks"): httpx.Response(202, json=job),
        }

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        answer = self.routes.get((request.method, request.url.path))
        return answer if answer is not None else httpx.Response(404, json={"message": "no"})

    def bodies(self) -> list[Any]:
        return [json.loads(r.content) for r in self.requests if r.method == "POST"]


@pytest.fixture
def fake_gateway(monkeypatch: pytest.MonkeyPatch) -> FakeGateway:
    gateway = FakeGateway()

    def fake_client(args: Any, *, auth: bool = True, token: str | None = None,
                    timeout: float | None = 30.0) -> httpx.Client:  # fmt: skip
        headers = {"Authorization": f"Bearer {token or 'user-token'}"} if auth else {}
        return httpx.Client(
            base_url=args.gateway, headers=headers, transport=httpx.MockTransport(gateway.handle)
        )

    monkeypatch.setattr("comfyfleet.cli._gateway.client", fake_client)
    monkeypatch.setattr("comfyfleet.cli.submit.client", fake_client)
    monkeypatch.setenv("COMFYFLEET_GATEWAY", "http://gateway.test")
    return gateway


def test_submit_graph_posts_the_graph(
    fake_gateway: FakeGateway, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["submit", "--graph", str(GRAPH_FILE), "--priority", "high",
            "--webhook", "https://example.com/hook"]  # fmt: skip
    code, out = run(argv, capsys)
    assert code == 0, out
    assert out.strip() == JOB_ID
    [body] = fake_gateway.bodies()
    assert body == {
        "graph": json.loads(GRAPH_FILE.read_text()),
        "priority": "high",
        "webhook_url": "https://example.com/hook",
    }
    assert fake_gateway.requests[0].headers["authorization"] == "Bearer user-token"


def test_submit_graph_from_stdin_waits_with_the_progress_bar(
    fake_gateway: FakeGateway, capsys: pytest.CaptureFixture[str]
) -> None:
    events = "".join(
        f"event: {name}\ndata: {json.dumps(data)}\n\n"
        for name, data in [
            ("status", {"status": "running", "node": "gpu-1"}),
            ("progress", {"value": 2, "max": 4, "node": "gpu-1"}),
            ("progress", {"value": 4, "max": 4, "node": "gpu-1"}),
            ("end", {"status": "completed"}),
        ]
    )
    done = {"id": JOB_ID, "status": "completed", "node": "gpu-1",
            "outputs": [{"name": "out.png", "url": "/api/v2/outputs/out.png"}]}  # fmt: skip
    fake_gateway.routes[("GET", f"/api/v2/tasks/{JOB_ID}/events")] = httpx.Response(
        200, text=events, headers={"content-type": "text/event-stream"}
    )
    fake_gateway.routes[("GET", f"/api/v2/tasks/{JOB_ID}")] = httpx.Response(200, json=done)
    code, out = run(["submit", "--graph", "-", "--wait"], capsys, stdin=GRAPH_FILE.read_text())
    assert code == 0, out
    assert re.search(r"job 0123abcd 4/4 steps on gpu-1", out), out
    assert f"{JOB_ID} completed on gpu-1" in out and "out.png" in out
    assert fake_gateway.bodies()[0]["priority"] == "normal"


def test_submit_graph_refused_prints_each_node_error(
    fake_gateway: FakeGateway, capsys: pytest.CaptureFixture[str]
) -> None:
    def error(kind: str, message: str, details: str = "") -> dict[str, Any]:
        return {"type": kind, "message": message, "details": details, "extra_info": {}}

    refusal = {
        "error": error("prompt_outputs_failed_validation", "Prompt outputs failed validation"),
        "node_errors": {
            "3": {"errors": [error("missing_node_type", "Node TestOnlyHere does not exist on "
                                   "any healthy node of the fleet", "Node ID '#3'")],
                  "dependent_outputs": [], "class_type": "TestOnlyHere"},
            "4": {"errors": [error("value_not_in_list", "Value not in list",
                                   "ckpt_name: 'nope.ckpt' not in []")],
                  "dependent_outputs": [], "class_type": "CheckpointLoaderSimple"},
        },
    }  # fmt: skip
    fake_gateway.routes[("POST", "/api/v2/tasks")] = httpx.Response(400, json=refusal)
    code, out = run(["submit", "--graph", str(GRAPH_FILE)], capsys)
    assert code == 1
    lines = out.strip().splitlines()
    assert lines == [
        "comfyfleet: error: HTTP 400: Prompt outputs failed validation",
        "  node 3 (TestOnlyHere): missing_node_type: Node TestOnlyHere does not exist on any "
        "healthy node of the fleet: Node ID '#3'",
        "  node 4 (CheckpointLoaderSimple): value_not_in_list: Value not in list: "
        "ckpt_name: 'nope.ckpt' not in []",
    ]


def test_submit_graph_without_the_permission(
    fake_gateway: FakeGateway, capsys: pytest.CaptureFixture[str]
) -> None:
    message = ("alice may not submit raw graphs: an admin grants the raw_graphs permission "
               "(comfyfleet users grant alice raw_graphs)")  # fmt: skip
    fake_gateway.routes[("POST", "/api/v2/tasks")] = httpx.Response(
        403, json={"error": "forbidden", "message": message, "field": "graph", "errors": []}
    )
    code, out = run(["submit", "--graph", str(GRAPH_FILE)], capsys)
    assert code == 1
    assert out.strip() == f"comfyfleet: error: HTTP 403: {message}"
    fake_gateway.routes[("POST", "/api/v2/tasks")] = httpx.Response(
        403, json={"error": "forbidden", "message": "not allowed"}
    )
    code, out = run(["submit", "--graph", str(GRAPH_FILE)], capsys)
    assert code == 1 and "HTTP 403: not allowed (raw graphs need the raw_graphs permission" in out


def test_submit_a_workflow_still_sends_its_params(
    fake_gateway: FakeGateway, capsys: pytest.CaptureFixture[str]
) -> None:
    schema = {"properties": {"steps": {"type": "integer"}}}
    fake_gateway.routes[("GET", "/api/v2/workflows/sd15-basic")] = httpx.Response(
        200, json={"id": "sd15-basic", "parameters": schema}
    )
    code, out = run(["submit", "text_to_image", "-p", "steps=3", "--prompt", "a cat"], capsys)
    assert code == 0, out
    assert fake_gateway.bodies() == [{"workflow": "sd15-basic", "priority": "normal",
                                      "params": {"steps": 3, "prompt": "a cat"}}]  # fmt: skip


@pytest.mark.parametrize(
    ("argv", "content", "message"),
    [
        (["text_to_image", "--graph", "{file}"], None, "not both"),
        ([], None, "give a capability or workflow id"),
        (["--graph", "{file}", "--param", "steps=3"], None, "--param set workflow parameters"),
        (["--graph", "{file}", "--prompt", "x"], None, "--prompt set workflow parameters"),
        (["--graph", "{file}"], '{"nodes": [], "links": [], "version": 0.4}',
         r'UI \(workflow\) format.*"Save \(API\)"'),
        (["--graph", "{file}"], '{\n  "3": {\n    "class_type": "KSampler",\n  }\n}',
         r"g\.json: not valid JSON: line 4, column 3"),
        (["--graph", "{file}"], "[]", "expected an API-format graph"),
        (["--graph", "{missing}"], None, "--graph .*nope.json: No such file"),
    ],
)  # fmt: skip
def test_submit_argument_errors(
    argv: list[str], content: str | None, message: str, fake_gateway: FakeGateway,
    capsys: pytest.CaptureFixture[str], tmp_path: Path,
) -> None:  # fmt: skip
    path = tmp_path / "g.json"
    path.write_text(content if content is not None else GRAPH_FILE.read_text())
    argv = [a.format(file=path, missing=tmp_path / "nope.json") for a in argv]
    code, out = run(["submit", *argv], capsys)
    assert code == 1
    assert re.search(message, out), out
    assert fake_gateway.requests == []  # nothing reached the gateway
