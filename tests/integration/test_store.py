"""The job store on SQLite and on real MariaDB: lifecycle, guards, outputs, history, accounting."""

from __future__ import annotations

import csv
import io
import json
from datetime import timedelta

import pytest

from comfyfleet import store
from comfyfleet.store import Database, Job, User, utcnow
from comfyfleet.store.users import add_user

pytestmark = pytest.mark.integration

CAPS = {"gpu-1": {"text_to_image"}, "gpu-2": {"text_to_image", "image_to_video"}}


def make_user(db: Database, name: str, **quotas: object) -> User:
    with db.session() as s:
        user = add_user(s, username=name, password_hash="!")
        if quotas:
            store.set_quotas(s, target=user, **quotas)  # type: ignore[arg-type]
        return user


def make_job(db: Database, owner: User, **kw: object) -> Job:
    values: dict[str, object] = {
        "workflow": "sd15-basic",
        "capability": "text_to_image",
        "params": {"prompt": "a cat", "seed": 1},
    }
    values.update(kw)
    with db.session() as s:
        return store.create_job(s, owner=owner, **values)  # type: ignore[arg-type]


def start(db: Database, job_id: str, node: str = "gpu-1") -> str:
    """Claim the given job, give it an attempt on `node` and mark it running."""
    with db.session() as s:
        assert store.claim_job(s, job_id=job_id) is not None
        attempt = store.create_attempt(s, job_id=job_id, node=node, lease_s=30)
        assert store.mark_attempt_running(s, attempt_id=attempt.id, lease_s=30)
        return attempt.id


def status(db: Database, job_id: str) -> str:
    with db.session() as s:
        job = store.get_job(s, job_id=job_id)
        assert job is not None
        return job.status


def test_create_job_stores_every_field(db: Database) -> None:
    alice = make_user(db, "alice")
    job = make_job(
        db,
        alice,
        request={"prompt": "a cat"},
        priority="high",
        pinned_node="gpu-2",
        webhook_url="http://hook.example/x",
        batch_id="b1",
        params={"prompt": "ünïcødé 猫", "seed": 42, "nested": {"a": [1, 2]}},
    )
    assert len(job.id) == 32 and int(job.id, 16) >= 0
    with db.session() as s:
        got = store.get_job(s, job_id=job.id, with_details=True)
        assert got is not None
        assert got.status == "queued" and got.priority == 0 and got.priority_name == "high"
        assert got.params == {"prompt": "ünïcødé 猫", "seed": 42, "nested": {"a": [1, 2]}}
        assert got.request == {"prompt": "a cat"}
        assert (got.pinned_node, got.webhook_url, got.batch_id) == (
            "gpu-2",
            "http://hook.example/x",
            "b1",
        )
        assert got.created_at.tzinfo is not None
        assert abs(got.created_at - utcnow()) < timedelta(seconds=30)
        assert store.get_job(s, job_id=job.id, owner_id=alice.id + 1) is None
        with pytest.raises(store.InvalidInput, match="priority"):
            store.create_job(
                s, workflow="w", capability="c", params={}, owner=alice, priority="urgent"
            )


def test_job_lifecycle_to_completed_with_outputs(db: Database) -> None:
    alice = make_user(db, "alice")
    job = make_job(db, alice)
    attempt_id = start(db, job.id)
    assert attempt_id == f"{job.id}-1"
    assert status(db, job.id) == "running"
    with db.session() as s:
        assert store.update_progress(s, job_id=job.id, value=3, max=20, node="gpu-1")
        for _ in range(2):  # a retried download records the file once
            store.record_output(
                s,
                job_id=job.id,
                attempt_id=attempt_id,
                name="img_00001.png",
                path=f"{job.id}/img_00001.png",
                sha256="ab" * 32,
                size=1234,
                content_type="image/png",
                node="gpu-1",
                prompt_id=attempt_id,
                comfy_node_id="9",
            )
        assert store.complete_job(s, job_id=job.id, attempt_id=attempt_id, gpu_seconds=4.5)
        assert not store.complete_job(s, job_id=job.id)  # once only
    with db.session() as s:
        got = store.get_job(s, job_id=job.id, with_details=True)
        assert got is not None
        assert got.status == "completed" and got.finished_at is not None
        assert got.progress_value == got.progress_max == 20
        assert got.gpu_seconds == pytest.approx(4.5)
        assert [a.status for a in got.attempts] == ["completed"]
        assert [(o.name, o.size, o.node) for o in got.outputs] == [("img_00001.png", 1234, "gpu-1")]
        view = store.job_to_dict(got, output_url=lambda j, n: f"/api/v2/jobs/{j}/outputs/{n}")
    assert view["progress"] == {"value": 20, "max": 20, "node_id": "gpu-1"}
    assert view["outputs"][0]["url"] == f"/api/v2/jobs/{job.id}/outputs/img_00001.png"
    assert view["priority"] == "normal" and view["owner"] == "alice"
    assert view["attempts"][0]["id"] == attempt_id


