"""What the commands that talk to the gateway share: where tokens and node keys are kept, an
HTTP client with a bearer token, and the gateway's errors as `CliError`s.

The user's token comes from `COMFYFLEET_TOKEN`, else from `comfyfleet login`, which stores it per
gateway in `$XDG_CONFIG_HOME/comfyfleet/tokens.json` (default ~/.config; file mode 0600). The
gateway is `--gateway URL` / `COMFYFLEET_GATEWAY` (default http://127.0.0.1:8000).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from comfyfleet.cli import CliError


def config_dir() -> Path:
    """`$XDG_CONFIG_HOME/comfyfleet` (default ~/.config/comfyfleet)."""
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "comfyfleet"


def read_private(path: Path) -> dict[str, Any]:
    """A JSON object kept in the config dir ({} when missing or unreadable)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def write_private(path: Path, data: dict[str, Any]) -> Path:
    """Replace the file with `data`, readable by this user only (mode 0600)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(data, fh, indent=1)
    return path


def token_file() -> Path:
    return config_dir() / "tokens.json"


def save_token(gateway: str, token: str, username: str) -> Path:
    data = read_private(token_file())
    data[gateway.rstrip("/")] = {"token": token, "username": username}
    return write_private(token_file(), data)


def token_for(gateway: str) -> str:
    token = os.environ.get("COMFYFLEET_TOKEN")
    if token:
        return token
    entry = read_private(token_file()).get(gateway.rstrip("/"))
    if not entry:
        raise CliError(
            f"not logged in to {gateway}: run `comfyfleet login` (or set COMFYFLEET_TOKEN)"
        )
    return entry["token"]


def client(
    args: argparse.Namespace, *, auth: bool = True, token: str | None = None,
    timeout: float | None = 30.0,
) -> Any:  # fmt: skip
    """An `httpx.Client` for the gateway; with `auth`, the bearer is `token` (default: the
    user's token for this gateway)."""
    import httpx

    headers = {"Authorization": f"Bearer {token or token_for(args.gateway)}"} if auth else {}
    return httpx.Client(base_url=args.gateway, headers=headers, timeout=timeout)


def check(response: Any, *, login_hint: bool = True) -> Any:
    """The JSON of a successful response, or a CliError with the gateway's message (a 401 says
    to log in, unless `login_hint` is off: a join token or a node key was refused)."""
    if response.status_code < 400:
        return response.json() if response.content else None
    try:
        body = response.json()
        message = body.get("message") or body
    except ValueError:
        message = response.text[:300] or response.reason_phrase
    if response.status_code == 401 and login_hint:
        message = f"{message} (run `comfyfleet login`)"
    raise CliError(f"HTTP {response.status_code}: {message}")


def unreachable(args: argparse.Namespace, exc: Exception) -> CliError:
    return CliError(f"cannot reach the gateway at {args.gateway}: {exc}")


def request(args: argparse.Namespace, method: str, path: str, **kwargs: Any) -> Any:
    """One call with the user's token; its JSON (see `check`)."""
    import httpx

    try:
        with client(args) as http:
            return check(http.request(method, path, **kwargs))
    except httpx.HTTPError as exc:
        raise unreachable(args, exc) from None
