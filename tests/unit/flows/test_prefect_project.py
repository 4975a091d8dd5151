"""prefect.yaml declares the control-plane deployments: a routed `<flow>/fleet` entry for each
generation flow the per-node deployments are made of, `batch/fleet`, and the inactive example
schedule — all in the control pool."""

from __future__ import annotations

import yaml

from comfyfleet.fleet.provision import CONTROL_POOL, FLEET
from deployments import BATCH_ENTRYPOINT, GENERATION_ENTRYPOINTS, PROJECT_FILE, flow_spec


def test_the_project_file_routes_every_generation_flow_and_the_batch_flow() -> None:
    project = yaml.safe_load(PROJECT_FILE.read_text())
    entries = {(d["entrypoint"], d["name"]): d for d in project["deployments"]}
    expected = {(e, FLEET) for e in (*GENERATION_ENTRYPOINTS, BATCH_ENTRYPOINT)}
    assert set(entries) == expected | {(BATCH_ENTRYPOINT, "nightly-example")}
    assert {d["work_pool"]["name"] for d in entries.values()} == {CONTROL_POOL}
    for entrypoint in (*GENERATION_ENTRYPOINTS, BATCH_ENTRYPOINT):
        flow_spec(entrypoint)  # each is a flow of this checkout


def test_the_example_schedule_is_nightly_in_utc_and_off() -> None:
    project = yaml.safe_load(PROJECT_FILE.read_text())
    [nightly] = [d for d in project["deployments"] if d["name"] == "nightly-example"]
    [schedule] = nightly["schedules"]
    assert schedule == {"cron": "0 2 * * *", "timezone": "UTC", "active": False}
    assert nightly["parameters"] == {"workflow": "sd15-basic", "file": "nightly-example.txt"}
    assert project["pull"] == [{"prefect.deployments.steps.set_working_directory": {
        "directory": "{{ $COMFYFLEET_HOME }}"}}]  # fmt: skip
