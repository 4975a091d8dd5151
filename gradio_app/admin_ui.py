"""The Admin tab: nodes (state, circuit, load, queue, models, last error; add, disable, drain),
backlog, users and API clients, fleet stats with charts. Every handler checks the admin role
on the server (hiding the tab is only cosmetics)."""

from __future__ import annotations

from typing import Any

import gradio as gr
import pandas as pd

from comfyfleet import auth as identity
from comfyfleet.api.admin import fleet_stats
from comfyfleet.settings import NodeConfig
from comfyfleet.store import (
    Conflict,
    InvalidInput,
    NotFound,
    backlog_counts,
    list_clients,
    list_users,
    priority_name,
)
from gradio_app.join_ui import build_join_tokens
from gradio_app.runner import Runner

NODE_COLUMNS = [
    "node",
    "url",
    "state",
    "circuit",
    "enabled",
    "slots",
    "busy",
    "queue",
    "load",
    "models",
    "last error",
]


def _models(models: dict[str, list[str]] | None) -> str:
    if not models:
        return ""
    return "; ".join(f"{folder}: {', '.join(names)}" for folder, names in sorted(models.items()))


def _action(act: Any, action: str) -> Any:
    async def handler(node_id: str, request: gr.Request) -> list[list[Any]]:
        return await act(action, node_id, request)

    return handler


