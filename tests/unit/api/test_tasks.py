"""Gateway task routes: submit (generic and the old service's bodies), errors naming the field,
input images, ownership, cancel, sync waits, downloads."""

from __future__ import annotations

import asyncio
import base64
import io
from pathlib import Path

import httpx
import pytest
from PIL import Image

from comfyfleet.settings import Settings
from comfyfleet.store import Database, get_job
from tests.fixtures.gateway import Accounts, acomplete_job, complete_job


def png_bytes(color: str = "red", size: int = 8) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), color).save(buffer, format="PNG")
    return buffer.getvalue()


def stored_request(db: Database, job_id: str) -> dict:
    return db.run(lambda s: get_job(s, job_id=job_id).request, readonly=True)


async def test_generic_submit_queues_a_job_and_answers_202_with_its_json(
    api_client: httpx.AsyncClient, api_users: Accounts
) -> None:
    response = await api_client.post(
        "/api/v2/tasks",
        headers=api_users.alice.headers,
        json={
            "workflow": "sd15-basic",
            "params": {"prompt": "a red fox", "steps": 3},
            "priority": "high",
        },
    )
    assert response.status_code == 202, response.text
    job = response.json()
    assert response.headers["location"] == f"/api/v2/tasks/{job['id']}"
    assert job["task_id"] == job["id"] and job["status"] == "queued"
    assert job["priority"] == "high" and job["owner"] == "alice"
    assert job["params"]["prompt"] == "a red fox" and job["params"]["steps"] == 3
    assert job["params"]["width"] == 64  # the fleet default of the test config
    shown = await api_client.get(f"/api/v2/tasks/{job['id']}", headers=api_users.alice.headers)
    assert shown.status_code == 200  # the 202 body is the job as stored (built without a read)
    live = ("task_id", "webhook_secret", "position", "free_slots")  # GET adds the queue position
    assert {k: v for k, v in job.items() if k not in live} == {
        k: v for k, v in shown.json().items() if k not in live
    }


async def test_legacy_text_to_image_bodies_keep_working(
    api_client: httpx.AsyncClient, api_users: Accounts
) -> None:
    sdxl = await api_client.post(
        "/api/v2/tasks/text-to-image-sdxl",
        headers=api_users.alice.headers,
        json={
            "prompt": "a castle",
            "negative_prompt": "blurry",
            "width": 128,
            "height": 128,
            "workflow_name": "sdxl_basic",
        },
    )
    assert sdxl.status_code == 202, sdxl.text
    assert sdxl.json()["workflow"] == "sdxl-basic"
    assert sdxl.json()["params"]["negative_prompt"] == "blurry"
    t2i = await api_client.post(
        "/api/v2/tasks/text-to-image",
        headers=api_users.alice.headers,
        json={"prompt": "a fox", "steps": 2, "cfg_scale": 5.0, "seed": 42},
    )
    assert t2i.status_code == 202, t2i.text
    params = t2i.json()["params"]
    assert t2i.json()["workflow"] == "sd15-basic"
    assert (params["cfg"], params["seed"], params["steps"]) == (5.0, 42, 2)


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/api/v2/tasks/text-to-image", {"prompt": "x", "width": 65}, "width"),
        ("/api/v2/tasks/text-to-image", {"prompt": "x", "steps": 0}, "steps"),
        ("/api/v2/tasks/text-to-image", {"prompt": "x", "sampler": "nope"}, "sampler"),
        ("/api/v2/tasks/text-to-image", {"prompt": "x", "colour": "blue"}, "colour"),
        ("/api/v2/tasks/text-to-image", {"prompt": "x", "width": "wide"}, "width"),
        ("/api/v2/tasks/text-to-image", {"width": 64}, "prompt"),
        ("/api/v2/tasks/text-to-image", {"prompt": "x", "workflow_name": "nope"}, "workflow_name"),
        ("/api/v2/tasks/text-to-image", {"prompt": "x", "workflow": "delay"}, "workflow"),
        ("/api/v2/tasks/text-to-image", {"prompt": "x", "priority": "urgent"}, "priority"),
        ("/api/v2/tasks/text-to-image", {"prompt": "x", "webhook_url": "ftp://x"}, "webhook_url"),
        ("/api/v2/tasks", {"workflow": "nope", "params": {}}, "workflow"),
        ("/api/v2/tasks", {"workflow": "delay", "params": {"seconds": -1}}, "seconds"),
        ("/api/v2/tasks", {"workflow": "delay", "params": [1, 2]}, "params"),
        ("/api/v2/tasks", {"workflow": "delay", "extra": 1}, "extra"),
        ("/api/v2/tasks/image-to-video", {"frames": 4}, "image"),
        ("/api/v2/tasks/image-to-video", {"image_path": "/etc/passwd"}, "image"),
        ("/api/v2/tasks/image-to-video", {"image": "https://example.com/a.png"}, "image"),
        ("/api/v2/tasks/image-to-video", {"image": "comfyfleet/" + "0" * 64 + ".png"}, "image"),
        ("/api/v2/tasks/image-to-video", {"image": base64.b64encode(b"x" * 100).decode()}, "image"),
    ],
)
async def test_bad_input_is_a_422_that_names_the_field(
    api_client: httpx.AsyncClient, api_users: Accounts, path: str, body: dict, field: str
) -> None:
    response = await api_client.post(path, json=body, headers=api_users.alice.headers)
    assert response.status_code == 422, response.text
    error = response.json()
    assert error["field"] == field, error
    assert error["message"] and error["error"]


