"""`comfyfleet up` from the outside, as a user runs it: the whole embedded fleet on free ports with
its own runtime folder; Gradio in a real browser submits a job that completes; a killed worker
is restarted and reported; `comfyfleet down` leaves no process of the run behind."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
SHOTS = REPO / "test-output" / "embedded-up"
CHROMIUM = next(
    (p for p in ("/usr/lib/chromium/chromium", "/usr/bin/chromium") if Path(p).exists()), None
)
START_TIMEOUT_S = 420


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def processes_of(marker: str) -> list[int]:
    """Live (not zombie) processes whose environment holds `marker`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if marker.encode() not in (entry / "environ").read_bytes():
                continue
            state = (entry / "stat").read_text().rpartition(")")[2].split()[0]
        except OSError:
            continue
        if state != "Z":
            found.append(int(entry.name))
    return found


def wait_for(what: str, predicate: Any, timeout: float, up: subprocess.Popen[bytes]) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        assert up.poll() is None, f"comfyfleet up exited ({up.returncode}) while waiting for {what}"
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


@pytest.fixture
def fleet_dir(tmp_path: Path) -> Iterator[dict[str, Any]]:
    var = tmp_path / "var"
    ports = {"node": free_port(), "prefect": free_port(), "gateway": free_port()}
    config = tmp_path / "comfyfleet.yaml"
    config.write_text(yaml.safe_dump({
        "nodes": [{"id": "local-1", "url": f"http://127.0.0.1:{ports['node']}", "capacity": 2}],
        "defaults": {"sd15-basic": {"width": 64, "height": 64, "steps": 4}},
        "models": {"sd15": "tiny-sd15.ckpt", "sdxl": "tiny-sdxl.ckpt", "svd": "tiny-svd.ckpt"},
        "prefect": {"api_url": f"http://127.0.0.1:{ports['prefect']}/api"},
        "gateway": {"port": ports["gateway"]},
        "database": {"url": f"sqlite:///{var / 'comfyfleet.db'}"},
        "store": {"outputs_dir": str(var / "outputs"), "inputs_dir": str(var / "inputs")},
        "logging": {"dir": str(var / "logs")},
        "embedded": {"var_dir": str(var), "smoke_job": False, "stop_grace_s": 5},
    }))  # fmt: skip
    env = {
        k: v for k, v in os.environ.items()
        if not k.startswith(("PREFECT_", "COMFYFLEET_", "_COMFYFLEET_"))
    }  # fmt: skip
    env["COMFYFLEET_CONFIG"] = str(config)
    env["GRADIO_TEMP_DIR"] = str(tmp_path / "gradio")
    yield {"var": var, "config": config, "env": env, "ports": ports, "tmp": tmp_path}
    for pid in processes_of(f"COMFYFLEET_CONFIG={config}"):  # a failed test leaves nothing
        os.kill(pid, signal.SIGKILL)