def test_an_attempt_ended_by_the_fleet_cannot_complete_the_job(db: Database) -> None:
    """Lease expired → node fault → a new attempt; the first prompt then finishes after all.
    Its completion is refused and records nothing; the live attempt's completion is the one."""
    from comfyfleet.jobs import attempts
    from comfyfleet.jobs.outputs import OutputRecord

    alice = make_user(db, "alice")
    job = make_job(db, alice)
    first = start(db, job.id, node="gpu-1")
    with db.session() as s:
        assert store.requeue_job_after_node_fault(
            s, job_id=job.id, attempt_id=first, reason="gpu-1: lease expired", max_node_faults=3
        ) == "queued"  # fmt: skip
    second = start(db, job.id, node="gpu-2")

    def attempt(attempt_id: str, node: str) -> tuple[attempts.AttemptInfo, list[OutputRecord]]:
        info = attempts.AttemptInfo(job.id, attempt_id, node, "sd15-basic", {})
        out = OutputRecord(
            name="img_00001_.png", path=f"{job.id}/{attempt_id}/img_00001_.png",
            sha256=attempt_id[:2] * 32, size=10, content_type="image/png", node=node,
            prompt_id=attempt_id, comfy_node_id="9",
        )  # fmt: skip
        return info, [out]

    assert not attempts.completed(db, *attempt(first, "gpu-1"), gpu_seconds=3.0)
    assert status(db, job.id) == "running"
    assert attempts.completed(db, *attempt(second, "gpu-2"), gpu_seconds=2.0)
    assert not attempts.completed(db, *attempt(first, "gpu-1"), gpu_seconds=3.0)  # later still
    with db.session() as s:
        got = store.get_job(s, job_id=job.id, with_details=True)
        assert got is not None and got.status == "completed"
        assert [(o.node, o.prompt_id) for o in got.outputs] == [("gpu-2", second)]
        assert {a.id: a.status for a in got.attempts} == {first: "node_fault", second: "completed"}


def test_progress_never_overwrites_a_terminal_status(db: Database) -> None:
    alice = make_user(db, "alice")
    for end in ("complete", "fail", "cancel"):
        job = make_job(db, alice)
        start(db, job.id)
        with db.session() as s:
            if end == "complete":
                store.complete_job(s, job_id=job.id)
            elif end == "fail":
                store.fail_job(s, job_id=job.id, error="boom")
            else:
                store.cancel_job(s, job_id=job.id)
        with db.session() as s:
            assert not store.update_progress(s, job_id=job.id, value=1, max=20, node="gpu-9")
        with db.session() as s:
            got = store.get_job(s, job_id=job.id)
            assert got is not None and got.is_terminal and got.node == "gpu-1"


def test_cancel_queued_never_runs_and_running_is_requested(db: Database) -> None:
    alice = make_user(db, "alice")
    queued, running = make_job(db, alice), make_job(db, alice)
    attempt_id = start(db, running.id)
    with db.session() as s:
        assert store.request_cancel(s, job_id=queued.id) == "cancelled"
        assert store.request_cancel(s, job_id=running.id) == "running"
        assert store.request_cancel(s, job_id="0" * 32) is None
    with db.session() as s:
        assert store.claim_next_job(s, capabilities_free=CAPS) is None
        job = store.get_job(s, job_id=running.id)
        assert job is not None and job.cancel_requested
        assert store.cancel_job(s, job_id=running.id, reason="interrupted on gpu-1")
    with db.session() as s:
        attempt = store.get_attempt(s, attempt_id=attempt_id)
        assert attempt is not None and attempt.status == "cancelled"
        assert not store.renew_lease(s, attempt_id=attempt_id, lease_s=30)