async def test_malformed_and_oversized_bodies_are_4xx_not_500(
    api_client: httpx.AsyncClient, api_users: Accounts
) -> None:
    headers = {**api_users.alice.headers, "content-type": "application/json"}
    broken = await api_client.post("/api/v2/tasks", content=b"{not json", headers=headers)
    assert broken.status_code == 422 and broken.json()["error"] == "invalid_request"
    huge = await api_client.post(
        "/api/v2/auth/me", content=b"x" * (2 * 1024 * 1024), headers=headers
    )
    assert huge.status_code == 413 and huge.json()["field"] == "body"
    big_task = await api_client.post(
        "/api/v2/tasks", content=b"{" + b" " * (33 * 1024 * 1024), headers=headers
    )
    assert big_task.status_code == 413


async def test_image_to_video_stores_a_base64_image_and_computes_frames_from_duration(
    api_client: httpx.AsyncClient, api_users: Accounts, api_db: Database, api_settings: Settings
) -> None:
    image = png_bytes()
    response = await api_client.post(
        "/api/v2/tasks/image-to-video",
        headers=api_users.alice.headers,
        json={
            "image_path": base64.b64encode(image).decode(),
            "duration": 2,
            "fps": 4,
            "workflow_name": "image_to_video_basic",
        },
    )
    assert response.status_code == 202, response.text
    job = response.json()
    assert job["workflow"] == "svd-basic" and job["params"]["frames"] == 8
    ref = job["params"]["image"]
    assert ref.startswith("comfyfleet/") and ref.endswith(".png")
    assert (Path(api_settings.store.inputs_dir) / ref.split("/")[1]).read_bytes() == image
    too_long = await api_client.post(
        "/api/v2/tasks/image-to-video",
        headers=api_users.alice.headers,
        json={"image": ref, "duration": 30, "fps": 30},
    )
    assert too_long.status_code == 422 and too_long.json()["field"] == "duration"
    assert "900 frames" in too_long.json()["message"]


async def test_uploaded_inputs_are_referenced_by_ref_or_gateway_url(
    api_client: httpx.AsyncClient, api_users: Accounts
) -> None:
    image = png_bytes("blue")
    upload = await api_client.post(
        "/api/v2/inputs",
        headers=api_users.alice.headers,
        files={"file": ("in.png", image, "image/png")},
    )
    assert upload.status_code == 201, upload.text
    ref, url = upload.json()["ref"], upload.json()["url"]
    for value in (ref, url, "data:image/png;base64," + base64.b64encode(image).decode()):
        response = await api_client.post(
            "/api/v2/tasks",
            headers=api_users.alice.headers,
            json={"workflow": "sd15-img2img", "params": {"image": value}},
        )
        assert response.status_code == 202, response.text
        assert response.json()["params"]["image"] == ref
    fetched = await api_client.get(url, headers=api_users.bob.headers)
    assert fetched.status_code == 200 and fetched.content == image
    not_image = await api_client.post(
        "/api/v2/inputs",
        headers=api_users.alice.headers,
        files={"file": ("x.png", b"GIF89a-not-really", "image/png")},
    )
    assert not_image.status_code == 422 and not_image.json()["field"] == "file"
    multipart = await api_client.post(
        "/api/v2/tasks/image-to-video/upload",
        headers=api_users.alice.headers,
        files={"image": ("a.png", image, "image/png")},
        data={"frames": "4"},
    )
    assert multipart.status_code == 202, multipart.text
    assert multipart.json()["params"]["image"] == ref


