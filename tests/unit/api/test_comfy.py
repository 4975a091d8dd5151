"""The ComfyUI-compatible API under /comfy: ComfyUI's bodies and answers, permission, prompt ids
as job ids, refusals in ComfyUI's shape, history/view/queue/interrupt of one's own prompts, and
the websocket relay of a prompt's messages (store-level seams; the real fleet is in
tests/integration/test_comfy_api.py)."""

from __future__ import annotations

import io
import struct
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image
from starlette.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from comfyfleet.catalog.raw import Inventory
from comfyfleet.comfyui.messages import Executed, Executing, ExecutionStart, Progress
from comfyfleet.fleet import state
from comfyfleet.jobs.messages import MessageLog
from comfyfleet.jobs.previews import preview_path
from comfyfleet.settings import Settings
from comfyfleet.store import Database, get_job
from comfyfleet.store import users as rows
from tests.fixtures.gateway import Accounts, complete_job

NODE = Inventory(
    class_types=frozenset({"TestDelay", "SaveImage", "LoadImage"}),
    output_class_types=frozenset({"TestDelay", "SaveImage"}),
    models={"checkpoints": frozenset({"tiny-sd15.ckpt"})},
)
GRAPH = {"1": {"class_type": "TestDelay", "inputs": {"seconds": 0.1, "width": 8, "height": 8}}}


def png(color: str = "red") -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), color).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(autouse=True)
def one_node(monkeypatch: pytest.MonkeyPatch) -> None:
    """The fleet: one healthy node with NODE's class types and models."""
    monkeypatch.setattr(state, "healthy_inventories", lambda settings: {"gpu-1": NODE})


def grant(db: Database, username: str) -> None:
    with db.session() as s:
        rows.set_raw_graphs(s, target=rows.get_user(s, username=username), allowed=True)


async def test_a_plain_user_needs_the_raw_graphs_permission(
    api_client: httpx.AsyncClient, api_users: Accounts, api_db: Database
) -> None:
    refused = await api_client.post("/comfy/prompt", headers=api_users.alice.headers,
                                    json={"prompt": GRAPH})  # fmt: skip
    assert refused.status_code == 403
    assert "raw_graphs" in refused.json()["message"]
    set_by_admin = await api_client.put(
        "/api/v2/admin/users/alice/permissions", headers=api_users.admin.headers,
        json={"raw_graphs": True},
    )  # fmt: skip
    assert set_by_admin.status_code == 200 and set_by_admin.json()["permissions"] == ["raw_graphs"]
    accepted = await api_client.post("/comfy/prompt", headers=api_users.alice.headers,
                                     json={"prompt": GRAPH, "client_id": "c1"})  # fmt: skip
    assert accepted.status_code == 200, accepted.text
    answer = accepted.json()
    assert set(answer) == {"prompt_id", "number", "node_errors"} and answer["node_errors"] == {}
    job = api_db.run(lambda s: get_job(s, job_id=uuid.UUID(answer["prompt_id"]).hex))
    assert job.workflow == "graph" and job.capability == "graph" and job.status == "queued"
    assert job.params["graph"] == GRAPH and job.request == {"client_id": "c1"}
    assert (await api_client.post("/comfy/prompt", json={"prompt": GRAPH})).status_code == 401


async def test_a_client_prompt_id_is_the_job_id_and_resubmitting_it_is_idempotent(
    api_client: httpx.AsyncClient, api_users: Accounts
) -> None:
    prompt_id = str(uuid.uuid4())
    body = {"prompt": GRAPH, "prompt_id": prompt_id}
    first = await api_client.post("/comfy/prompt", headers=api_users.admin.headers, json=body)
    again = await api_client.post("/comfy/prompt", headers=api_users.admin.headers, json=body)
    assert first.json()["prompt_id"] == again.json()["prompt_id"] == prompt_id
    assert first.json()["number"] == again.json()["number"]
    tasks = await api_client.get("/api/v2/tasks?workflow=graph", headers=api_users.admin.headers)
    assert [j["id"] for j in tasks.json()["items"]] == [uuid.UUID(prompt_id).hex]
    shown = await api_client.get(f"/api/v2/tasks/{uuid.UUID(prompt_id).hex}",
                                 headers=api_users.admin.headers)  # fmt: skip
    assert shown.json()["owner"] == "root"
    bad = await api_client.post("/comfy/prompt", headers=api_users.admin.headers,
                                json={"prompt": GRAPH, "prompt_id": "not-a-uuid"})  # fmt: skip
    assert bad.status_code == 400 and "UUID" in bad.json()["error"]["details"]


