"""The fleet monitor against fake nodes: circuit breaker, quarantine and release."""

from __future__ import annotations

from comfyfleet.fleet.monitor import Monitor
from tests.unit.fleet.fakes import HEALTH, Clock, FakeNode, monitor, probes


async def flap(mon: Monitor, node: FakeNode, clock: Clock) -> None:
    """One flap: down until the circuit opens, back up through the half-open probe."""
    health = mon.nodes["gpu-1"]
    node.up = False
    while health.state != "open":
        await probes(mon, clock, 1)
    node.up = True
    clock.now = health.opened_at + HEALTH.open_cooldown_s
    await mon.probe(health)


async def test_a_node_is_healthy_only_after_it_answered_a_probe() -> None:
    node, clock = FakeNode(), Clock()
    mon = monitor(node, clock)
    assert not mon.nodes["gpu-1"].healthy  # never probed: no attempts yet
    node.running, node.pending = 1, 2
    node.ours = [f"{'a' * 32}-1", f"{'b' * 32}-2"]  # attempts: counted as in flight, not here
    await probes(mon, clock, 1)
    health = mon.nodes["gpu-1"]
    assert health.healthy and health.state == "closed"
    assert health.queue_depth == 3  # the foreign prompts
    assert health.models == {"checkpoints": frozenset({"tiny-sd15.ckpt"})}
    assert health.url == "http://gpu-1:8188"


async def test_k_failures_open_the_circuit_and_a_half_open_probe_closes_it() -> None:
    node, clock = FakeNode(), Clock()
    mon = monitor(node, clock)
    await probes(mon, clock, 1)
    node.up = False
    await probes(mon, clock, 2)
    health = mon.nodes["gpu-1"]
    assert health.state == "closed" and health.failures == 2  # K = 3: not yet
    await probes(mon, clock, 1)
    assert health.state == "open" and not health.healthy
    assert "ConnectError" in (health.last_error or "")
    node.up = True
    await probes(mon, clock, 5)  # within the cool-down the node is not even asked
    assert health.state == "open"
    clock.now = health.opened_at + HEALTH.open_cooldown_s
    await mon.probe(health)  # the trial probe: half-open, then closed on success
    assert health.state == "closed" and health.healthy and health.last_error is None


async def test_a_failed_trial_probe_opens_the_circuit_again_without_counting_a_new_fault() -> None:
    node, clock = FakeNode(), Clock()
    mon = monitor(node, clock)
    await probes(mon, clock, 1)
    node.up = False
    await probes(mon, clock, 3)
    health = mon.nodes["gpu-1"]
    first_open = health.opened_at
    clock.now = first_open + HEALTH.open_cooldown_s
    await mon.probe(health)
    assert health.state == "open" and health.opened_at > first_open
    assert len(health.openings) == 1  # a node that stays down is one fault, not one per trial
    assert not health.quarantined


async def test_a_flapping_node_is_quarantined_and_an_admin_releases_it() -> None:
    node, clock = FakeNode(), Clock()
    mon = monitor(node, clock)
    await probes(mon, clock, 1)
    health = mon.nodes["gpu-1"]
    for _ in range(2):
        await flap(mon, node, clock)
    assert health.healthy  # N = 2 faults: not more than N yet
    await flap(mon, node, clock)
    assert health.quarantined and not health.healthy
    assert health.state == "closed"  # it answers, but stays out of rotation
    await probes(mon, clock, 10)
    assert health.quarantined
    mon.release("gpu-1")
    assert health.healthy and health.fault_times(clock.now) == []
    await flap(mon, node, clock)
    assert health.healthy  # the faults before the release are forgiven


async def test_attempt_faults_from_the_store_count_and_an_older_release_does_not_free_it() -> None:
    node, clock = FakeNode(), Clock()
    mon = monitor(node, clock)
    await probes(mon, clock, 1)
    health = mon.nodes["gpu-1"]
    hour_ago = clock.now - 4000
    mon.record_attempt_faults("gpu-1", [hour_ago, clock.now - 30, clock.now - 20])
    assert health.healthy  # the first one is older than an hour: 2 faults
    mon.record_attempt_faults("gpu-1", [clock.now - 30, clock.now - 20, clock.now - 10])
    assert health.quarantined
    mon.record_attempt_faults("gpu-1", [clock.now - 10], released_at=clock.now - 100)
    assert health.quarantined  # the admin released it before it was quarantined
    mon.record_attempt_faults("gpu-1", [clock.now - 10], released_at=clock.now)
    assert health.healthy


async def test_a_clean_probe_window_releases_a_quarantined_node() -> None:
    node, clock = FakeNode(), Clock()
    mon = monitor(node, clock, clean_window_s=60)
    await probes(mon, clock, 1)
    health = mon.nodes["gpu-1"]
    for _ in range(3):
        await flap(mon, node, clock)
    assert health.quarantined
    await probes(mon, clock, 30, step=1.0)
    assert health.quarantined  # 30 s of clean probes: not enough
    node.up = False
    await probes(mon, clock, 1)  # one failure restarts the window
    node.up = True
    await probes(mon, clock, 50, step=1.0)
    assert health.quarantined
    await probes(mon, clock, 15, step=1.0)
    assert health.healthy and health.fault_times(clock.now) == []
