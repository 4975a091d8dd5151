"""Job webhooks: Standard Webhooks signatures, delivery with retries and backoff, attempts recorded.

A job may carry a `webhook_url`. When the job ends (completed, failed or cancelled) one message is
POSTed there, signed per the Standard Webhooks spec (https://www.standardwebhooks.com/):

- headers `webhook-id` (stable across the retries of one message: `job-<id>-<status>`),
  `webhook-timestamp` (Unix seconds of this attempt) and `webhook-signature`
  (`v1,<base64 HMAC-SHA256 of "<id>.<timestamp>.<body>">`);
- the key is the scope's secret `whsec_<base64 key>`: the API client's when the job came through
  a client, else the owner's (see `comfyfleet.store.webhooks`); shown once when created;
- the body is `{"type": "job.completed", "timestamp": ISO-8601, "data": <REST job JSON>}`.

Delivery: a 2xx answer delivers the message. Anything else (a connection error, a timeout, a
non-2xx status) is retried after the next delay of `schedule` (default 0 s, 1 s, 5 s, 30 s, 2 min,
10 min, with ±20 % jitter), except 410 Gone, which stops retries (the receiver asks us to).
Each attempt is recorded in `webhook_deliveries`. A message already delivered is not sent again
(`deliver_job_event` is safe to call twice, e.g. by a flow and by the gateway).

Callers: the flows when a job ends (`await deliver_job_event(job_id)`), the gateway when it
cancels a queued job. It never raises for a receiver's failure; it returns what happened.
Durable retries: `deliver_due(db)`, called every few seconds by the fleet service, makes the next
attempt of every undelivered message whose delay has passed (counting the attempts already
recorded), so a message survives the death of its sender and jobs failed by the dispatcher
(queue timeout) get theirs too.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import random
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from comfyfleet.jobs.webhook_targets import RefusedTarget, WebhookPolicy, guarded_transport
from comfyfleet.store import TERMINAL_JOB_STATUSES, Database, get_job, job_to_dict, utcnow
from comfyfleet.store.models import Job
from comfyfleet.store.webhooks import (
    active_secret,
    attempts_made,
    client_scope,
    due_webhook_jobs,
    record_delivery,
    store_secret,
    user_scope,
    was_delivered,
)

log = logging.getLogger(__name__)

SECRET_PREFIX = "whsec_"
DEFAULT_SCHEDULE_S: tuple[float, ...] = (0.0, 1.0, 5.0, 30.0, 120.0, 600.0)
"""Delay before each attempt (the first is immediate)."""
TIMEOUT_S = 10.0
USER_AGENT = "ComfyFleet-Webhooks/1"
EVENTS = {"completed": "job.completed", "failed": "job.failed", "cancelled": "job.cancelled"}


class WebhookError(ValueError):
    """A secret or a URL that cannot be used."""


# -- signing ----------------------------------------------------------------------------------


def new_secret() -> str:
    """A fresh signing secret: `whsec_` + base64 of 32 random bytes."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def _key(secret: str) -> bytes:
    raw = secret[len(SECRET_PREFIX) :] if secret.startswith(SECRET_PREFIX) else secret
    try:
        return base64.b64decode(raw, validate=True)
    except ValueError as exc:
        raise WebhookError("webhook secret: not base64 after 'whsec_'") from exc