def test_leases_renew_expire_and_stop_with_the_job(db: Database) -> None:
    alice = make_user(db, "alice")
    job = make_job(db, alice)
    attempt_id = start(db, job.id)
    with db.session() as s:
        assert store.renew_lease(s, attempt_id=attempt_id, lease_s=5)
        assert store.expired_leases(s) == []
        expired = store.expired_leases(s, now=utcnow() + timedelta(seconds=6))
        assert [a.id for a in expired] == [attempt_id]
        with pytest.raises(store.Conflict, match="is running"):
            store.create_attempt(s, job_id=job.id, node="gpu-2")
    with db.session() as s:
        store.fail_job(s, job_id=job.id, error="ComfyUI: KSampler: out of memory")
    with db.session() as s:
        assert not store.renew_lease(s, attempt_id=attempt_id, lease_s=5)
        assert store.expired_leases(s, now=utcnow() + timedelta(hours=1)) == []
        got = store.get_job(s, job_id=job.id, with_details=True)
        assert got is not None and got.attempts[0].status == "failed"
        assert got.error == "ComfyUI: KSampler: out of memory"


def test_node_faults_requeue_then_fail_with_every_reason(db: Database) -> None:
    alice = make_user(db, "alice")
    job = make_job(db, alice)
    for number, node in enumerate(("gpu-1", "gpu-2", "gpu-1"), start=1):
        attempt_id = start(db, job.id, node=node)
        with db.session() as s:
            result = store.requeue_job_after_node_fault(
                s,
                job_id=job.id,
                attempt_id=attempt_id,
                reason=f"{node} unreachable",
                max_node_faults=3,
            )
            # a second report of the same fault changes nothing
            again = store.requeue_job_after_node_fault(
                s, job_id=job.id, attempt_id=attempt_id, reason="dup", max_node_faults=3
            )
        assert result == again == ("failed" if number == 3 else "queued")
    with db.session() as s:
        got = store.get_job(s, job_id=job.id, with_details=True)
        assert got is not None
        assert got.node_faults == 3
        assert [a.status for a in got.attempts] == ["node_fault"] * 3
        assert got.error == (
            "failed after 3 node faults: attempt 1 on gpu-1: gpu-1 unreachable; "
            "attempt 2 on gpu-2: gpu-2 unreachable; attempt 3 on gpu-1: gpu-1 unreachable"
        )


def test_node_fault_of_a_cancel_requested_job_cancels_it(db: Database) -> None:
    alice = make_user(db, "alice")
    job = make_job(db, alice)
    attempt_id = start(db, job.id)
    with db.session() as s:
        store.request_cancel(s, job_id=job.id)
        assert (
            store.requeue_job_after_node_fault(
                s, job_id=job.id, attempt_id=attempt_id, reason="lost", max_node_faults=3
            )
            == "cancelled"
        )


def test_history_filters_paging_and_export(db: Database) -> None:
    alice, bob = make_user(db, "alice"), make_user(db, "bob")
    base = utcnow() - timedelta(days=3)
    ids = []
    for i in range(7):
        job = make_job(
            db,
            alice if i % 2 == 0 else bob,
            now=base + timedelta(hours=i),
            capability="image_to_video" if i == 6 else "text_to_image",
            workflow="svd-basic" if i == 6 else "sd15-basic",
        )
        ids.append(job.id)
    with db.session() as s:
        store.cancel_job(s, job_id=ids[0])
        alice_jobs = store.list_jobs(s, owner_id=alice.id)
        assert [j.id for j in alice_jobs] == [ids[6], ids[4], ids[2], ids[0]]  # newest first
        assert store.count_jobs(s, owner_id=alice.id) == 4
        page = store.list_jobs(s, owner_id=alice.id, limit=2, offset=2)
        assert [j.id for j in page] == [ids[2], ids[0]]
        assert [j.id for j in store.list_jobs(s, status="cancelled")] == [ids[0]]
        assert [j.id for j in store.list_jobs(s, capability="image_to_video")] == [ids[6]]
        window = store.list_jobs(
            s, since=base + timedelta(hours=2), until=base + timedelta(hours=4)
        )
        assert [j.id for j in window] == [ids[3], ids[2]]
        with pytest.raises(store.InvalidInput, match="status"):
            store.list_jobs(s, status="done")
        exported_csv = store.export_jobs(s, fmt="csv", owner_id=alice.id)
        exported_json = json.loads(store.export_jobs(s, fmt="json", owner_id=alice.id))
    rows = list(csv.DictReader(io.StringIO(exported_csv)))
    assert tuple(rows[0].keys()) == store.EXPORT_FIELDS
    assert [r["id"] for r in rows] == [ids[6], ids[4], ids[2], ids[0]]
    assert rows[-1]["status"] == "cancelled" and rows[-1]["owner"] == "alice"
    assert json.loads(rows[0]["params"]) == {"prompt": "a cat", "seed": 1}
    assert [r["id"] for r in exported_json] == [r["id"] for r in rows]
    assert exported_json[0]["params"] == {"prompt": "a cat", "seed": 1}


