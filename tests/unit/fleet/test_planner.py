"""The planner books each job where it would finish first: on unequal nodes a job waits for a busy
fast node rather than start on a free slow one; on equal nodes (or unknown speeds) it leaves the
choice to the router."""

from __future__ import annotations

from datetime import UTC, datetime

from comfyfleet.fleet.planner import Estimates, plan, shape
from comfyfleet.fleet.router import JobView, NodeView

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def node(node_id: str, *, in_flight: int = 0, capacity: int = 2) -> NodeView:
    return NodeView(id=node_id, url="http://x", capacity=capacity, capabilities=["delay"],
                    in_flight=in_flight,
                    healthy=True)  # fmt: skip


def job(n: int) -> tuple[str, str, JobView]:
    return f"j{n}", "delay", JobView(id=f"j{n}", capability="delay")


def speeds(**seconds: float) -> Estimates:
    est = Estimates()
    est.learn([(n, "delay", s, T0) for n, s in seconds.items()])
    return est


def test_a_job_waits_for_a_busy_fast_node_rather_than_start_on_a_free_slow_one() -> None:
    views = [node("fast", in_flight=2), node("slow")]  # the fast one is full, the slow one idle
    bookings, left = plan([job(1), job(2), job(3)], views, speeds(fast=0.5, slow=4.0))
    assert left == []
    # j1 would finish on fast in 1.5 s (two ahead of it), on slow in 4 s: held for fast; so is
    # j2 (2.0 s); j3 (2.5 s on fast) too; nothing starts on the slow node
    assert [(b.node, b.placed) for b in bookings] == [("fast", False)] * 3


def test_a_slow_node_takes_what_it_finishes_first() -> None:
    views = [node("fast", in_flight=2), node("slow")]
    bookings, _ = plan([job(n) for n in range(8)], views, speeds(fast=1.0, slow=2.0))
    placed = [b.node for b in bookings if b.placed]
    held = [b.node for b in bookings if not b.placed]
    assert placed == ["slow", "slow"]  # the slow node's two slots: it finishes them in time
    assert sorted(held) == ["fast"] * 5 + ["slow"]  # the rest wait, mostly for the fast node


def test_a_started_job_counts_for_what_is_left_of_it() -> None:
    from datetime import timedelta

    views = [node("fast", in_flight=2), node("slow", in_flight=1)]
    est = speeds(fast=1.0, slow=4.0)
    now = T0 + timedelta(seconds=10)
    # fast: one job 0.1 s into its 1 s and one queued behind it (1.9 s of work ahead); slow:
    # one job 3.9 s into its 4 s (0.1 s ahead)
    work = {"fast": [("delay", now - timedelta(seconds=0.1)), ("delay", None)],
            "slow": [("delay", now - timedelta(seconds=3.9))]}  # fmt: skip
    bookings, _ = plan([job(1)], views, est, work=work, now=now)
    assert [(b.node, b.placed) for b in bookings] == [("fast", False)]  # 2.9 s vs 4.1 s
    # a slow node whose job is almost done can be the earlier finish
    work["fast"] = [("delay", None), ("delay", None)]
    est = speeds(fast=2.0, slow=4.0)
    bookings, _ = plan([job(1)], views, est, work=work, now=now)
    assert [(b.node, b.placed) for b in bookings] == [("slow", True)]  # 4.1 s vs 6 s
    assert plan([job(1)], views, est)[0][0].node == "fast"  # whole jobs: 8 s vs 6 s


def test_equal_or_unknown_speeds_are_left_to_the_router() -> None:
    views = [node("a"), node("b")]
    assert plan([job(1)], views, speeds(a=1.0, b=1.05)) == ([], ["j1"])  # within 10 %
    assert plan([job(1)], views, speeds(a=1.0)) == ([], ["j1"])  # b never ran it


def test_estimates_follow_the_newest_attempts() -> None:
    est = speeds(a=1.0)
    est.learn([("a", "delay", 2.0, T0), ("a", "delay", 0.0, T0)])  # 0: cached, not learnt from
    assert est.seconds[("delay", "a")] == 1.3 and est.since == T0


def test_a_jobs_shape_is_its_workflow_and_numbers_but_the_seed() -> None:
    a = shape("delay", {"seconds": 2, "seed": 1, "colour": "red", "fast": True})
    assert a == shape("delay", {"seconds": 2.0, "seed": 99}) == "delay|seconds=2"
    assert shape("delay", {"seconds": 4}) != a  # a longer job is another shape
