"""Node self-join: a GPU host adds its ComfyUI to the fleet with a join token, and leaves again.

- An admin issues a join token (`comfyfleet.auth.issue_join_token`: `cfj_…`, scoped to
  registering nodes, expiring, revocable, shown once, stored as SHA-256).
- `comfyfleet node join` on the host sends the node's name, the URL at which the control plane
  reaches its ComfyUI, capacity, capabilities and metadata with the token as bearer. The control
  plane checks the token (`comfyfleet.auth.check_join_token`: a refusal says why: unknown,
  expired, revoked, not a join token), probes the URL (`probe_comfyui`: GET /system_stats; a
  node it cannot reach is refused with the reason and nothing is written), reads the GPU model
  from the node's devices when the host did not give one, then registers the node like
  `comfyfleet nodes add` (block, pool, queues, deployments). The fleet service puts it in
  rotation after its first healthy probe. Joining again with a name that joined before updates
  that node (what is not given stays); a name taken by a node an admin added is refused.
- How the node joined is kept in its registry entry, `metadata["joined"]` (`JoinRecord`: by
  which token, when first and last, from which address), so it lives and dies with the node and
  shows in the Prefect UI's Blocks page too. Revoking the token stops new joins only.
- Each join hands the host a node key (`cfn_…`, shown once, only its SHA-256 is kept in the
  record; a new join replaces it). `comfyfleet node leave` presents it: the node is drained (no
  new attempts, the ones in flight finish) and removed once nothing is in flight.

No network is scanned: the control plane only ever probes the one URL a token holder gave.
"""

from __future__ import annotations

import hmac
import re
import secrets
from datetime import datetime
from typing import Any

import httpx
from pydantic import BaseModel, Field

from comfyfleet.auth import TOKEN_BYTES, token_digest
from comfyfleet.comfyui import ComfyUIClient, ComfyUIError, NodeUnavailable
from comfyfleet.store.errors import InvalidInput
from comfyfleet.store.models import Token
from comfyfleet.store.types import utcnow

NODE_KEY_PREFIX = "cfn_"
RECORD_KEY = "joined"
"""The key of the join record in a node's metadata (reserved: a host cannot set it)."""
PROBE_TIMEOUT_S = 5.0
MAX_METADATA_KEYS = 32
_META_KEY = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_DEVICE_NAME = re.compile(r"^(?:[a-z]+:\d+\s+)?(?P<model>.*?)(?:\s+:\s+\S+)?$")


class NodeUnreachable(Exception):
    """The control plane cannot reach a ComfyUI at the URL; the message says why (422)."""


class JoinedInfo(BaseModel):
    """How a node joined the fleet by itself (`comfyfleet node join`), as anyone may see it."""

    via: str = Field(default="join-token", description="`join-token`.")
    token_id: int = Field(description="The join token it used (last join).")
    token_note: str = ""
    joined_at: datetime = Field(description="First join.")
    updated_at: datetime = Field(description="Last join (a re-join updates the node).")
    address: str | None = Field(default=None, description="Where the join request came from.")


class JoinRecord(JoinedInfo):
    """How a node joined: `metadata["joined"]` of its registry entry (with the node key's
    digest, which is never shown)."""

    key_sha256: str = Field(default="", description="SHA-256 of the node key (leave).")


def joined_record(metadata: dict[str, Any] | None) -> JoinRecord | None:
    """The join record in a node's metadata (None: the node was added by an admin or config)."""
    raw = (metadata or {}).get(RECORD_KEY)
    if not isinstance(raw, dict):
        return None
    try:
        return JoinRecord.model_validate(raw)
    except ValueError:
        return None


def new_node_key() -> str:
    return NODE_KEY_PREFIX + secrets.token_urlsafe(TOKEN_BYTES)