def test_gpu_seconds_rollups(db: Database) -> None:
    alice, bob = make_user(db, "alice"), make_user(db, "bob")
    plan = [
        (alice, "sd15-basic", "gpu-1", 10.0),
        (alice, "svd-basic", "gpu-2", 30.0),
        (bob, "sd15-basic", "gpu-2", 5.0),
    ]
    for owner, workflow, node, gpu in plan:
        job = make_job(db, owner, workflow=workflow)
        attempt_id = start(db, job.id, node=node)
        with db.session() as s:
            store.complete_job(s, job_id=job.id, attempt_id=attempt_id, gpu_seconds=gpu)
    faulted = make_job(db, bob)
    attempt_id = start(db, faulted.id, node="gpu-1")
    with db.session() as s:  # a faulted attempt used the GPU too
        store.requeue_job_after_node_fault(
            s, job_id=faulted.id, attempt_id=attempt_id, reason="x", gpu_seconds=2.0
        )
        by_user = {r.key: r.gpu_seconds for r in store.gpu_seconds_rollup(s, by="user")}
        by_workflow = {r.key: r.gpu_seconds for r in store.gpu_seconds_rollup(s, by="workflow")}
        by_node = {r.key: r.gpu_seconds for r in store.gpu_seconds_rollup(s, by="node")}
        by_day = store.gpu_seconds_rollup(s, by="day")
        mine = store.gpu_seconds_rollup(s, by="workflow", owner_id=alice.id)
    assert by_user == {"alice": 40.0, "bob": 7.0}
    assert by_workflow == {"sd15-basic": 17.0, "svd-basic": 30.0}
    assert by_node == {"gpu-1": 12.0, "gpu-2": 35.0}
    assert [(r.key, r.gpu_seconds, r.attempts) for r in by_day] == [
        (utcnow().date().isoformat(), 47.0, 4)
    ]
    assert {r.key: r.gpu_seconds for r in mine} == {"sd15-basic": 10.0, "svd-basic": 30.0}


def test_quotas_refuse_with_a_clear_message(db: Database) -> None:
    alice = make_user(db, "alice", max_queued=2)
    bob = make_user(db, "bob", daily_gpu_seconds=10.0)
    for _ in range(2):
        with db.session() as s:
            store.check_quota(s, user=alice)
        make_job(db, alice)
    with db.session() as s:
        with pytest.raises(
            store.QuotaExceeded, match="user alice has 2 jobs queued, the limit is 2"
        ):
            store.check_quota(s, user=alice)
    job = make_job(db, bob)
    attempt_id = start(db, job.id)
    with db.session() as s:
        store.check_quota(s, user=bob)
        store.complete_job(s, job_id=job.id, attempt_id=attempt_id, gpu_seconds=12.0)
    with db.session() as s:
        with pytest.raises(store.QuotaExceeded) as info:
            store.check_quota(s, user=bob)
        assert info.value.kind == "daily_gpu_seconds" and info.value.limit == 10.0
        assert "resets at 00:00 UTC" in str(info.value)
        assert store.usage(s, user=bob).gpu_seconds_today == 12.0


def test_client_quota_and_client_jobs(db: Database) -> None:
    from comfyfleet import auth

    alice = make_user(db, "alice")
    with db.session() as s:
        client, _secret = auth.create_client(s, owner=alice, client_name="bot")
        store.set_quotas(s, target=client, max_queued=1)
    make_job(db, alice, client=client.id)
    make_job(db, alice)  # the owner's own jobs do not count against the client
    with db.session() as s:
        store.check_quota(s, user=alice)
        with pytest.raises(store.QuotaExceeded, match=r"client bot \("):
            store.check_quota(s, user=alice, client=client)
        assert store.count_jobs(s, client_id=client.id) == 1