def test_up_serves_gradio_restarts_a_dead_worker_and_down_leaves_nothing(
    fleet_dir: dict[str, Any],
) -> None:
    if CHROMIUM is None:
        pytest.fail("Chromium is missing: `make browser`", pytrace=False)
    var, env, tmp = fleet_dir["var"], fleet_dir["env"], fleet_dir["tmp"]
    marker = f"COMFYFLEET_CONFIG={fleet_dir['config']}"
    out_path = tmp / "up.out"
    with out_path.open("wb") as out:
        up = subprocess.Popen(
            [sys.executable, "-m", "comfyfleet", "up"], cwd=REPO, env=env,
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        banner = wait_for(
            "the banner",
            lambda: "ComfyFleet is up" in out_path.read_text() and out_path.read_text(),
            START_TIMEOUT_S, up,
        )  # fmt: skip
        password = re.search(r"login\s+admin / (\S+)", banner).group(1)
        web = f"http://127.0.0.1:{fleet_dir['ports']['gateway']}"
        for url in (f"{web}/", f"{web}/docs", f"{web}/metrics",
                    f"http://127.0.0.1:{fleet_dir['ports']['prefect']}"):  # fmt: skip
            assert url in banner
        # prefect.yaml was applied: the example schedule is there, off
        inspect = subprocess.run(
            [sys.executable, "-m", "prefect", "deployment", "inspect", "batch/nightly-example"],
            cwd=REPO, capture_output=True, text=True, timeout=120, check=False,
            env={**env, "PREFECT_API_URL": f"http://127.0.0.1:{fleet_dir['ports']['prefect']}/api",
                 "PREFECT_API_AUTH_STRING": (var / "prefect-auth-string").read_text().strip()},
        )  # fmt: skip
        assert inspect.returncode == 0, inspect.stdout + inspect.stderr
        assert "0 2 * * *" in inspect.stdout and "'active': False" in inspect.stdout

        generate_in_browser(web, password)

        state_path = var / "run" / "components.json"
        state = json.loads(state_path.read_text())["components"]
        assert set(state) >= {"prefect-server", "comfyui-local-1", "worker", "fleet-service",
                              "web"}  # fmt: skip
        tracked = {c["pid"] for c in state.values()} | {up.pid}
        old = state["worker"]["pid"]
        os.kill(old, signal.SIGKILL)
        new = wait_for(
            "the worker's restart",
            lambda: (w := json.loads(state_path.read_text())["components"]["worker"])["pid"] != old
            and w["running"] and w["pid"],
            30, up,
        )  # fmt: skip
        tracked |= {new}
        combined = (var / "logs" / "fleet.log").read_text()
        assert f"worker (pid {old}) exited: killed by SIGKILL; restarting in 1 s" in combined
        assert f"worker restarted (pid {new}, restart 1)" in combined
        assert "[web] " in combined and "[comfyui-local-1] " in combined
        for name in ("prefect-server", "comfyui-local-1", "worker", "fleet-service", "web"):
            assert (var / "logs" / f"{name}.log").stat().st_size > 0, name
        tracked |= set(processes_of(marker))

        down = subprocess.run(
            [sys.executable, "-m", "comfyfleet", "down"], cwd=REPO, env=env,
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert down.returncode == 0, down.stdout + down.stderr
        assert "stopped" in down.stdout
        assert up.wait(timeout=30) == 0
        left = processes_of(marker)
        assert left == [], f"processes left behind: {left}"
        alive = [
            p
            for p in tracked
            if Path(f"/proc/{p}").exists()
            and "Z" not in Path(f"/proc/{p}/stat").read_text().rpartition(")")[2][:3]
        ]
        assert alive == [], f"tracked processes still alive: {alive}"
        assert not (var / "run" / "up.pid").exists()
    finally:
        if up.poll() is None:
            up.send_signal(signal.SIGTERM)
            try:
                up.wait(timeout=60)
            except subprocess.TimeoutExpired:
                up.kill()
        print(out_path.read_text()[-4000:])


def generate_in_browser(web: str, password: str) -> None:
    from playwright.sync_api import sync_playwright

    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=["--disable-gpu", "--disable-quic"]
        )
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            page.goto(web + "/", wait_until="networkidle")
            page.get_by_label("username").fill("admin")
            page.get_by_label("password").fill(password)
            page.get_by_role("button", name="Login").click()
            page.get_by_text("Logged in as admin").wait_for(timeout=60_000)
            page.get_by_role("tab", name="Text to image").click()
            panel = page.get_by_role("tabpanel")
            panel.get_by_label("Prompt").first.fill("a lighthouse at dawn")
            panel.get_by_role("button", name="Generate").first.click()
            image = panel.locator("img[src*='file=']").first
            image.wait_for(state="visible", timeout=240_000)
            page.screenshot(path=str(SHOTS / "generated.png"), full_page=True)
        finally:
            browser.close()