async def test_refusals_come_in_comfyuis_shape_and_queue_nothing(
    api_client: httpx.AsyncClient, api_users: Accounts, api_settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    headers = api_users.admin.headers
    missing = {**GRAPH, "2": {"class_type": "TestOnlyHere", "inputs": {"image": ["1", 0]}}}
    response = await api_client.post("/comfy/prompt", headers=headers, json={"prompt": missing})
    assert response.status_code == 400
    body = response.json()
    assert (
        body["error"]["type"] == "missing_node_type" and "TestOnlyHere" in body["error"]["message"]
    )
    assert body["node_errors"]["2"]["class_type"] == "TestOnlyHere"
    no_prompt = await api_client.post("/comfy/prompt", headers=headers, json={"client_id": "x"})
    assert no_prompt.status_code == 400 and no_prompt.json()["error"]["type"] == "no_prompt"
    too_big = {"1": {"class_type": "TestDelay", "inputs": {"seconds": 0.1, "width": 99999}}}
    big = await api_client.post("/comfy/prompt", headers=headers, json={"prompt": too_big})
    assert big.status_code == 400
    assert big.json()["node_errors"]["1"]["errors"][0]["type"] == "value_bigger_than_max"
    monkeypatch.setattr(api_settings.graphs, "denied_class_types", ["TestDelay"])
    denied = await api_client.post("/comfy/prompt", headers=headers, json={"prompt": GRAPH})
    assert denied.status_code == 400 and denied.json()["error"]["type"] == "denied_class_type"
    rest = await api_client.post("/api/v2/tasks", headers=headers, json={"graph": missing})
    assert rest.status_code == 400 and rest.json()["error"]["type"] == "denied_class_type"
    tasks = await api_client.get("/api/v2/tasks?all=true", headers=headers)
    assert tasks.json()["items"] == []


async def test_rest_takes_a_graph_too(api_client: httpx.AsyncClient, api_users: Accounts) -> None:
    response = await api_client.post("/api/v2/tasks", headers=api_users.admin.headers,
                                     json={"graph": GRAPH, "priority": "high"})  # fmt: skip
    assert response.status_code == 202, response.text
    assert response.json()["workflow"] == "graph" and response.json()["priority"] == "high"
    both = await api_client.post("/api/v2/tasks", headers=api_users.admin.headers,
                                 json={"graph": GRAPH, "workflow": "sd15-basic"})  # fmt: skip
    assert both.status_code == 422 and "either workflow" in both.text
    plain = await api_client.post("/api/v2/tasks", headers=api_users.alice.headers,
                                  json={"graph": GRAPH})  # fmt: skip
    assert plain.status_code == 403


def _submit(client: TestClient, headers: dict[str, str], **body: Any) -> str:
    response = client.post("/comfy/prompt", headers=headers, json={"prompt": GRAPH, **body})
    assert response.status_code == 200, response.text
    return response.json()["prompt_id"]


def _attempt_of(db: Database, job_id: str) -> str:
    return db.run(lambda s: get_job(s, job_id=job_id, with_details=True).attempts[0].id)


def test_history_view_and_queue_show_only_ones_own_prompts(
    api_app: Any, api_users: Accounts, api_db: Database, api_settings: Settings
) -> None:
    grant(api_db, "alice")
    with TestClient(api_app) as client:
        mine = _submit(client, api_users.admin.headers)
        theirs = _submit(client, api_users.alice.headers)
        queue = client.get("/comfy/queue", headers=api_users.admin.headers).json()
        assert [item[1] for item in queue["queue_pending"]] == [mine]
        assert queue["queue_pending"][0][4] == ["1"]  # the output nodes (TestDelay)
        assert client.get(f"/comfy/history/{mine}", headers=api_users.admin.headers).json() == {}
        job_id = uuid.UUID(mine).hex
        complete_job(api_db, job_id, {"ComfyUI_00001_.png": png()},
                     Path(api_settings.store.outputs_dir))  # fmt: skip
        history = client.get(f"/comfy/api/history/{mine}", headers=api_users.admin.headers).json()
        entry = history[mine]
        assert entry["status"]["status_str"] == "success" and entry["status"]["completed"]
        image = entry["outputs"]["?"]["images"][0]  # no messages kept: from the stored files
        assert image == {"filename": "ComfyUI_00001_.png", "subfolder": mine, "type": "output"}
        view = client.get("/comfy/view", headers=api_users.admin.headers, params=image)
        assert view.status_code == 200 and view.content == png()
        assert client.get("/comfy/view", headers=api_users.alice.headers,
                          params=image).status_code == 404  # fmt: skip
        assert client.get(f"/comfy/history/{mine}", headers=api_users.alice.headers).json() == {}
        assert list(client.get("/comfy/history", headers=api_users.admin.headers).json()) == [mine]
        deleted = client.post("/comfy/queue", headers=api_users.admin.headers,
                              json={"delete": [theirs]})  # fmt: skip
        assert deleted.status_code == 200
        assert api_db.run(lambda s: get_job(s, job_id=uuid.UUID(theirs).hex).status) == "queued"
        client.post("/comfy/queue", headers=api_users.alice.headers, json={"clear": True})
        assert api_db.run(lambda s: get_job(s, job_id=uuid.UUID(theirs).hex).status) == "cancelled"


def test_an_upload_is_stored_by_content_and_usable_by_its_bare_name(
    api_app: Any, api_users: Accounts, api_db: Database
) -> None:
    with TestClient(api_app) as client:
        up = client.post("/comfy/upload/image", headers=api_users.admin.headers,
                         files={"image": ("cat.png", png("blue"), "image/png")},
                         data={"overwrite": "true"})  # fmt: skip
        assert up.status_code == 200, up.text
        name = up.json()["name"]
        assert up.json()["type"] == "input" and name.endswith(".png")
        shown = client.get("/comfy/view", headers=api_users.admin.headers,
                           params={"filename": name, "type": "input"})  # fmt: skip
        assert shown.content == png("blue")
        graph = {**GRAPH, "2": {"class_type": "LoadImage", "inputs": {"image": name}}}
        pid = client.post("/comfy/prompt", headers=api_users.admin.headers,
                          json={"prompt": graph}).json()["prompt_id"]  # fmt: skip
        job = api_db.run(lambda s: get_job(s, job_id=uuid.UUID(pid).hex))
        assert job.params["graph"]["2"]["inputs"]["image"] == f"comfyfleet/{name}"
        junk = client.post("/comfy/upload/image", headers=api_users.admin.headers,
                           files={"image": ("x.png", b"not an image", "image/png")})  # fmt: skip
        assert junk.status_code == 422


def test_the_websocket_relays_a_prompts_messages_then_its_end(
    api_app: Any, api_users: Accounts, api_db: Database, api_settings: Settings
) -> None:
    headers = api_users.admin.headers
    with TestClient(api_app) as client:
        with client.websocket_connect("/comfy/ws?clientId=me", headers=headers) as ws:
            first = ws.receive_json()
            assert first["type"] == "status" and first["data"]["sid"] == "me"
            pid = _submit(client, headers, client_id="me")
            _submit(client, headers, client_id="someone-else")
            job_id = uuid.UUID(pid).hex
            assert ws.receive_json()["data"]["status"]["exec_info"]["queue_remaining"] == 1
            complete_job(api_db, job_id, {"ComfyUI_00001_.png": png()},
                         Path(api_settings.store.outputs_dir))  # fmt: skip
            attempt = _attempt_of(api_db, job_id)
            log = MessageLog(job_id)
            for message in (
                ExecutionStart(prompt_id=attempt, timestamp=1),
                Executing(node="1", prompt_id=attempt),
                Progress(node="1", value=1, max=2, prompt_id=attempt),
                Executed(node="1", prompt_id=attempt, output={"images": [
                    {"filename": "ComfyUI_00001_.png", "subfolder": "", "type": "output"}]}),
            ):  # fmt: skip
                log.write(message)
            log.close()
            preview = preview_path(job_id)
            seen = []
            while not seen or seen[-1] != ("executing", None):
                message = ws.receive_json()
                seen.append((message["type"], message["data"].get("node")))
                if message["type"] != "status":
                    assert message["data"]["prompt_id"] == pid
                if message["type"] == "executed":
                    image = message["data"]["output"]["images"][0]
                    assert image["subfolder"] == pid and image["filename"] == "ComfyUI_00001_.png"
            assert [kind for kind, _ in seen] == [
                "execution_start",
                "executing",
                "progress",
                "executed",
                "execution_success",
                "status",
                "executing",
            ]
            assert not preview.exists()
        with pytest.raises(WebSocketDisconnect) as refused:
            with client.websocket_connect("/comfy/ws", headers={"Authorization": "Bearer nope"}):
                pass
        assert refused.value.code == 1008


def test_the_websocket_sends_previews_as_comfyui_binary_frames(
    api_app: Any, api_users: Accounts, api_db: Database
) -> None:
    headers = api_users.admin.headers
    with TestClient(api_app) as client:
        with client.websocket_connect("/comfy/ws?clientId=p", headers=headers) as ws:
            ws.receive_json()
            job_id = uuid.UUID(_submit(client, headers, client_id="p")).hex
            ws.receive_json()  # queue_remaining 1
            path = preview_path(job_id)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"\xff\xd8\xffjpeg")
            frame = ws.receive_bytes()
            assert struct.unpack(">II", frame[:8]) == (1, 1) and frame[8:] == b"\xff\xd8\xffjpeg"
