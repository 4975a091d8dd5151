"""The Gradio UI in a real browser (Debian's Chromium driven by Python Playwright, no browser
download) against the web process in its own process: log in, generate an image on the CPU
fleet, watch ComfyUI's steps in the progress bar and the sampler's previews, see the image; an
admin sees the nodes and everyone's history. Screenshots go to test-output/ui/."""

from __future__ import annotations

import io
import re
import time
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.web import WebProcess, login

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
SHOTS = REPO / "test-output" / "ui"
STEP_RE = re.compile(r"(\d+)\s*/\s*(\d+)")
JOB_TEXT = re.compile(r"Job\s+([0-9a-f]{32})")


@pytest.fixture(scope="module")
def web(web_process: WebProcess) -> str:
    """The web process (gateway + UI, its own process) on the session's fleet."""
    return web_process.url


def test_login_generate_watch_steps_and_see_the_image(web: str, browser: Any) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    (SHOTS / "progress.png").unlink(missing_ok=True)
    page = browser.new_page(viewport={"width": 1280, "height": 1000})
    started = time.monotonic()
    login(page, web, "alice")
    page.get_by_role("tab", name="Text to image").click()
    panel = page.get_by_role("tabpanel")
    panel.get_by_label("Prompt").first.fill("a red fox in the snow, oil painting")
    # 150 steps (the most allowed) at 128 px: sampling lasts several seconds even on a quiet
    # machine (40 steps took one), so the throttled progress events (1/s) show several steps
    for label, value in (("Steps", "150"), ("Width", "128"), ("Height", "128")):
        panel.get_by_label(label).first.fill(value)
    panel.get_by_role("button", name="Generate").first.click()
    seen: list[str] = []
    deadline = time.monotonic() + 180
    image = panel.locator("img[src*='file='][src$='.png']").first  # the result, not a preview
    while time.monotonic() < deadline:
        # one look at the bars as they are now (a bar that goes away between a count and a
        # read would make the read wait for it)
        texts = page.eval_on_selector_all(
            "[role=progressbar]", "bars => bars.map(b => b.getAttribute('aria-valuetext'))"
        )
        if texts:
            text = texts[0] or ""
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
    assert len({s for s in steps if s[1] == 150}) >= 2, seen
    assert page.get_by_text("node **").count() == 0  # markdown rendered, not raw
    assert page.get_by_text(re.compile(r"node gpu-\d")).count() >= 1


def test_a_20_step_job_shows_distinct_previews_before_its_image(web: str, browser: Any) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page = browser.new_page(viewport={"width": 1280, "height": 1000})
    login(page, web, "bob")
    page.get_by_role("tab", name="Text to image").click()
    panel = page.get_by_role("tabpanel")
    panel.get_by_label("Prompt").first.fill("a lighthouse at dusk")
    for label, value in (("Steps", "20"), ("Width", "128"), ("Height", "128")):
        panel.get_by_label(label).first.fill(value)
    panel.get_by_role("button", name="Generate").first.click()
    previews: list[str] = []
    final = panel.locator("img[src*='file='][src$='.png']").first
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and not final.count():
        for src in page.eval_on_selector_all(
            # the preview files (preview-N.jpg). The selector and the function run as two
            # steps, and the UI reuses the <img> for the final image: a src read after the
            # switch is the PNG's, so the function checks the src it reads again
            "img[src*='preview-'][src$='.jpg']",
            "imgs => imgs.map(i => i.getAttribute('src'))"
            ".filter(s => s && s.includes('preview-') && s.endsWith('.jpg'))",
        ):
            if src not in previews:
                previews.append(src)
                if len(previews) == 2:
                    page.screenshot(path=str(SHOTS / "preview.png"))
        time.sleep(0.05)
    final.wait_for(timeout=5_000)
    fetched = {src: page.request.get(web + src if src.startswith("/") else src)
               for src in previews}  # fmt: skip
    contents = {r.body() for r in fetched.values()}
    print(f"[ui] {len(previews)} previews, {len(contents)} distinct, before the image")
    assert len(contents) >= 2, previews
    not_jpeg = [(src, r.status, r.headers.get("content-type"), len(r.body()), r.body()[:16])
                for src, r in fetched.items() if not r.body().startswith(b"\xff\xd8")]  # fmt: skip
    assert not not_jpeg, not_jpeg  # every preview is a JPEG
    from PIL import Image

    for data in contents:
        with Image.open(io.BytesIO(data)) as img:
            assert max(img.size) <= 256


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


def test_history_is_per_person_with_download_and_rerun_and_admins_see_everyone(
    web: str, browser: Any, fleet_db: Any, principals: dict[str, Any]
) -> None:
    from comfyfleet import jobs

    for who in ("alice", "bob"):  # one finished job each, whatever ran before
        job = jobs.submit(
            fleet_db,
            jobs.JobRequest(workflow="delay", params={"seconds": 0.2, "steps": 2}),
            principal=principals[who],
        )
        jobs.wait(fleet_db, job.id, timeout=120)
    page = browser.new_page(viewport={"width": 1280, "height": 1000})
    login(page, web, "alice")
    page.get_by_role("tab", name="My history").click()
    table = page.locator("#history-table")
    cells = "[role=gridcell][data-col='{}']"  # the visible grid (the <td>s only size it)
    table.locator(cells.format(2)).filter(has_text="delay").first.wait_for(timeout=30_000)
    assert set(table.locator(cells.format(1)).all_inner_texts()) == {"alice"}
    assert not page.get_by_label("Everyone's jobs (admins)").is_visible()
    table.locator(cells.format(3)).filter(has_text="completed").first.click()
    deadline = time.monotonic() + 30
    while not page.get_by_label("Selected job").input_value():
        assert time.monotonic() < deadline, "selecting a row picked no job"
        time.sleep(0.1)
    chosen = page.get_by_label("Selected job").input_value()
    download = page.locator("a[download]").first
    download.wait_for(timeout=30_000)
    href = download.get_attribute("href") or ""
    assert page.request.get(web + href if href.startswith("/") else href).ok
    page.get_by_role("button", name="Re-run with the same parameters").click()
    page.locator("#rerun-image img[src*='file='][src$='.png']").wait_for(timeout=120_000)
    rerun = JOB_TEXT.search(page.locator("#rerun-info").inner_text())
    assert rerun is not None and rerun.group(1) != chosen
    again, old = jobs.get(fleet_db, rerun.group(1)), jobs.get(fleet_db, chosen)
    assert again.status == "completed" and again.request == old.request
    page.screenshot(path=str(SHOTS / "history.png"), full_page=True)

    admin = browser.new_page(viewport={"width": 1280, "height": 1000})
    login(admin, web, "root")
    admin.get_by_role("tab", name="My history").click()
    admin.get_by_label("Everyone's jobs (admins)").check()
    table = admin.locator("#history-table")
    deadline = time.monotonic() + 30
    while not {"alice", "bob"} <= set(table.locator(cells.format(1)).all_inner_texts()):
        assert time.monotonic() < deadline, table.inner_text()
        time.sleep(0.2)
