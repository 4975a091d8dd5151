"""Summaries of `py-spy record --format raw` profiles (collapsed stacks), for bench.cost.

    python -m bench.pyspy var/bench/cost-…/py-spy/run1-worker.txt [--top 25] [--rules worker]

Each line of a raw profile is `frame;frame;…;frame <samples>`, root first; a frame is
`function (file:line)` (py-spy puts `process <pid>:"<command>"` first when it follows
subprocesses). py-spy records only threads that are running, so the share of samples is the
share of the process's CPU. Printed: the functions with the most samples on top of the stack
(self) and anywhere in it (total), and, with a rule set, the samples by cause: a sample goes to
the first rule, in the set's order, that one of its frames matches.
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

Stack = tuple[tuple[str, ...], int]
_LINE = re.compile(r":\d+\)$")


def frame_key(frame: str) -> str:
    """`function (file)`: a frame without its line number."""
    return _LINE.sub(")", frame)


def parse(text: str) -> list[Stack]:
    """(frames root first, without line numbers; samples) per line of a raw profile."""
    out = []
    for line in text.splitlines():
        stack, _, count = line.rstrip().rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = [f for f in stack.split(";") if not f.startswith("process ")]
        out.append((tuple(frame_key(f) for f in frames), int(count)))
    return out


WAITING = re.compile(
    r"^(?:\w+Selector\.select \(selectors\.py\)|Condition\.wait \(threading\.py\)"
    r"|Event\.wait \(threading\.py\)|Queue\.get \(queue\.py\)"
    r"|Thread\._wait_for_tstate_lock \(threading\.py\)|_worker \(concurrent/futures/thread\.py\)"
    r"|_Counts\.loop \(sitecustomize\.py\)"
    r"|_send_heartbeats\.<locals>\.heartbeat_loop \(prefect/flow_engine\.py\))$"
)
"""Leaf frames of threads that wait (a poll, a lock, an empty queue, the bench probe's sleep):
py-spy counts a thread that the OS has woken but not yet run as active, and on a busy machine
those samples pile up here (Prefect's flow-run heartbeat thread, asleep in `time.sleep(1)`, a
C call with no frame of its own, was 57 % of a worker's samples). They are not CPU the process
spent (the kernel time of a very frequent poll, e.g. Gradio's 1 ms loop, is lost with them).
aiosqlite's worker thread is not in the list: its top frame is the same whether it waits or
runs SQLite (C code)."""


def busy(stacks: Iterable[Stack]) -> list[Stack]:
    """The samples whose top frame is not a wait."""
    return [(f, n) for f, n in stacks if f and not WAITING.match(f[-1])]


def total(stacks: Iterable[Stack]) -> int:
    return sum(n for _, n in stacks)


def top_self(stacks: Iterable[Stack], n: int = 20) -> list[tuple[str, int]]:
    """Functions by samples with the function on top of the stack."""
    counts: Counter[str] = Counter()
    for frames, samples in stacks:
        if frames:
            counts[frames[-1]] += samples
    return counts.most_common(n)


def top_total(stacks: Iterable[Stack], n: int = 20) -> list[tuple[str, int]]:
    """Functions by samples with the function anywhere on the stack (once per stack)."""
    counts: Counter[str] = Counter()
    for frames, samples in stacks:
        for frame in set(frames):
            counts[frame] += samples
    return counts.most_common(n)


def by_cause(stacks: Iterable[Stack], rules: Sequence[tuple[str, str]]) -> Counter[str]:
    """Samples per cause. A rule is (label, regex over a frame): the first rule, in order,
    that matches a frame of the stack, scanning from the root, names the sample's cause; the
    label may use the regex's groups (`api {0}`). `other` when no rule matches."""
    compiled = [(label, re.compile(pattern)) for label, pattern in rules]
    counts: Counter[str] = Counter()
    for frames, samples in stacks:
        counts[_cause(frames, compiled)] += samples
    return counts


def _cause(frames: Sequence[str], rules: Sequence[tuple[str, re.Pattern[str]]]) -> str:
    for label, rx in rules:
        for frame in frames:
            m = rx.search(frame)
            if m:
                return label.format(*m.groups())
    return "other"


# Causes per process, in order: the first rule one of whose frames matches names the sample.
# Frames read `function (file)`. Work that runs in a thread or a greenlet (SQLAlchemy's async
# engine, `asyncio.to_thread`) shows only its own stack, not the request or loop behind it:
# such samples land in the mechanism rules near the end.
RULES: dict[str, list[tuple[str, str]]] = {
    "prefect-server": [
        ("task-run recorder (task-run events -> rows)", r"prefect/server/services/task_run_rec"),
        ("event persister (events -> events table)", r"prefect/server/events/services/event_pe"),
        ("automations / triggers", r"prefect/server/events/(?:triggers|actions|services/tr)"),
        ("event stream to subscribers (events/out)", r"prefect/server/events/stream\.py"),
        ("events in (websocket events/in)", r"^stream_events_in "),
        ("background services (docket)", r"\(docket/"),
        ("API {0}", r"^(\w+) \(prefect/server/api/(?!server\.py)\w+\.py\)"),
        ("SQLAlchemy, request not visible (greenlet)", r"\(sqlalchemy/"),
        ("SQLite statements (aiosqlite thread)", r"\(aiosqlite/"),
        ("HTTP: uvicorn, middleware, routing", r"\((?:uvicorn|starlette|fastapi|h11)/|Middleware"),
        ("asyncio loop, thread hand-offs", r"\(asyncio/|\(threading\.py\)"),
    ],
    "worker": [
        ("new ComfyUI client per task (httpx + SSL context)", r"^ComfyUIClient\.__init__ "),
        ("result-storage lookup (new sync Prefect client)", r"^_read_server_default_result_stor"),
        ("suspension observer (new Prefect client)", r"observe_flow_run_suspension|Suspending"),
        ("run context (new Prefect client)", r"^AsyncClientContext\."),
        ("pool discovery every 5 s (new Prefect client)", r"^_discover_pools "),
        ("cancellation poll every 10 s (new Prefect client)", r"^_poll_cancellations "),
        ("other new HTTP clients (SSL context)", r"^create_default_context "),
        ("logs to the API", r"\(prefect/logging/"),
        ("progress relay (artifact PATCH, event, job row)", r"^_ProgressReporter\."),
        ("flow body: follow (ComfyUI websocket)", r"^follow \(flows/|\(comfyfleet/comfyui/hub"),
        ("flow body: submit", r"^submit \(flows/"),
        ("flow body: collect outputs", r"^collect_outputs "),
        ("flow body: markdown artifact", r"^publish \(flows/"),
        ("job store (attempt, lease, outputs)", r"\(comfyfleet/(?:attempts|store/)"),
        ("task engine (task-run states, events)", r"\(prefect/task_engine\.py\)"),
        ("flow engine (flow-run states, heartbeat)", r"\(prefect/flow_engine\.py\)"),
        ("events client (websocket events/in)", r"\(prefect/events/"),
        ("worker: poll, submit, heartbeat", r"\(prefect/workers/|\(comfyfleet/worker\.py\)"),
        ("SQLAlchemy (job store thread)", r"\(sqlalchemy/"),
        ("asyncio loop, thread hand-offs", r"\(asyncio/|\(threading\.py\)"),
    ],
    "fleet-service": [
        ("dispatcher (views, claim, route, attempt, flow run)", r"comfyfleet/fleet/dispatcher"),
        ("health round: node probes", r"comfyfleet/fleet/monitor|comfyfleet/comfyui/"),
        (
            "health round: store facts, pools, snapshot",
            r"^(?:read_facts|FleetService\.(?:hea"
            r"lth_round|refresh_registry|sync_pools|write_snapshot|states))|fleet/registry",
        ),
        (
            "attempt checks (leases, pending runs, expiry)",
            r"^FleetService\.(?:check_attempts|"
            r"watch_pending|expire_queued|_watch|_still_pending)|expired_leases|pending_attempts",
        ),
        ("config file watch", r"comfyfleet/config_reload"),
        ("webhooks due", r"comfyfleet/webhooks"),
        ("job store SQL, caller not visible (thread)", r"\(sqlalchemy/|comfyfleet/store/"),
        ("new HTTP clients (SSL context)", r"^create_default_context "),
        ("asyncio loop, thread hand-offs", r"\(asyncio/|\(threading\.py\)|concurrent/"),
    ],
    "web": [
        ("Gradio queue loops (1 ms and 10 ms sleeps)", r"\(gradio/queueing\.py\)"),
        ("authentication (bearer token lookup)", r"authenticate_token|get_principal|_principal"),
        ("REST submit (validate, write the job)", r"submit_job|\(comfyfleet/jobs\.py\)"),
        ("reading the job back for the response", r"^respond "),
        ("job store SQL, caller not visible (thread)", r"\(sqlalchemy/|comfyfleet/store/"),
        ("HTTP: uvicorn, middleware, routing", r"\((?:uvicorn|starlette|fastapi|h11)/"),
        ("asyncio loop, thread hand-offs", r"\(asyncio/|\(threading\.py\)|concurrent/"),
    ],
}


def report(stacks: list[Stack], *, top: int = 20, rules: str | None = None) -> str:
    everything = total(stacks)
    stacks = busy(stacks)
    n = total(stacks) or 1
    lines = [f"samples: {everything}, of which busy (not waiting): {n}; shares of busy samples"]
    if rules:
        lines.append("by cause:")
        for cause, count in by_cause(stacks, RULES[rules]).most_common():
            lines.append(f"  {100 * count / n:5.1f}%  {cause}")
    lines.append("self:")
    lines += [f"  {100 * c / n:5.1f}%  {f}" for f, c in top_self(stacks, top)]
    lines.append("total:")
    lines += [f"  {100 * c / n:5.1f}%  {f}" for f, c in top_total(stacks, top)]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.pyspy", description=__doc__)
    parser.add_argument("profiles", nargs="+", type=Path)
    parser.add_argument("--top", type=int, default=20)
    parser.add_argument("--rules", choices=sorted(RULES), help="group samples by cause")
    args = parser.parse_args(argv)
    stacks = [s for path in args.profiles for s in parse(path.read_text())]
    print(report(stacks, top=args.top, rules=args.rules))


if __name__ == "__main__":
    main()
