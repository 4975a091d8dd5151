"""The CLI tests' fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fixtures.gateway import ServerThread


@pytest.fixture
def cli_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, gateway_server: ServerThread) -> str:
    """A config dir of the test's own, the gateway served for it, no token yet."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.delenv("COMFYFLEET_TOKEN", raising=False)
    monkeypatch.setenv("COMFYFLEET_GATEWAY", gateway_server.url)
    return gateway_server.url
