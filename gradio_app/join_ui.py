"""Admin → Join tokens: create a join token for GPU hosts (shown once), list and revoke them,
and see which nodes joined with which token. Every handler checks the admin role."""

from __future__ import annotations

from typing import Any

import gradio as gr

from comfyfleet import auth as identity
from comfyfleet.fleet.join import joined_record
from comfyfleet.store import Conflict, InvalidInput, NotFound, list_tokens, utcnow
from gradio_app.runner import Runner

TOKEN_COLUMNS = ["id", "note", "state", "created", "expires", "nodes"]


def build_join_tokens(runner: Runner) -> None:
    """The Join tokens sub-tab (call inside a `gr.Tab`)."""

    async def tokens(request: gr.Request) -> list[list[Any]]:
        await runner.admin(request)
        used: dict[int, list[str]] = {}
        for node in await runner.gateway.fleet.list_nodes():
            record = joined_record(node.metadata)
            if record is not None:
                used.setdefault(record.token_id, []).append(node.id)
        now = utcnow()
        rows = await runner.run(
            lambda s: list_tokens(s, kind="join", include_revoked=True), readonly=True
        )
        return [
            [t.id, t.note, identity.join_token_state(t, now=now),
             t.created_at.strftime("%Y-%m-%d %H:%M"),
             t.expires_at.strftime("%Y-%m-%d %H:%M") if t.expires_at else "",
             ", ".join(sorted(used.get(t.id, [])))]
            for t in rows
        ]  # fmt: skip

    async def create(ttl: float, note: str, request: gr.Request) -> tuple[str, list[list[Any]]]:
        actor = await runner.admin(request)
        try:
            issued = await runner.run(
                lambda s: identity.issue_join_token(
                    s, created_by=s.merge(actor.user, load=False), ttl_minutes=int(ttl or 0),
                    note=(note or "").strip()[:255], actor=s.merge(actor.user, load=False),
                )
            )  # fmt: skip
        except InvalidInput as exc:
            raise gr.Error(str(exc)) from None
        shown = (
            f"Join token {issued.id} — copy it now, it is not shown again:\n\n"
            f"`{issued.token}`\n\nOn the GPU host: `COMFYFLEET_JOIN_TOKEN=… comfyfleet "
            "--gateway URL node join --url http://HOST:8188`"
        )
        return shown, await tokens(request)

    async def revoke(token_id: float | None, request: gr.Request) -> list[list[Any]]:
        actor = await runner.admin(request)
        if not token_id:
            raise gr.Error("Give the id of the join token to revoke.")
        try:
            await runner.run(
                lambda s: identity.revoke_join_token(
                    s, token_id=int(token_id), actor=s.merge(actor.user, load=False)
                )
            )
        except (NotFound, Conflict) as exc:
            raise gr.Error(str(exc)) from None
        gr.Info(f"join token {int(token_id)} revoked; nodes that joined with it stay")
        return await tokens(request)

    refresh = gr.Button("Refresh join tokens")
    with gr.Row():
        ttl = gr.Number(label="Expires after (minutes)", value=60, precision=0, minimum=1)
        note = gr.Textbox(label="Note", placeholder="rack 3 GPU hosts")
        create_button = gr.Button("Create join token", variant="primary")
    shown = gr.Markdown(elem_id="join-token-shown")
    table = gr.Dataframe(headers=TOKEN_COLUMNS, interactive=False, elem_id="admin-join-tokens")
    with gr.Row():
        token_id = gr.Number(label="Join token id", precision=0)
        revoke_button = gr.Button("Revoke join token")
    create_button.click(create, [ttl, note], [shown, table])
    revoke_button.click(revoke, [token_id], [table])
    refresh.click(tokens, None, [table])
