"""ComfyUI's own API at {gateway}/comfy on the real CPU fleet: a client written like ComfyUI's
API script examples runs an exported graph; graphs go only to nodes that have their custom nodes;
raw-graph jobs fail over, cancel and are accounted like any job."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.sync.client import connect

from comfyfleet import jobs
from tests.fixtures.chaos import wait_for
from tests.fixtures.comfy import EXTRA_CUSTOM_NODES, TEST_CUSTOM_NODES
from tests.fixtures.gateway import Account
from tests.integration.test_dispatch import wait_all
from tests.integration.test_failover import wait_running

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


class ComfyScript:
    """ComfyUI's websockets_api_example.py, pointed at {gateway}/comfy with a bearer header."""

    def __init__(self, gateway: str, token: str) -> None:
        self.base = f"{gateway}/comfy"
        self.headers = {"Authorization": f"Bearer {token}"}
        self.client_id = str(uuid.uuid4())

    def _open(self, path: str, body: dict[str, Any] | None = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(f"{self.base}{path}", data=data, headers=self.headers)
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.read()

    def queue_prompt(self, prompt: dict[str, Any]) -> dict[str, Any]:
        return json.loads(self._open("/prompt", {"prompt": prompt, "client_id": self.client_id}))

    def get_image(self, filename: str, subfolder: str, folder_type: str) -> bytes:
        query = urllib.parse.urlencode(
            {"filename": filename, "subfolder": subfolder, "type": folder_type}
        )
        return self._open(f"/view?{query}")

    def get_history(self, prompt_id: str) -> dict[str, Any]:
        return json.loads(self._open(f"/history/{prompt_id}"))

    def get_images(self, prompt: dict[str, Any]) -> tuple[dict[str, list[bytes]], list[str]]:
        """Queue, follow the websocket until `executing` with node null for the prompt, then
        fetch every image its history names. Returns (images by node, message types seen)."""
        url = self.base.replace("http", "ws", 1) + f"/ws?clientId={self.client_id}"
        seen: list[str] = []
        with connect(url, additional_headers=self.headers, open_timeout=30) as ws:
            prompt_id = self.queue_prompt(prompt)["prompt_id"]
            while True:
                out = ws.recv(timeout=240)
                if isinstance(out, str):
                    message = json.loads(out)
                    seen.append(message["type"])
                    data = message["data"]
                    if message["type"] == "executing" and data.get("prompt_id") == prompt_id:
                        if data["node"] is None:
                            break  # execution is done
                else:
                    seen.append("binary")
        history = self.get_history(prompt_id)[prompt_id]
        images: dict[str, list[bytes]] = {}
        for node_id, node_output in history["outputs"].items():
            for image in node_output.get("images", []):
                data = self.get_image(image["filename"], image["subfolder"], image["type"])
                images.setdefault(node_id, []).append(data)
        return images, seen

    def refused(self, prompt: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        try:
            self.queue_prompt(prompt)
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())
        raise AssertionError("the prompt was accepted")


async def inventories_known(node_ids: list[str], class_type: str = "TestDelay") -> None:
    """Until the gateway sees each node healthy with its inventory read (it has `class_type`)."""
    from comfyfleet.fleet.state import healthy_inventories
    from comfyfleet.settings import get_settings

    def known() -> bool:
        found = healthy_inventories(get_settings())
        return all(n in found and class_type in found[n].class_types for n in node_ids)

    await wait_for(known, timeout=120, what=f"the inventories of {node_ids}")


def exported_sd15() -> dict[str, Any]:
    return json.loads((REPO / "workflows/text_to_image/sd15-basic.json").read_text())


def only_here(seconds: float = 0.2, steps: int = 2, seed: int = 1) -> dict[str, Any]:
    """A graph that needs TestOnlyHere (only nodes started with the extra custom nodes)."""
    return {
        "1": {"class_type": "TestDelay", "inputs": {
            "seconds": seconds, "steps": steps, "width": 16, "height": 16, "seed": seed}},
        "2": {"class_type": "TestOnlyHere", "inputs": {"image": ["1", 0]}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0],
                                                    "filename_prefix": "only-here"}},
    }  # fmt: skip


async def test_a_comfyui_api_script_runs_an_exported_graph_on_the_fleet(
    fleet_gateway: Any, fleet_accounts: dict[str, Account], fleet_db: Any, comfy_fleet: list
) -> None:
    await inventories_known([n.id for n in comfy_fleet])
    script = ComfyScript(fleet_gateway.url, fleet_accounts["root"].token)
    graph = exported_sd15()
    code, body = await asyncio.to_thread(script.refused, graph)
    assert code == 400 and "v1-5-pruned-emaonly.safetensors" in json.dumps(body["node_errors"])
    graph["4"]["inputs"]["ckpt_name"] = "tiny-sd15.ckpt"
    graph["5"]["inputs"].update(width=64, height=64)
    graph["3"]["inputs"]["steps"] = 2
    custom = {**graph, "99": {"class_type": "NoSuchNodeAnywhere", "inputs": {}}}
    code, body = await asyncio.to_thread(script.refused, custom)
    assert code == 400 and "NoSuchNodeAnywhere" in body["error"]["message"]
    assert body["node_errors"]["99"]["class_type"] == "NoSuchNodeAnywhere"

    images, seen = await asyncio.to_thread(script.get_images, graph)
    [png] = images["9"]
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    for kind in ("execution_start", "executing", "progress", "executed", "execution_success"):
        assert kind in seen, seen
    assert seen.index("execution_success") < len(seen) - 1  # executing null comes after it
    # The prompt is a job like any other: its node, GPU-seconds, provenance.
    async with httpx.AsyncClient(base_url=fleet_gateway.url, timeout=30) as client:
        listed = await client.get("/api/v2/tasks?workflow=graph&limit=1",
                                  headers=fleet_accounts["root"].headers)  # fmt: skip
        job = listed.json()["items"][0]
        assert job["status"] == "completed" and job["node"] and job["gpu_seconds"] > 0
        assert job["outputs"][0]["sha256"] and job["capability"] == "graph"