async def test_users_see_only_their_own_jobs_and_admins_see_all(
    api_client: httpx.AsyncClient, api_users: Accounts
) -> None:
    body = {"workflow": "delay", "params": {"seconds": 0}}
    job = (
        await api_client.post("/api/v2/tasks", json=body, headers=api_users.alice.headers)
    ).json()
    await api_client.post("/api/v2/tasks", json=body, headers=api_users.bob.headers)
    mine = (await api_client.get("/api/v2/tasks", headers=api_users.alice.headers)).json()
    assert mine["total"] == 1 and mine["items"][0]["id"] == job["id"]
    other = await api_client.get(f"/api/v2/tasks/{job['id']}", headers=api_users.bob.headers)
    assert other.status_code == 404
    assert (
        await api_client.delete(f"/api/v2/tasks/{job['id']}", headers=api_users.bob.headers)
    ).status_code == 404
    everyone = await api_client.get("/api/v2/tasks?all=true", headers=api_users.admin.headers)
    assert everyone.json()["total"] == 2
    ignored = await api_client.get("/api/v2/tasks?all=true", headers=api_users.bob.headers)
    assert ignored.json()["total"] == 1
    admin_view = await api_client.get(f"/api/v2/tasks/{job['id']}", headers=api_users.admin.headers)
    assert admin_view.status_code == 200


async def test_cancel_a_queued_job_and_refuse_to_cancel_a_finished_one(
    api_client: httpx.AsyncClient, api_users: Accounts, api_db: Database, api_settings: Settings
) -> None:
    body = {"workflow": "delay", "params": {"seconds": 0}}
    first = (
        await api_client.post("/api/v2/tasks", json=body, headers=api_users.alice.headers)
    ).json()
    cancelled = await api_client.delete(
        f"/api/v2/tasks/{first['id']}", headers=api_users.alice.headers
    )
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    second = (
        await api_client.post("/api/v2/tasks", json=body, headers=api_users.alice.headers)
    ).json()
    complete_job(api_db, second["id"], {"out.png": png_bytes()}, api_settings.store.outputs_dir)
    refused = await api_client.delete(
        f"/api/v2/tasks/{second['id']}", headers=api_users.alice.headers
    )
    assert refused.status_code == 409


async def test_wait_true_returns_200_with_outputs_when_the_job_ends_in_time(
    api_client: httpx.AsyncClient, api_users: Accounts, api_db: Database, api_settings: Settings
) -> None:
    slow = await api_client.post(
        "/api/v2/tasks?wait=true&timeout=0.5",
        headers=api_users.alice.headers,
        json={"workflow": "delay", "params": {"seconds": 0}},
    )
    assert slow.status_code == 202 and slow.json()["status"] == "queued"

    async def finish_soon() -> None:
        for _ in range(100):
            jobs = (
                await api_client.get("/api/v2/tasks?status=queued", headers=api_users.bob.headers)
            ).json()
            if jobs["items"]:
                await asyncio.sleep(0.3)
                await acomplete_job(
                    api_db,
                    jobs["items"][0]["id"],
                    {"out.png": png_bytes()},
                    api_settings.store.outputs_dir,
                )
                return
            await asyncio.sleep(0.05)

    helper = asyncio.create_task(finish_soon())
    done = await api_client.post(
        "/api/v2/tasks?wait=true&timeout=20",
        headers=api_users.bob.headers,
        json={"workflow": "delay", "params": {"seconds": 0}},
    )
    await helper
    assert done.status_code == 200, done.text
    body = done.json()
    assert body["status"] == "completed" and body["progress"] == {
        "value": 4,
        "max": 4,
        "node_id": "gpu-1",
    }
    assert [o["name"] for o in body["outputs"]] == ["out.png"]
    assert body["outputs"][0]["url"].endswith(f"/api/v2/tasks/{body['id']}/outputs/out.png")


