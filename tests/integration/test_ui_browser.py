"""The Gradio UI in a real browser (Debian's Chromium driven by Python Playwright, no browser
download): log in, generate an image on the CPU fleet, watch ComfyUI's steps in the progress bar,
see the image; an admin sees the nodes. Screenshots go to test-output/ui/."""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.gateway import PASSWORD, ServerThread

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
SHOTS = REPO / "test-output" / "ui"
CHROMIUM = next(
    (p for p in ("/usr/lib/chromium/chromium", "/usr/bin/chromium") if Path(p).exists()), None
)
STEP_RE = re.compile(r"(\d+)\s*/\s*(\d+)")


@pytest.fixture(scope="module")
def web(fleet_service: Any, fleet_db: Any, principals: Any, tmp_path_factory: Any) -> Iterator[str]:
    """The web process (gateway + UI) on the session's fleet, on a free port."""
    os.environ.setdefault("GRADIO_TEMP_DIR", str(tmp_path_factory.mktemp("gradio")))
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    from comfyfleet.settings import get_settings
    from gradio_app import build_web_app

    app = build_web_app(get_settings(), db=fleet_db)
    server = ServerThread(app)
    server.start()
    yield server.url
    server.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if CHROMIUM is None:
        pytest.fail(
            "Chromium is missing: `make browser` (apt-get install -y chromium)", pytrace=False
        )
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=["--disable-gpu", "--disable-quic"]
        )
        yield browser
        browser.close()


def login(page: Any, url: str, username: str) -> None:
    page.goto(url + "/", wait_until="networkidle")
    page.get_by_label("username").fill(username)
    page.get_by_label("password").fill(PASSWORD)
    page.get_by_role("button", name="Login").click()
    page.get_by_text(f"Logged in as {username}").wait_for(timeout=30_000)


def test_login_generate_watch_steps_and_see_the_image(web: str, browser: Any) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    (SHOTS / "progress.png").unlink(missing_ok=True)
    page = browser.new_page(viewport={"width": 1280, "height": 1000})
    started = time.monotonic()
    login(page, web, "alice")
    page.get_by_role("tab", name="Text to image").click()
    panel = page.get_by_role("tabpanel")
    panel.get_by_label("Prompt").first.fill("a red fox in the snow, oil painting")
    panel.get_by_label("Steps").first.fill("12")
    panel.get_by_role("button", name="Generate").first.click()
    seen: list[str] = []
    deadline = time.monotonic() + 180
    image = panel.locator("img[src*='file=']").first
    while time.monotonic() < deadline:
        bars = page.locator("[role=progressbar]")
        if bars.count():
            text = bars.first.get_attribute("aria-valuetext") or ""
            if text and (not seen or seen[-1] != text):
                seen.append(text)
                if STEP_RE.search(text) and not (SHOTS / "progress.png").exists():
                    page.screenshot(path=str(SHOTS / "progress.png"))
        if image.count() and image.is_visible():
            break
        time.sleep(0.03)
    steps = {tuple(map(int, m.groups())) for s in seen if (m := STEP_RE.search(s))}
    page.screenshot(path=str(SHOTS / "generated.png"), full_page=True)
    print(f"[ui] progress texts seen: {seen}")
    print(f"[ui] login -> image in {time.monotonic() - started:.1f} s")
    assert image.is_visible(), f"no image; progress seen: {seen}"
    assert len({s for s in steps if s[1] == 12}) >= 2, seen
    assert page.get_by_text("node **").count() == 0  # markdown rendered, not raw
    assert page.get_by_text(re.compile(r"node gpu-\d")).count() >= 1


def test_admin_sees_the_nodes(web: str, browser: Any) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    login(page, web, "root")
    page.get_by_role("tab", name="Admin").click()
    table = page.locator("#admin-nodes")
    cell = table.get_by_text("gpu-1", exact=True).filter(visible=True).first
    cell.wait_for(timeout=30_000)
    page.screenshot(path=str(SHOTS / "admin-nodes.png"), full_page=True)
    for node in ("gpu-1", "gpu-2", "gpu-3"):
        assert table.get_by_text(node, exact=True).filter(visible=True).count() >= 1
    assert table.get_by_text("up", exact=True).filter(visible=True).count() >= 1


def test_the_admin_tab_is_hidden_from_users(web: str, browser: Any) -> None:
    page = browser.new_page()
    login(page, web, "bob")
    assert page.get_by_role("tab", name="Text to image").is_visible()
    assert page.get_by_role("tab", name="Admin").count() == 0
