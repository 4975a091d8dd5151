"""Many people in the web UI at once, in real browsers (Chromium + Playwright), against the web
process in its own process and real ComfyUI nodes: two and five people generating at the same
moment each get their job at once and the jobs run side by side on the nodes; the web process's
event loop stays responsive meanwhile; Cancel interrupts the prompt on its node; a person
waiting on a full fleet sees their place in the backlog go down.

ComfyUI runs one prompt at a time, so five overlapping jobs need five nodes: the session starts
five (`COMFYFLEET_TEST_NODES`, tests/fixtures/prefect.py)."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from comfyfleet import jobs
from comfyfleet.comfyui import ComfyUIClient, ExecutionInterrupted, ExecutionStart
from comfyfleet.comfyui.messages import ExecutionSuccess
from comfyfleet.fleet.state import node_states
from tests.fixtures.web import WebProcess, login

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
SHOTS = REPO / "test-output" / "ui"
PEOPLE = ["alice", "bob", "carol", "dave", "erin"]
JOB_RE = re.compile(r"Job\s+([0-9a-f]{32})")
POSITION_RE = re.compile(r"position (\d+)")
LAG_BUDGET_S = 0.1
SLOW_SAMPLES_ALLOWED = 0.05
"""Share of loop samples allowed over the budget: the OS not scheduling the process on a 2-core
machine that also runs five browsers and the fleet. Our own handlers may hold it in none."""
CREATED_WITHIN_S = 1.0
"""Click → the job's row in the store, for every person (the budget the UI is held to)."""
JOB_S = 30.0
"""Long enough that five jobs overlap whatever the dispatch latency of a loaded CPU box."""
CLICK_CLOCK = """() => { window.__clicks = [];
    document.addEventListener('click', () => window.__clicks.push(Date.now()), true); }"""


def run_async(coro: Any) -> Any:
    """Run a coroutine to its end in a thread of its own (Playwright's sync API holds an event
    loop in this one)."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coro).result()


@pytest.fixture(scope="module")
def crowd_nodes(comfy_fleet: list[Any], fleet_service: Any) -> list[Any]:
    """The session's nodes, at least five, all in rotation."""
    if len(comfy_fleet) < 5:
        pytest.fail(
            f"five people at once need five nodes (ComfyUI runs one prompt at a time); the "
            f"session has {len(comfy_fleet)}: set COMFYFLEET_TEST_NODES=5 or more",
            pytrace=False,
        )
    wanted = {n.id for n in comfy_fleet}
    deadline = time.monotonic() + 120
    while {n.id for n in node_states() if n.healthy} & wanted != wanted:
        assert time.monotonic() < deadline, [(n.id, n.state) for n in node_states()]
        time.sleep(0.5)
    return list(comfy_fleet)


@pytest.fixture(scope="module")
def crowd(people: Any, crowd_nodes: list[Any]) -> list[Any]:
    return people(PEOPLE)


def open_workflow_tab(page: Any, params: dict[str, Any], workflow: str = "delay") -> Any:
    """The Workflow tab with `workflow` picked and `params` filled in; returns its panel."""
    page.get_by_role("tab", name="Workflow").click()
    panel = page.get_by_role("tabpanel")
    panel.get_by_label("Workflow").click()
    page.get_by_role("option", name=workflow, exact=True).click()
    panel.get_by_label("Parameters (JSON)").fill(json.dumps(params))
    return panel


def job_info(panel: Any) -> str:
    texts = panel.locator(".job-info").all_inner_texts()
    return " ".join(texts)