async def test_graphs_needing_custom_nodes_run_only_where_they_are_installed_and_fail_over(
    fleet_gateway: Any, fleet_accounts: dict[str, Account], fleet_db: Any, extra_nodes: Any,
    comfy_fleet: list,
) -> None:  # fmt: skip
    await inventories_known([n.id for n in comfy_fleet])
    root = fleet_accounts["root"]
    script = ComfyScript(fleet_gateway.url, root.token)
    code, body = await asyncio.to_thread(script.refused, only_here())
    assert code == 400 and "TestOnlyHere" in body["error"]["message"]
    custom = [TEST_CUSTOM_NODES, EXTRA_CUSTOM_NODES]
    async with extra_nodes(["cap-1", "cap-2"], custom_nodes=custom) as extra:
        await inventories_known(["cap-1", "cap-2"], "TestOnlyHere")
        async with httpx.AsyncClient(base_url=fleet_gateway.url, timeout=30) as client:
            ids = []
            for seed in range(6):
                sent = await client.post("/comfy/prompt", headers=root.headers,
                                         json={"prompt": only_here(seed=seed)})  # fmt: skip
                assert sent.status_code == 200, sent.text
                ids.append(uuid.UUID(sent.json()["prompt_id"]).hex)
            plain = await client.post("/api/v2/tasks", headers=root.headers, json={
                "graph": {"1": only_here()["1"]}})  # fmt: skip
            assert plain.status_code == 202, plain.text
        done = await wait_all(fleet_db, ids, timeout=240)
        assert {j.status for j in done} == {"completed"}, [j.error for j in done]
        assert {j.node for j in done} <= {"cap-1", "cap-2"}, [j.node for j in done]

        # Failover: the node running a raw graph dies; the job moves to the other node that
        # has TestOnlyHere, never to one without it.
        job = jobs.get(fleet_db, await _submit(fleet_gateway.url, root, only_here(6, 12, 99)))
        running = await wait_running(fleet_db, job.id, timeout=120)
        victim = extra.node(running.node)
        victim.kill()
        [moved] = await wait_all(fleet_db, [job.id], timeout=180)
        assert moved.status == "completed", moved.error
        first, second = moved.attempts
        assert (first.node, first.status) == (victim.id, "node_fault")
        assert second.status == "completed" and second.node in {"cap-1", "cap-2"} - {victim.id}


async def _submit(gateway: str, account: Account, graph: dict[str, Any]) -> str:
    async with httpx.AsyncClient(base_url=gateway, timeout=30) as client:
        sent = await client.post("/comfy/prompt", headers=account.headers, json={"prompt": graph})
        assert sent.status_code == 200, sent.text
        return uuid.UUID(sent.json()["prompt_id"]).hex


async def test_a_raw_graph_is_interrupted_cancelled_and_accounted_like_any_job(
    fleet_gateway: Any, fleet_accounts: dict[str, Account], fleet_db: Any, comfy_fleet: list,
) -> None:  # fmt: skip
    await inventories_known([n.id for n in comfy_fleet])
    root = fleet_accounts["root"]
    graph = {"1": {"class_type": "TestDelay", "inputs": {
        "seconds": 30, "steps": 60, "width": 8, "height": 8, "seed": 4242}}}  # fmt: skip
    job_id = await _submit(fleet_gateway.url, root, graph)
    running = await wait_running(fleet_db, job_id, timeout=120)
    async with httpx.AsyncClient(base_url=fleet_gateway.url, timeout=30) as client:
        stopped = await client.post("/comfy/interrupt", headers=root.headers,
                                    json={"prompt_id": str(uuid.UUID(job_id))})  # fmt: skip
        assert stopped.status_code == 200
        [ended] = await wait_all(fleet_db, [job_id], timeout=60)
        assert ended.status == "cancelled"
        node = next(n for n in comfy_fleet if n.id == running.node)

        async def off_the_node() -> bool:
            async with httpx.AsyncClient(base_url=node.url, timeout=5) as http:
                queue = (await http.get("/queue")).json()
            ids = [item[1] for part in queue.values() for item in part]
            return not any(i.startswith(job_id) for i in ids)

        await wait_for(off_the_node, timeout=30, what="the prompt gone from the node")
        history = (await client.get(f"/comfy/history/{uuid.UUID(job_id)}",
                                    headers=root.headers)).json()  # fmt: skip
        [entry] = history.values()
        assert entry["status"]["status_str"] == "error"
        assert entry["status"]["messages"][-1][0] == "execution_interrupted"

        quick = await _submit(fleet_gateway.url, root, {"1": {**graph["1"], "inputs": {
            **graph["1"]["inputs"], "seconds": 0.5, "steps": 2, "seed": 4343}}})  # fmt: skip
        [done] = await wait_all(fleet_db, [quick], timeout=120)
        assert done.status == "completed" and done.gpu_seconds > 0
        stats = await client.get("/api/v2/admin/stats", headers=root.headers)
        by_user = {r["key"]: r for r in stats.json()["gpu_seconds_by_user"]}
        assert by_user["root"]["gpu_seconds"] >= done.gpu_seconds, by_user