def build_admin(runner: Runner) -> tuple[Any, Any]:
    """Build the admin sub-tabs; returns (node loader, node table) to refresh on tab open."""
    fleet = runner.gateway.fleet

    async def nodes(request: gr.Request) -> list[list[Any]]:
        await runner.admin(request)
        return [
            [
                n.id,
                n.url,
                n.state,
                n.circuit,
                n.enabled,
                n.capacity,
                n.in_flight,
                n.queue_depth if n.queue_depth is not None else "",
                f"{n.load:.2f}",
                _models(n.models),
                n.last_error or "",
            ]
            for n in await fleet.list_nodes()
        ]

    async def act(action: str, node_id: str, request: gr.Request) -> list[list[Any]]:
        await runner.admin(request)
        if not node_id:
            raise gr.Error("Give a node id.")
        try:
            if action == "disable":
                await fleet.set_enabled(node_id, False)
            elif action == "enable":
                await fleet.set_enabled(node_id, True)
            elif action == "drain":
                await fleet.drain(node_id)
            elif action == "remove":
                await fleet.remove_node(node_id)
        except (NotFound, Conflict) as exc:
            raise gr.Error(str(exc)) from None
        gr.Info(f"{node_id}: {action} done")
        return await nodes(request)

    async def add(node_id: str, url: str, capacity: float, request: gr.Request) -> list[list[Any]]:
        await runner.admin(request)
        try:
            await fleet.add_node(NodeConfig(id=node_id, url=url, capacity=int(capacity)))
        except (Conflict, ValueError) as exc:
            raise gr.Error(str(exc).splitlines()[0]) from None
        return await nodes(request)

    async def backlog(request: gr.Request) -> list[list[Any]]:
        await runner.admin(request)
        rows = await runner.run(backlog_counts, readonly=True)
        return [[cap, priority_name(level), n] for cap, level, n in rows]

    async def users(request: gr.Request) -> tuple[list[list[Any]], list[list[Any]]]:
        await runner.admin(request)

        def read(session: Any) -> tuple[list[list[Any]], list[list[Any]]]:
            people = list_users(session)
            names = {u.id: u.username for u in people}
            user_rows = [
                [u.username, u.role, u.disabled, u.max_queued, u.max_running, u.daily_gpu_seconds]
                for u in people
            ]
            client_rows = [
                [
                    c.id,
                    c.client_name,
                    names.get(c.owner_id, "?"),
                    c.created_at.strftime("%Y-%m-%d %H:%M"),
                ]
                for c in list_clients(session)
            ]
            return user_rows, client_rows

        return await runner.run(read, readonly=True)

    async def create_user(
        username: str, password: str, admin: bool, request: gr.Request
    ) -> tuple[list[list[Any]], list[list[Any]]]:
        actor = await runner.admin(request)
        try:
            await runner.run(
                lambda s: identity.create_user(
                    s,
                    username=username,
                    password=password,
                    admin=admin,
                    actor=s.merge(actor.user, load=False),
                )
            )
        except (InvalidInput, Conflict) as exc:
            raise gr.Error(str(exc)) from None
        gr.Info(f"user {username} created")
        return await users(request)

    async def revoke(
        client_id: str, request: gr.Request
    ) -> tuple[list[list[Any]], list[list[Any]]]:
        actor = await runner.admin(request)
        if not await runner.run(
            lambda s: identity.revoke_client(
                s, client_id=client_id.strip(), actor=s.merge(actor.user, load=False)
            )
        ):
            raise gr.Error(f"No active client {client_id!r}.")
        return await users(request)

    async def stats(hours: float, request: gr.Request) -> tuple[Any, Any, Any, Any]:
        await runner.admin(request)
        data = await runner.run(lambda s: fleet_stats(s, int(hours)), readonly=True)
        per_hour = pd.DataFrame(
            [
                {"hour": r["hour"][11:16], "jobs": r[k], "kind": k}
                for r in data.jobs_per_hour
                for k in ("completed", "failed", "cancelled")
            ]
            or [{"hour": "", "jobs": 0, "kind": "completed"}]
        )
        by_node = pd.DataFrame(
            [{"node": r.key, "gpu_seconds": r.gpu_seconds} for r in data.gpu_seconds_by_node]
            or [{"node": "", "gpu_seconds": 0}]
        )
        by_user = pd.DataFrame(
            [{"user": r.key, "gpu_seconds": r.gpu_seconds} for r in data.gpu_seconds_by_user]
            or [{"user": "", "gpu_seconds": 0}]
        )
        waits = [
            [wf, f"{w:.2f}" if w is not None else ""]
            for wf, w in data.queue_wait_by_workflow.items()
        ]
        return per_hour, by_node, by_user, waits

    with gr.Tab("Nodes"):
        refresh = gr.Button("Refresh nodes")
        table = gr.Dataframe(
            headers=NODE_COLUMNS, interactive=False, wrap=True, elem_id="admin-nodes"
        )
        with gr.Row():
            node_id = gr.Textbox(label="Node id")
            for action in ("disable", "enable", "drain", "remove"):
                gr.Button(action.capitalize(), size="sm").click(
                    _action(act, action), [node_id], [table]
                )
        with gr.Row():
            new_id = gr.Textbox(label="New node id", placeholder="gpu-4")
            new_url = gr.Textbox(label="URL", placeholder="http://10.0.0.5:8188")
            new_capacity = gr.Number(label="Capacity", value=2, precision=0)
            gr.Button("Add node").click(add, [new_id, new_url, new_capacity], [table])
        refresh.click(nodes, None, [table])
    with gr.Tab("Join tokens"):
        build_join_tokens(runner)
    with gr.Tab("Backlog"):
        backlog_button = gr.Button("Refresh backlog")
        backlog_table = gr.Dataframe(
            headers=["capability", "priority", "queued"], interactive=False
        )
        backlog_button.click(backlog, None, [backlog_table])
    with gr.Tab("Users and clients"):
        users_button = gr.Button("Refresh")
        users_table = gr.Dataframe(
            headers=[
                "username",
                "role",
                "disabled",
                "max_queued",
                "max_running",
                "daily_gpu_seconds",
            ],
            interactive=False,
        )
        clients_table = gr.Dataframe(
            headers=["client_id", "name", "owner", "created"], interactive=False
        )
        with gr.Row():
            username = gr.Textbox(label="New username")
            password = gr.Textbox(label="Password", type="password")
            is_admin = gr.Checkbox(label="Admin")
            gr.Button("Create user").click(
                create_user, [username, password, is_admin], [users_table, clients_table]
            )
        with gr.Row():
            client_id = gr.Textbox(label="Client id to revoke")
            gr.Button("Revoke client").click(revoke, [client_id], [users_table, clients_table])
        users_button.click(users, None, [users_table, clients_table])
    with gr.Tab("Fleet stats"):
        hours = gr.Slider(1, 24 * 7, value=24, step=1, label="Hours")
        stats_button = gr.Button("Show")
        per_hour = gr.BarPlot(x="hour", y="jobs", color="kind", title="Jobs per hour")
        with gr.Row():
            by_node = gr.BarPlot(x="node", y="gpu_seconds", title="GPU-seconds per node")
            by_user = gr.BarPlot(x="user", y="gpu_seconds", title="GPU-seconds per user")
        waits = gr.Dataframe(headers=["workflow", "mean queue wait (s)"], interactive=False)
        stats_button.click(stats, [hours], [per_hour, by_node, by_user, waits])
    return nodes, table