async def test_outputs_download_for_the_owner_and_admins_only(
    api_client: httpx.AsyncClient, api_users: Accounts, api_db: Database, api_settings: Settings
) -> None:
    job = (
        await api_client.post(
            "/api/v2/tasks",
            headers=api_users.alice.headers,
            json={"workflow": "delay", "params": {}},
        )
    ).json()
    image = png_bytes("green")
    complete_job(
        api_db,
        job["id"],
        {"a.png": image, "b.png": png_bytes("red")},
        api_settings.store.outputs_dir,
    )
    url = f"/api/v2/tasks/{job['id']}/outputs/a.png"
    owner = await api_client.get(url, headers=api_users.alice.headers)
    assert owner.status_code == 200 and owner.content == image
    assert owner.headers["content-type"] == "image/png"
    assert (await api_client.get(url, headers=api_users.admin.headers)).status_code == 200
    assert (await api_client.get(url, headers=api_users.bob.headers)).status_code == 404
    assert (await api_client.get(url)).status_code == 401
    query = await api_client.get(f"{url}?access_token={api_users.alice.token}")
    assert query.status_code == 200
    for name in ("..%2F..%2Fgateway.db", "%2E%2E", "c.png"):
        bad = await api_client.get(
            f"/api/v2/tasks/{job['id']}/outputs/{name}", headers=api_users.alice.headers
        )
        assert bad.status_code == 404
    archive = await api_client.get(
        f"/api/v2/tasks/{job['id']}/download", headers=api_users.alice.headers
    )
    assert archive.status_code == 200 and archive.headers["content-type"] == "application/zip"


async def test_an_output_row_pointing_outside_the_store_is_never_served(
    api_client: httpx.AsyncClient, api_users: Accounts, api_db: Database, api_settings: Settings
) -> None:
    from comfyfleet.store.models import Output

    job = (
        await api_client.post(
            "/api/v2/tasks",
            headers=api_users.alice.headers,
            json={"workflow": "delay", "params": {}},
        )
    ).json()
    complete_job(api_db, job["id"], {"a.png": png_bytes()}, api_settings.store.outputs_dir)
    with api_db.session() as s:
        s.query(Output).filter_by(job_id=job["id"]).update({"path": "../gateway.db"})
    response = await api_client.get(
        f"/api/v2/tasks/{job['id']}/outputs/a.png", headers=api_users.alice.headers
    )
    assert response.status_code == 404


async def test_batch_queues_one_job_per_prompt_or_none_on_a_bad_prompt(
    api_client: httpx.AsyncClient, api_users: Accounts
) -> None:
    response = await api_client.post(
        "/api/v2/tasks/batch",
        headers=api_users.alice.headers,
        json={"prompts": ["a fox", "a cat"], "params": {"steps": 2}},
    )
    assert response.status_code == 202, response.text
    batch = response.json()
    assert len(batch["jobs"]) == 2 and {j["batch_id"] for j in batch["jobs"]} == {batch["batch_id"]}
    bad = await api_client.post(
        "/api/v2/tasks/batch",
        headers=api_users.alice.headers,
        json={"prompts": ["ok", "ok"], "params": {"steps": 9999}},
    )
    assert bad.status_code == 422 and bad.json()["field"] == "steps"
    listed = (await api_client.get("/api/v2/tasks", headers=api_users.alice.headers)).json()
    assert listed["total"] == 2


async def test_workflows_list_their_parameter_schemas(
    api_client: httpx.AsyncClient, api_users: Accounts
) -> None:
    response = await api_client.get("/api/v2/workflows", headers=api_users.alice.headers)
    assert response.status_code == 200
    by_id = {w["id"]: w for w in response.json()}
    assert {"sd15-basic", "sdxl-basic", "svd-basic", "delay"} <= set(by_id)
    width = by_id["sd15-basic"]["parameters"]["properties"]["width"]
    assert width["minimum"] == 64 and width["multipleOf"] == 8 and width["default"] == 64
    missing = await api_client.get("/api/v2/workflows/nope", headers=api_users.alice.headers)
    assert missing.status_code == 404


async def test_quota_refusal_is_a_429_saying_which_limit(
    api_client: httpx.AsyncClient, api_users: Accounts
) -> None:
    quota = await api_client.put(
        "/api/v2/admin/users/alice/quotas", headers=api_users.admin.headers, json={"max_queued": 1}
    )
    assert quota.status_code == 200 and quota.json()["max_queued"] == 1
    body = {"workflow": "delay", "params": {}}
    assert (
        await api_client.post("/api/v2/tasks", json=body, headers=api_users.alice.headers)
    ).status_code == 202
    refused = await api_client.post("/api/v2/tasks", json=body, headers=api_users.alice.headers)
    assert refused.status_code == 429
    assert refused.json()["detail"]["kind"] == "max_queued"
