"""/metrics: the node gauges the fleet monitor publishes."""

from __future__ import annotations

from comfyfleet.api import metrics
from tests.unit.api.test_admin import samples


def test_node_metrics_published_by_the_monitor_are_exposed() -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    registry = CollectorRegistry()
    registry.register(metrics.NodesCollector())
    metrics.set_node_metrics(
        [
            metrics.NodeMetrics(node="gpu-1", up=True, in_flight=2, queue_depth=3, capacity=2),
            metrics.NodeMetrics(node="gpu-2", up=False, circuit="open"),
        ]
    )
    got = samples(generate_latest(registry).decode())
    assert got[("comfyfleet_node_up", (("node", "gpu-1"),))] == 1
    assert got[("comfyfleet_node_in_flight", (("node", "gpu-1"),))] == 2
    assert got[("comfyfleet_node_queue_depth", (("node", "gpu-1"),))] == 3
    assert got[("comfyfleet_node_circuit_state", (("node", "gpu-2"), ("state", "open")))] == 1
    assert got[("comfyfleet_node_circuit_state", (("node", "gpu-2"), ("state", "closed")))] == 0
    metrics.set_node_metrics([])


async def test_a_handler_that_blocks_the_event_loop_shows_as_loop_lag() -> None:
    import asyncio
    import time

    from prometheus_client import CollectorRegistry, generate_latest

    lag = metrics.LoopLag(interval_s=0.01)
    registry = CollectorRegistry()
    registry.register(lag)
    lag.start()
    await asyncio.sleep(0.1)  # a free loop: wakes on time
    free = samples(generate_latest(registry).decode())
    assert free[("comfyfleet_event_loop_lag_seconds_count", ())] >= 3
    assert free[("comfyfleet_event_loop_lag_max_seconds", ())] < 0.1
    assert free[("comfyfleet_event_loop_held_max_seconds", ())] < 0.1
    time.sleep(0.3)  # noqa: ASYNC251 (the point: a blocking call on the loop)
    await asyncio.sleep(0.05)
    await lag.stop()
    got = samples(generate_latest(registry).decode())
    slow = (
        got[("comfyfleet_event_loop_lag_seconds_count", ())]
        - got[("comfyfleet_event_loop_lag_seconds_bucket", (("le", "0.1"),))]
    )
    assert slow == 1
    assert 0.25 <= got[("comfyfleet_event_loop_lag_max_seconds", ())] < 1.0


async def test_the_gateway_measures_its_own_loop_and_shows_it_on_metrics(
    api_client: object,
) -> None:
    response = await api_client.get("/metrics")  # type: ignore[attr-defined]
    assert response.status_code == 200
    assert "comfyfleet_event_loop_lag_seconds_bucket" in response.text
    assert "comfyfleet_event_loop_lag_max_seconds" in response.text
