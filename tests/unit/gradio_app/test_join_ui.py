"""Admin → Join tokens in the Gradio UI: created, shown once, listed, revoked."""

from __future__ import annotations

import re

import pytest

from comfyfleet import auth
from comfyfleet.settings import Settings
from comfyfleet.store import (
    Database,
)
from tests.fixtures.gateway import Accounts


async def test_the_admin_ui_creates_shows_once_and_revokes_join_tokens(
    api_settings: Settings, api_db: Database, api_users: Accounts
) -> None:
    import gradio as gr

    from comfyfleet.api import StaticFleet
    from gradio_app.web import build_web_app

    app = build_web_app(api_settings, db=api_db, fleet=StaticFleet(api_settings, api_db))
    handlers = {
        f.fn.__name__: f.fn
        for f in app.state.ui.fns.values()
        if "build_join_tokens" in getattr(f.fn, "__qualname__", "")
    }

    class AdminRequest:
        username = "root"

    class UserRequest:
        username = "alice"

    shown, table = await handlers["create"](15, "ui batch", AdminRequest())
    [row] = table
    token = re.search(r"`(cfj_[\w-]+)`", shown).group(1)
    assert row[:3] == [row[0], "ui batch", "active"] and token not in str(table)
    with api_db.session() as s:
        assert auth.authenticate_join_token(s, token=token) is not None
    with pytest.raises(gr.Error):
        await handlers["create"](15, "not an admin", UserRequest())
    table = await handlers["revoke"](row[0], AdminRequest())
    assert table[0][2] == "revoked"
    with pytest.raises(gr.Error, match="revoked already"):
        await handlers["revoke"](row[0], AdminRequest())