def node_key_matches(record: JoinRecord | None, key: str) -> bool:
    """Whether `key` is the node key of the node with this join record (constant time)."""
    if record is None or not record.key_sha256 or not key.startswith(NODE_KEY_PREFIX):
        return False
    return hmac.compare_digest(record.key_sha256, token_digest(key))


# -- the node ----------------------------------------------------------------------------------


def check_url(url: str) -> str:
    """The ComfyUI base URL without a trailing slash, or InvalidInput naming the problem."""
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError) as exc:
        raise InvalidInput(f"url {url!r}: not a URL ({exc})") from None
    if parsed.scheme not in ("http", "https"):
        raise InvalidInput(f"url {url!r}: must start with http:// or https://")
    if not parsed.host:
        raise InvalidInput(f"url {url!r}: has no host")
    if parsed.query or parsed.fragment:
        raise InvalidInput(f"url {url!r}: give the base URL, without ?query or #fragment")
    return url.rstrip("/")


def check_metadata(metadata: dict[str, Any]) -> dict[str, Any]:
    """Free-form facts about the node (flat: text, numbers, booleans), or InvalidInput."""
    if len(metadata) > MAX_METADATA_KEYS:
        raise InvalidInput(f"metadata: at most {MAX_METADATA_KEYS} keys")
    for key, value in metadata.items():
        if key == RECORD_KEY:
            raise InvalidInput(f"metadata: {RECORD_KEY!r} is reserved for the join record")
        if not _META_KEY.match(key):
            raise InvalidInput(f"metadata: key {key!r}: letters, digits, '_', '.', '-' (≤ 64)")
        if value is not None and not isinstance(value, str | int | float | bool):
            raise InvalidInput(f"metadata: {key}: must be text, a number or a boolean")
        if isinstance(value, str) and len(value) > 256:
            raise InvalidInput(f"metadata: {key}: at most 256 characters")
    return dict(metadata)


async def probe_comfyui(
    url: str,
    *,
    timeout_s: float = PROBE_TIMEOUT_S,
    transport: httpx.AsyncBaseTransport | None = None,
) -> dict[str, Any]:
    """The node's /system_stats (`ComfyUIClient.probe`), or NodeUnreachable saying why the
    control plane cannot use it."""
    stats: Any = None
    try:
        async with ComfyUIClient(url, timeout=timeout_s, transport=transport) as client:
            stats = (await client.probe(queue=False)).system_stats
    except ComfyUIError as exc:
        cause = exc.__cause__
        if isinstance(cause, httpx.TimeoutException):
            raise NodeUnreachable(f"no answer from {url} within {timeout_s:.0f} s") from None
        if isinstance(exc, NodeUnavailable) and exc.status_code is None:
            raise NodeUnreachable(f"cannot reach {url}: {type(cause).__name__}: {cause}") from None
        if exc.status_code is not None:
            raise NodeUnreachable(
                f"{url}/system_stats answered HTTP {exc.status_code}: not a ComfyUI server?"
            ) from None
    if not isinstance(stats, dict) or not isinstance(stats.get("devices"), list):
        raise NodeUnreachable(f"{url}/system_stats has no device list: not a ComfyUI server?")
    return stats


def gpu_model(stats: dict[str, Any]) -> str | None:
    """The model of the node's first device, from /system_stats (`cuda:0 NVIDIA L4 :
    cudaMallocAsync` → `NVIDIA L4`); None when it lists none."""
    for device in stats.get("devices") or []:
        name = str((device or {}).get("name") or "").strip()
        if name:
            match = _DEVICE_NAME.match(name)
            return (match.group("model") if match else name) or name
    return None


def make_record(
    token: Token, *, previous: JoinRecord | None, address: str | None, key: str
) -> JoinRecord:
    now = utcnow()
    return JoinRecord(
        token_id=token.id,
        token_note=token.note or "",
        joined_at=previous.joined_at if previous is not None else now,
        updated_at=now,
        address=address,
        key_sha256=token_digest(key),
    )