def sign(secret: str, *, msg_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` value: `v1,<base64 HMAC-SHA256(key, "id.timestamp.body")>`."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(_key(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def verify(secret: str, *, headers: dict[str, str], body: bytes, tolerance_s: int = 300) -> bool:
    """Check a message as a receiver would (constant-time; any `v1` signature may match)."""
    lower = {k.lower(): v for k, v in headers.items()}
    try:
        msg_id, ts = lower["webhook-id"], int(lower["webhook-timestamp"])
        given = lower["webhook-signature"].split()
    except (KeyError, ValueError):
        return False
    if abs(time.time() - ts) > tolerance_s:
        return False
    expected = sign(secret, msg_id=msg_id, timestamp=ts, body=body)
    return any(hmac.compare_digest(expected, sig) for sig in given if sig.startswith("v1,"))


def signed_headers(secret: str, *, msg_id: str, body: bytes, now: float | None = None) -> dict:
    timestamp = int(now if now is not None else time.time())
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(secret, msg_id=msg_id, timestamp=timestamp, body=body),
        "content-type": "application/json",
        "user-agent": USER_AGENT,
    }


# -- secrets ----------------------------------------------------------------------------------


def scope_of(job: Job) -> str:
    return client_scope(job.client_id) if job.client_id else user_scope(job.owner_id)


def rotate_secret(db: Database, *, scope: str) -> str:
    """A new signing secret for the scope (earlier ones stop signing); returned once."""
    secret = new_secret()
    db.run(lambda s: store_secret(s, scope=scope, secret=secret))
    return secret


def ensure_secret(db: Database, *, scope: str) -> str | None:
    """Create a secret for the scope if it has none; returns it only when it was just created."""

    def run(session: Any) -> str | None:
        if active_secret(session, scope=scope) is not None:
            return None
        secret = new_secret()
        store_secret(session, scope=scope, secret=secret)
        return secret

    return db.run(run)


def validate_url(url: str, *, policy: WebhookPolicy | None = None) -> str:
    """A webhook URL must be absolute http(s) and reach only addresses `policy` allows (default:
    the process settings'; see `comfyfleet.jobs.webhook_targets`); raises WebhookError saying
    why not. Resolves the host (blocking)."""
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError) as exc:
        raise WebhookError(f"not a URL: {exc}") from None
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise WebhookError("must be an absolute http:// or https:// URL")
    if len(url) > 2000:
        raise WebhookError("at most 2000 characters")
    try:
        (policy or default_policy()).check_url(url)
    except RefusedTarget as exc:
        raise WebhookError(str(exc)) from None
    return url


def default_policy() -> WebhookPolicy:
    """The process settings' webhook policy."""
    from comfyfleet.settings import get_settings

    return WebhookPolicy.from_settings(get_settings())


# -- delivery ---------------------------------------------------------------------------------


@dataclass
class DeliveryResult:
    webhook_id: str
    delivered: bool
    attempts: int = 0
    status_codes: list[int | None] = field(default_factory=list)
    skipped: str | None = None
    """Why nothing was sent (no webhook URL, not terminal, already delivered, no secret)."""


def message_id(job: Job) -> str:
    return f"job-{job.id}-{job.status}"


def payload(job: Job, *, base_url: str | None = None) -> dict[str, Any]:
    def url(job_id: str, name: str) -> str:
        path = f"/api/v2/tasks/{job_id}/outputs/{name}"
        return f"{base_url.rstrip('/')}{path}" if base_url else path

    return {
        "type": EVENTS.get(job.status, f"job.{job.status}"),
        "timestamp": datetime.now(UTC).isoformat(),
        "data": job_to_dict(job, output_url=url),
    }


async def deliver_job_event(
    job: Job | str,
    *,
    db: Database | None = None,
    base_url: str | None = None,
    schedule: Sequence[float] = DEFAULT_SCHEDULE_S,
    timeout_s: float = TIMEOUT_S,
    transport: httpx.AsyncBaseTransport | None = None,
    policy: WebhookPolicy | None = None,
) -> DeliveryResult:
    """POST the job's end event to its webhook URL, retrying per `schedule`; see the module doc.

    `job`: the job or its id (it is read again, with details, so the payload is current).
    `policy`: where it may go (default: the process settings'); the connection is checked
    against it (`guarded_transport`) unless a `transport` is given. Each attempt ends within
    `timeout_s`, however slowly the receiver answers.
    """
    db = db or Database.from_settings()
    job_id = job if isinstance(job, str) else job.id
    row = await asyncio.to_thread(
        db.run, lambda s: get_job(s, job_id=job_id, with_details=True), readonly=True
    )
    if row is None:
        return DeliveryResult(webhook_id="", delivered=False, skipped="unknown job")
    msg_id = message_id(row)
    if not row.webhook_url:
        return DeliveryResult(msg_id, False, skipped="no webhook_url")
    if row.status not in TERMINAL_JOB_STATUSES:
        return DeliveryResult(msg_id, False, skipped=f"job is {row.status}")
    scope = scope_of(row)

    def lookup(session: Any) -> tuple[bool, str | None, int]:
        secret = active_secret(session, scope=scope)
        done = was_delivered(session, webhook_id=msg_id)
        return done, secret.secret if secret else None, attempts_made(session, webhook_id=msg_id)

    done, secret, earlier = await asyncio.to_thread(db.run, lookup, readonly=True)
    if done:
        return DeliveryResult(msg_id, True, skipped="already delivered")
    if secret is None:
        log.warning("webhook of job %s not sent: no signing secret for %s", job_id, scope)
        return DeliveryResult(msg_id, False, skipped=f"no signing secret for {scope}")
    if base_url is None:
        base_url = _default_base_url()
    body = json.dumps(payload(row, base_url=base_url), separators=(",", ":")).encode()
    result = DeliveryResult(msg_id, False)
    if transport is None:
        transport = guarded_transport(policy or await asyncio.to_thread(default_policy))
    async with httpx.AsyncClient(timeout=timeout_s, transport=transport) as client:
        for number, delay in enumerate(schedule, start=earlier + 1):
            if delay > 0:
                await asyncio.sleep(delay * random.uniform(0.8, 1.2))
            status, error, ms = await _attempt(
                client, row.webhook_url, secret, msg_id, body, timeout_s=timeout_s
            )
            ok = status is not None and 200 <= status < 300
            result.attempts = number - earlier
            result.status_codes.append(status)
            await asyncio.to_thread(
                db.run,
                lambda s, n=number, st=status, e=error, o=ok, d=ms: record_delivery(
                    s,
                    webhook_id=msg_id,
                    job_id=row.id,
                    event=EVENTS.get(row.status, row.status),
                    url=row.webhook_url or "",
                    attempt=n,
                    status_code=st,
                    error=e,
                    delivered=o,
                    duration_ms=d,
                ),
            )
            if ok:
                result.delivered = True
                log.info("webhook %s delivered (attempt %d, %s)", msg_id, number, status)
                return result
            log.warning("webhook %s attempt %d failed: %s", msg_id, number, error or status)
            if status == 410:
                break
    return result


async def _attempt(
    client: httpx.AsyncClient, url: str, secret: str, msg_id: str, body: bytes, *, timeout_s: float
) -> tuple[int | None, str | None, float]:
    started = time.perf_counter()
    try:
        async with asyncio.timeout(timeout_s):  # httpx's timeout is per read: a trickle escapes it
            response = await client.post(
                url, content=body, headers=signed_headers(secret, msg_id=msg_id, body=body)
            )
    except TimeoutError:
        return None, f"no answer within {timeout_s:g} s", (time.perf_counter() - started) * 1000
    except httpx.HTTPError as exc:
        return None, f"{type(exc).__name__}: {exc}"[:1000], (time.perf_counter() - started) * 1000
    ms = (time.perf_counter() - started) * 1000
    error = None if response.is_success else f"HTTP {response.status_code}: {response.text[:200]}"
    return response.status_code, error, ms


def _default_base_url() -> str | None:
    try:
        from comfyfleet.settings import get_settings

        gateway = get_settings().gateway
    except Exception:  # settings unreadable: relative output URLs are still useful
        return None
    host = "127.0.0.1" if gateway.host in ("0.0.0.0", "::", "") else gateway.host
    return f"http://{host}:{gateway.port}"


def due_jobs(
    db: Database,
    *,
    schedule: Sequence[float] = DEFAULT_SCHEDULE_S,
    within_s: float = 86400.0,
    limit: int = 100,
) -> list[str]:
    """Ended jobs whose webhook is not delivered and whose next attempt is due now (oldest
    first; `comfyfleet.store.webhooks.due_webhook_jobs`)."""
    now = utcnow()
    return db.run(
        lambda s: due_webhook_jobs(
            s, schedule=schedule, since=now - timedelta(seconds=within_s), limit=limit, now=now
        ),
        readonly=True,
    )


async def deliver_due(
    db: Database,
    *,
    schedule: Sequence[float] = DEFAULT_SCHEDULE_S,
    policy: WebhookPolicy | None = None,
    concurrency: int = 32,
    **kwargs: Any,
) -> int:
    """One attempt for each webhook that is due (see `due_jobs`); how many were delivered.

    The durable side of the retries: the fleet service calls this every few seconds, so a
    message whose sender died (or that was never sent) is still delivered, on the same
    schedule, counting the attempts recorded so far. The attempts run side by side (up to
    `concurrency`), so a receiver that hangs holds only its own message."""
    due = await asyncio.to_thread(due_jobs, db, schedule=schedule)
    if not due:
        return 0
    policy = policy or await asyncio.to_thread(default_policy)
    gate = asyncio.Semaphore(concurrency)

    async def one(job_id: str) -> bool:
        async with gate:
            result = await deliver_job_event(
                job_id, db=db, schedule=(0.0,), policy=policy, **kwargs
            )
        return result.delivered and result.skipped is None

    return sum(await asyncio.gather(*(one(job_id) for job_id in due)))


def deliver_job_event_sync(job: Job | str, **kwargs: Any) -> DeliveryResult:
    """`deliver_job_event` for synchronous callers (runs its own event loop)."""
    return asyncio.run(deliver_job_event(job, **kwargs))