def test_max_running_holds_jobs_back_instead_of_refusing(db: Database) -> None:
    alice = make_user(db, "alice", max_running=1)
    first, second = make_job(db, alice), make_job(db, alice)
    with db.session() as s:
        store.check_quota(s, user=alice)  # queuing is fine
        claimed = store.claim_next_job(s, capabilities_free=CAPS)
        assert claimed is not None and claimed.id == first.id
    with db.session() as s:
        assert store.claim_next_job(s, capabilities_free=CAPS) is None
        store.create_attempt(s, job_id=first.id, node="gpu-1")
        store.complete_job(s, job_id=first.id)
    with db.session() as s:
        claimed = store.claim_next_job(s, capabilities_free=CAPS)
        assert claimed is not None and claimed.id == second.id


def test_expire_queued_jobs_fails_them_with_a_reason(db: Database) -> None:
    alice = make_user(db, "alice")
    old = make_job(db, alice, now=utcnow() - timedelta(hours=2))
    fresh = make_job(db, alice)
    with db.session() as s:
        assert store.expire_queued_jobs(s, older_than_s=3600) == [old.id]
    with db.session() as s:
        got = store.get_job(s, job_id=old.id)
        assert (
            got is not None
            and got.status == "failed"
            and "queued for more than" in (got.error or "")
        )
    assert status(db, fresh.id) == "queued"


def test_pinned_jobs_wait_for_their_node(db: Database) -> None:
    alice = make_user(db, "alice")
    pinned = make_job(db, alice, pinned_node="gpu-2")
    with db.session() as s:
        assert store.claim_next_job(s, capabilities_free={"gpu-1": {"text_to_image"}}) is None
        assert store.claim_next_job(s, capabilities_free={"text_to_image"}) is None
        claimed = store.claim_next_job(s, capabilities_free={"gpu-2": {"text_to_image"}})
        assert claimed is not None and claimed.id == pinned.id


def test_capability_filter(db: Database) -> None:
    alice = make_user(db, "alice")
    video = make_job(db, alice, capability="image_to_video", workflow="svd-basic")
    with db.session() as s:
        assert store.claim_next_job(s, capabilities_free={"gpu-1": {"text_to_image"}}) is None
        assert store.claim_next_job(s, capabilities_free={}) is None
        claimed = store.claim_next_job(s, capabilities_free=CAPS)
        assert claimed is not None and claimed.id == video.id
        assert claimed.status == "dispatched" and claimed.dispatched_at is not None


def test_create_attempt_needs_a_dispatched_job(db: Database) -> None:
    alice = make_user(db, "alice")
    job = make_job(db, alice)
    with db.session() as s:
        with pytest.raises(store.Conflict, match="queued"):
            store.create_attempt(s, job_id=job.id, node="gpu-1")
        with pytest.raises(store.NotFound):
            store.create_attempt(s, job_id="f" * 32, node="gpu-1")
        store.claim_job(s, job_id=job.id)
        store.create_attempt(s, job_id=job.id, node="gpu-1")
        with pytest.raises(store.Conflict, match="live attempt"):
            store.create_attempt(s, job_id=job.id, node="gpu-2")


def test_service_user_owns_direct_prefect_jobs(db: Database) -> None:
    with db.session() as s:
        prefect = store.ensure_service_user(s)
        job = store.create_job(
            s,
            workflow="sd15-basic",
            capability="text_to_image",
            params={},
            owner=prefect,
            pinned_node="gpu-1",
        )
        assert store.claim_job(s, job_id=job.id) is not None
        assert store.claim_job(s, job_id=job.id) is None
        store.create_attempt(s, job_id=job.id, node="gpu-1", flow_run_id="f-1")
        assert store.live_attempts_by_node(s) == {"gpu-1": 1}


def test_objects_read_stay_usable_after_the_session(db: Database) -> None:
    alice = make_user(db, "alice")
    job = make_job(db, alice)
    for readonly in (False, True):
        got = db.run(
            lambda s: store.get_job(s, job_id=job.id, with_details=True), readonly=readonly
        )
        assert got is not None
        assert got.status == "queued" and got.attempts == [] and got.params["prompt"] == "a cat"
        assert store.job_to_dict(got)["owner"] == "alice"
    with db.session(readonly=True) as s:  # nothing is committed in a read-only session
        store.create_job(s, workflow="w", capability="c", params={}, owner=alice)
        s.flush()
    with db.session() as s:
        assert store.count_jobs(s) == 1
