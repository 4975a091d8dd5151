"""Webhook retries found in the job store, on SQLite and on real MariaDB: which ended jobs have a
webhook message due now, however many older ones there are."""

from __future__ import annotations

from datetime import timedelta

import pytest

from comfyfleet.jobs import webhooks
from comfyfleet.store import Database, Job, utcnow
from comfyfleet.store.users import add_user
from comfyfleet.store.webhooks import WebhookDelivery

pytestmark = pytest.mark.integration


def test_due_webhooks_are_found_past_hundreds_of_delivered_older_ones(db: Database) -> None:
    """600 ended jobs with a webhook in the last hour: the 560 oldest delivered, then 37 never
    sent (due at once), one whose first attempt failed a minute ago (its retry is due),
    one whose first attempt failed just now (not due) and one that used up the schedule."""
    now = utcnow()
    schedule = (0.0, 5.0)
    ids = [f"j{i:04d}" for i in range(600)]
    with db.session() as s:
        owner = add_user(s, username="hooks", password_hash="!")
        for i, job_id in enumerate(ids):
            finished = now - timedelta(seconds=3600 - i)
            s.add(Job(
                id=job_id, workflow="delay", capability="delay", params={}, request={},
                status="completed", owner_id=owner.id, webhook_url="http://r.test/",
                created_at=finished, finished_at=finished,
            ))  # fmt: skip
        s.flush()

        def delivery(job_id: str, attempt: int, *, delivered: bool, ago_s: float) -> None:
            s.add(WebhookDelivery(
                webhook_id=f"job-{job_id}-completed", job_id=job_id, event="job.completed",
                url="http://r.test/", attempt=attempt, status_code=200 if delivered else 503,
                delivered=delivered, at=now - timedelta(seconds=ago_s),
            ))  # fmt: skip

        for job_id in ids[:560]:
            delivery(job_id, 1, delivered=True, ago_s=60)
        retry_due, retry_later, given_up = ids[-3], ids[-2], ids[-1]
        delivery(retry_due, 1, delivered=False, ago_s=60)
        delivery(retry_later, 1, delivered=False, ago_s=1)
        delivery(given_up, 1, delivered=False, ago_s=60)
        delivery(given_up, 2, delivered=False, ago_s=30)

    due = webhooks.due_jobs(db, schedule=schedule, limit=100)
    assert sorted(due) == sorted([*ids[560:597], retry_due])
    assert webhooks.due_jobs(db, schedule=schedule, limit=10) == ids[560:570]  # oldest first