def wait_for_job_id(panel: Any, timeout: float = 30.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if found := JOB_RE.search(job_info(panel)):
            return found.group(1)
        time.sleep(0.05)
    raise AssertionError(f"no job id shown; the result area says {job_info(panel)!r}")


def utc(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def wait_ended(db: Any, ids: list[str], timeout: float) -> list[Any]:
    deadline = time.monotonic() + timeout
    while True:
        found = [jobs.get(db, job_id) for job_id in ids]
        if all(j.is_terminal for j in found):
            return found
        assert time.monotonic() < deadline, [(j.id, j.status, j.node) for j in found]
        time.sleep(0.5)


def execution_window(job: Any, nodes: list[Any]) -> tuple[float, float]:
    """When the job's prompt started and ended executing on its node (the node's history)."""
    attempt = job.attempts[-1]
    url = next(n.url for n in nodes if n.id == attempt.node)

    async def read() -> Any:
        async with ComfyUIClient(url) as client:
            return await client.history(attempt.id)

    entry = run_async(read())
    assert entry is not None, f"{attempt.id} unknown to {attempt.node}"
    start = next(m.timestamp for m in entry.messages if isinstance(m, ExecutionStart))
    end = next(m.timestamp for m in entry.messages if isinstance(m, ExecutionSuccess))
    return start / 1000, end / 1000


def in_our_code(report: str) -> bool:
    """Whether a logged loop stall was inside our code: a frame of ours in the callback the loop
    was running (after its dispatch in asyncio/events.py), other than the gateway's middleware
    that every request passes through on its way in."""
    callback = report.rpartition('events.py", line')[2] if "events.py" in report else report
    frames = [line for line in callback.splitlines() if line.strip().startswith("File ")]
    return any(
        ("/gradio_app/" in f or "/comfyfleet/" in f) and not f.endswith("in __call__")
        for f in frames
    )


def loop_samples(web: WebProcess) -> dict[str, tuple[float, float]]:
    """The web process's loop measures so far: {lag|held: (samples, samples over budget)}."""
    got = web.metrics()
    out = {}
    for name in ("lag", "held"):
        count = got[f"comfyfleet_event_loop_{name}_seconds_count"]
        within = got[f'comfyfleet_event_loop_{name}_seconds_bucket{{le="{LAG_BUDGET_S}"}}']
        out[name] = (count, count - within)
    return out


@dataclass
class Together:
    """What happened when people clicked at once."""

    delays: list[float]
    """Seconds from each click (in the browser) to its job's row in the store."""
    done: list[Any]
    windows: list[tuple[float, float]]
    """Each job's execution on its node (ComfyUI's execution_start → execution_success)."""

    def in_time(self) -> bool:
        return all(d <= CREATED_WITHIN_S for d in self.delays)

    def check(self) -> None:
        assert self.in_time(), self.delays
        assert [j.status for j in self.done] == ["completed"] * len(self.done), [
            (j.status, j.error) for j in self.done
        ]
        starts, ends = [w[0] for w in self.windows], [w[1] for w in self.windows]
        assert max(starts) < min(ends), self.windows  # each starts before any other ends


def generate_together(
    web: WebProcess, browser: Any, db: Any, nodes: list[Any], names: list[str], seconds: float,
    *, on_ready: Callable[[], Any] = lambda: None,
) -> Together:  # fmt: skip
    """Each person, in a browser of their own, logs in, picks the delay workflow, then (after
    `on_ready()`) all click Run one right after the other; waits for the jobs and images."""
    contexts = [browser.new_context(viewport={"width": 1280, "height": 900}) for _ in names]
    try:
        pages = [context.new_page() for context in contexts]
        panels = []
        for i, (page, name) in enumerate(zip(pages, names, strict=True)):
            login(page, web.url, name)
            params = {"seconds": seconds, "steps": 10, "seed": int(time.time()) * 10 + i}
            panels.append(open_workflow_tab(page, params))
        buttons = [panel.get_by_role("button", name="Run", exact=True) for panel in panels]
        for page in pages:  # the moment each browser sees the click (same machine, same clock)
            page.evaluate(CLICK_CLOCK)
        on_ready()
        for button in buttons:
            button.click()
        ids = [wait_for_job_id(panel) for panel in panels]
        clicks = [page.evaluate("() => window.__clicks.at(-1)") / 1000 for page in pages]
        created = [utc(jobs.get(db, job_id).created_at).timestamp() for job_id in ids]
        delays = [round(c - t, 3) for c, t in zip(created, clicks, strict=True)]
        print(f"[crowd] {len(names)} people: click -> job created (s): {delays}; clicks over "
              f"{max(clicks) - min(clicks):.2f} s")  # fmt: skip
        done = wait_ended(db, ids, timeout=120 + 3 * seconds)
        windows = [execution_window(job, nodes) for job in done if job.status == "completed"]
        starts, ends = [w[0] for w in windows], [w[1] for w in windows]
        if windows:
            spread, first_end = max(starts) - min(starts), min(ends) - min(starts)
            print(f"[crowd] nodes {[j.node for j in done]}; last start {spread:.2f} s after "
                  f"the first; first end {first_end:.2f} s after it")  # fmt: skip
        for panel in panels:
            panel.locator("img[src*='file='][src$='.png']").first.wait_for(timeout=30_000)
        pages[-1].screenshot(path=str(SHOTS / f"crowd-{len(names)}.png"), full_page=True)
        return Together(delays=delays, done=done, windows=windows)
    finally:
        for context in contexts:
            context.close()


def clicked_together(
    web: WebProcess, browser: Any, db: Any, nodes: list[Any], names: list[str], seconds: float,
    *, on_ready: Callable[[], Any] = lambda: None,
) -> Together:  # fmt: skip
    """`generate_together`, once more if a job was created later than its budget after its
    click: one scheduling stall of this 2-core machine (five browsers, five nodes and the control
    plane) must not fail the budget, while handlers that wait on each other miss it every time."""
    together = generate_together(web, browser, db, nodes, names, seconds, on_ready=on_ready)
    if not together.in_time():
        print(f"[crowd] a job was created over {CREATED_WITHIN_S} s after its click "
              f"({together.delays}); once more")  # fmt: skip
        together = generate_together(web, browser, db, nodes, names, seconds, on_ready=on_ready)
    return together


def test_two_people_generating_at_once_both_start_at_once(
    web_process: WebProcess, browser: Any, fleet_db: Any, crowd_nodes: list[Any], crowd: Any
) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    clicked_together(web_process, browser, fleet_db, crowd_nodes, PEOPLE[:2], seconds=12).check()


def test_five_people_at_once_run_side_by_side_and_the_web_loop_stays_responsive(
    web_process: WebProcess, browser: Any, fleet_db: Any, crowd_nodes: list[Any], crowd: Any
) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    before: dict[str, tuple[float, float]] = {}
    log_at: list[int] = []

    def ready() -> None:
        before.update(loop_samples(web_process))
        log_at.append(web_process.log_path.stat().st_size)

    together = clicked_together(
        web_process, browser, fleet_db, crowd_nodes, PEOPLE, seconds=JOB_S, on_ready=ready
    )
    after = loop_samples(web_process)
    seen = {k: (after[k][0] - before[k][0], after[k][1] - before[k][1]) for k in after}
    with web_process.log_path.open("rb") as log:
        log.seek(log_at[0])
        held = [r for r in log.read().decode(errors="replace").split("\n20") if "loop held" in r]
    ours = [r for r in held if in_our_code(r)]
    print(f"[crowd] web event loop, samples (over {LAG_BUDGET_S * 1000:.0f} ms): "
          f"lag {seen['lag'][0]:.0f} ({seen['lag'][1]:.0f}), "
          f"held {seen['held'][0]:.0f} ({seen['held'][1]:.0f}); held in our code: "
          f"{len(ours)}")  # fmt: skip
    assert seen["lag"][0] >= 50 and seen["held"][0] >= 50  # measured all along
    assert not ours, "\n".join(ours)  # no handler of ours held the loop
    # What remains on a 2-core box running five browsers, five nodes and the control plane:
    # the OS not scheduling the process, and Gradio's own per-session work (logged stacks).
    for name in ("lag", "held"):
        assert seen[name][1] <= SLOW_SAMPLES_ALLOWED * seen[name][0], (name, seen, held)
    together.check()


def test_cancel_in_the_ui_ends_the_job_and_interrupts_its_prompt_on_the_node(
    web_process: WebProcess, browser: Any, fleet_db: Any, crowd_nodes: list[Any], crowd: Any
) -> None:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    login(page, web_process.url, "carol")
    panel = open_workflow_tab(page, {"seconds": 120, "steps": 120})
    panel.get_by_role("button", name="Run", exact=True).click()
    job_id = wait_for_job_id(panel)
    deadline = time.monotonic() + 60
    while (job := jobs.get(fleet_db, job_id)).status != "running":
        assert time.monotonic() < deadline and not job.is_terminal, job.status
        time.sleep(0.2)
    attempt = job.attempts[-1]
    url = next(n.url for n in crowd_nodes if n.id == attempt.node)

    async def on_node() -> tuple[Any, Any]:
        async with ComfyUIClient(url) as client:
            return await client.queue(), await client.history(attempt.id)

    deadline = time.monotonic() + 30
    while attempt.id not in run_async(on_node())[0].running:
        assert time.monotonic() < deadline, "the prompt never ran on its node"
        time.sleep(0.2)
    clicked = time.monotonic()
    panel.get_by_role("button", name="Cancel", exact=True).click()
    (done,) = wait_ended(fleet_db, [job_id], timeout=60)
    print(f"[crowd] cancel -> job {done.status} in {time.monotonic() - clicked:.1f} s")
    assert done.status == "cancelled"
    deadline = time.monotonic() + 30
    while (entry := run_async(on_node())[1]) is None:
        assert time.monotonic() < deadline, "the node still runs the prompt"
        time.sleep(0.2)
    assert any(isinstance(m, ExecutionInterrupted) for m in entry.messages), entry.messages
    assert time.monotonic() - clicked < 60  # interrupted, not run to its end (120 s)
    page.get_by_text("cancelled").first.wait_for(timeout=30_000)
    context.close()


def test_a_person_waiting_on_a_full_fleet_sees_their_place_go_down(
    web_process: WebProcess,
    browser: Any,
    fleet_db: Any,
    crowd_nodes: list[Any],
    crowd: Any,
    principals: dict[str, Any],
) -> None:
    # The page is ready before the fleet fills, so the click comes while the fillers still wait.
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    login(page, web_process.url, "dave")
    panel = open_workflow_tab(page, {"seconds": 1, "steps": 2})
    slots = sum(n.capacity for n in node_states() if n.healthy)
    ahead = 3
    fillers = [
        jobs.submit(
            fleet_db,
            jobs.JobRequest(
                workflow="delay",
                params={"seconds": 10 + 0.7 * i, "steps": 4, "seed": 7000 + i},
                priority="high",
            ),
            principal=principals["root"],
        ).id
        for i in range(slots + ahead)
    ]
    deadline = time.monotonic() + 60
    while sum(jobs.get(fleet_db, j).status == "queued" for j in fillers) > ahead:
        assert time.monotonic() < deadline, "the fleet never filled up"
        time.sleep(0.2)
    panel.get_by_role("button", name="Run", exact=True).click()
    job_id = wait_for_job_id(panel)
    seen: list[int] = []
    texts: list[str] = []
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        text = job_info(panel)
        if not texts or texts[-1] != text:
            texts.append(text)
        if found := POSITION_RE.search(text):
            if not seen or seen[-1] != int(found.group(1)):
                seen.append(int(found.group(1)))
                if len(seen) == 1:
                    page.screenshot(path=str(SHOTS / "queued.png"), full_page=True)
        if jobs.get(fleet_db, job_id).status != "queued":
            break
        time.sleep(0.1)
    print(f"[crowd] positions seen: {seen}")
    assert seen and seen[0] >= 1, texts
    assert min(seen) < seen[0], texts
    assert seen == sorted(seen, reverse=True), texts
    assert any("0 of" in t and "slots free" in t for t in texts), texts
    wait_ended(fleet_db, [*fillers, job_id], timeout=240)
    context.close()
