"""The baselines ComfyFleet is compared with, talking to ComfyUI directly over HTTP.

- `naive_round_robin`: POST every prompt at once, node after node in turn, without looking at
  queues or speeds (what a static load balancer in front of ComfyUI does).
- `seed_like`: the old service's dispatcher: it keeps up to `capacity` prompts per node (least
  loaded first) and learns that one finished by polling `/history/<prompt_id>` every 3 s.
- `direct_latency`: one POST /prompt to a node and the time until ComfyUI starts executing it.

Prompts are rendered from the same catalog workflow as ComfyFleet's jobs, with unique seeds (so
ComfyUI's cache never answers) and our own prompt ids.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from bench.stats import Execution, parse_history_entry


@dataclass(frozen=True)
class Prompt:
    job: str
    graph: dict[str, Any]


def make_prompts(
    catalog: Any, workflow: str, params: Sequence[dict[str, Any]], tag: str
) -> list[Prompt]:
    """Render one graph per parameter set; prompt ids `<tag>-<n>-<random>`."""
    wf = catalog.get(workflow)
    prompts = []
    for i, p in enumerate(params):
        job = f"{tag}-{i}-{uuid.uuid4().hex[:8]}"
        prompts.append(Prompt(job, wf.render(p, filename_prefix=f"bench/{tag}").graph))
    return prompts


def post_prompt(client: httpx.Client, url: str, prompt: Prompt) -> None:
    response = client.post(
        f"{url}/prompt",
        json={"prompt": prompt.graph, "prompt_id": prompt.job, "client_id": "bench"},
    )
    response.raise_for_status()


def history(client: httpx.Client, url: str, prompt_id: str) -> tuple[float, float, bool] | None:
    """(start, end, ok) of a finished prompt, None while it is not in the node's history."""
    body = client.get(f"{url}/history/{prompt_id}").json()
    entry = body.get(prompt_id)
    return parse_history_entry(entry) if entry else None


def histories(
    client: httpx.Client, url: str, prompt_ids: set[str]
) -> dict[str, tuple[float, float, bool]]:
    """The finished prompts among `prompt_ids` on one node (one /history request)."""
    found: dict[str, tuple[float, float, bool]] = {}
    body = client.get(f"{url}/history", params={"max_items": 10000}, timeout=60).json()
    for pid in prompt_ids:
        entry = body.get(pid)
        parsed = parse_history_entry(entry) if entry else None
        if parsed is not None:
            found[pid] = parsed
    return found


def queue_remaining(client: httpx.Client, url: str) -> int:
    return int(client.get(f"{url}/prompt").json()["exec_info"]["queue_remaining"])


def naive_round_robin(
    nodes: Sequence[tuple[str, str]], prompts: Sequence[Prompt], *, timeout: float
) -> tuple[float, list[Execution]]:
    """Post everything at once in turn over `nodes` ((id, url)); returns t0 and the executions."""
    where: dict[str, tuple[str, str]] = {}
    with httpx.Client(timeout=30) as client:
        t0 = time.time()
        for i, prompt in enumerate(prompts):
            node = nodes[i % len(nodes)]
            post_prompt(client, node[1], prompt)
            where[prompt.job] = node
        submitted = {p.job: t0 for p in prompts}
        _wait_empty(client, nodes, timeout)
        return t0, _collect(client, nodes, where, submitted)


def seed_like(
    nodes: Sequence[tuple[str, str]],
    prompts: Sequence[Prompt],
    *,
    capacity: int = 2,
    poll_s: float = 3.0,
    timeout: float,
) -> tuple[float, list[Execution]]:
    """Dispatch to nodes with a free slot; completion seen by polling /history every `poll_s`."""
    backlog = list(prompts)
    backlog.reverse()
    in_flight: dict[str, list[str]] = {n: [] for n, _ in nodes}
    urls = dict(nodes)
    where: dict[str, tuple[str, str]] = {}
    done: dict[str, Execution] = {}
    with httpx.Client(timeout=30) as client:
        t0 = time.time()
        deadline = time.monotonic() + timeout
        while backlog or any(in_flight.values()):
            while backlog:  # fill free slots, least loaded node first
                node = min(in_flight, key=lambda n: len(in_flight[n]))
                if len(in_flight[node]) >= capacity:
                    break
                prompt = backlog.pop()
                post_prompt(client, urls[node], prompt)
                in_flight[node].append(prompt.job)
                where[prompt.job] = (node, urls[node])
            if time.monotonic() > deadline:
                break
            time.sleep(poll_s)
            for node, jobs in in_flight.items():
                for job in list(jobs):
                    result = history(client, urls[node], job)
                    if result is not None:
                        jobs.remove(job)
                        start, end, ok = result
                        done[job] = Execution(
                            job, node, job, t0, start, end, ok, visible=time.time()
                        )
        return t0, sorted(done.values(), key=lambda e: e.start)


def direct_latency(
    url: str, node: str, prompt: Prompt, *, poll_s: float = 0.02, timeout: float = 60
) -> Execution:
    """POST one prompt, poll its history until it is there; submitted/visible are ours."""
    with httpx.Client(timeout=30) as client:
        submitted = time.time()
        post_prompt(client, url, prompt)
        deadline = time.monotonic() + timeout
        while True:
            result = history(client, url, prompt.job)
            if result is not None:
                visible = time.time()
                start, end, ok = result
                return Execution(prompt.job, node, prompt.job, submitted, start, end, ok, visible)
            if time.monotonic() > deadline:
                raise TimeoutError(f"prompt {prompt.job} not finished on {url} after {timeout}s")
            time.sleep(poll_s)


def _wait_empty(client: httpx.Client, nodes: Sequence[tuple[str, str]], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(queue_remaining(client, url) == 0 for _, url in nodes):
            return
        time.sleep(0.5)


def _collect(
    client: httpx.Client,
    nodes: Sequence[tuple[str, str]],
    where: dict[str, tuple[str, str]],
    submitted: dict[str, float],
) -> list[Execution]:
    out = []
    for node, url in nodes:
        ids = {job for job, (n, _) in where.items() if n == node}
        for job, (start, end, ok) in histories(client, url, ids).items():
            out.append(Execution(job, node, job, submitted[job], start, end, ok))
    return sorted(out, key=lambda e: e.start)


def clear_queues(nodes: Sequence[tuple[str, str]]) -> None:
    """Drop whatever is pending on the nodes and interrupt what runs (after a timed-out run)."""
    with httpx.Client(timeout=10) as client:
        for _, url in nodes:
            client.post(f"{url}/queue", json={"clear": True})
            client.post(f"{url}/interrupt", json={})
