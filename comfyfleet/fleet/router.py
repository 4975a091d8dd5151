"""The router: which node runs a job now. Pure, no I/O, fast (well under 5 ms for 100 nodes).

The dispatcher hands it a snapshot of the fleet (`NodeView`s, from the cached registry, the
monitor and the attempt table) and one claimed job (`JobView`); `Router.choose` returns a node
with a free slot, or None. Binding is late: the dispatcher creates an attempt (a flow run in the
node's pool) only for a node returned here, so a returned node always has a free slot.

Load. `busy(node) = in_flight + queue_depth`:
- `in_flight`: this fleet's live attempts on the node (placed, queued on the node, running),
  runs started from Prefect directly included;
- `queue_depth`: the foreign prompts in ComfyUI's queue as last probed (someone using the node's
  ComfyUI directly; our own prompts are attempt ids and count in `in_flight` only).
`free_slots = max(0, capacity - busy)`; `load = busy / capacity`. A node's capacity is how many
prompts it holds at once: one executing, the others queued behind it, so the next one starts
the moment the current one ends.

Eligibility (`eligible`): enabled, healthy, has the job's capability, has its required models,
has its class types and model files, not in the job's `exclude` (nodes where it already had a
node fault), and the pinned node only when the job is pinned. Model inventory: `models=None`
means unknown (never listed) and is treated as "has everything" so a fresh node is usable; a
mapping is authoritative (a folder missing from it holds no files).

Raw graphs (capability `GRAPH_CAPABILITY`: every node serves it) name their class types and
model files (`JobView.class_types`, `.model_files`); a node takes one only when its installed
inventory is known (`NodeView.class_types`, `.model_files` not None) and has them all. Unlike
`models`, unknown here means no: a graph sent to a node without its custom nodes fails there
(ComfyUI rejects it) instead of failing over, so it waits for a node that reported them.

Strategies (`routing.strategy`, switchable at run time), all over eligible nodes with a free slot:
- `least_loaded` (default): lowest load ratio; ties → fewest in_flight → round-robin by node id,
  so equal nodes share. It never picks a busier node while a less loaded one has a free slot.
- `round_robin`: the next node after the last one chosen, in node-id order (wraps).
- `random`: uniform; pass a seeded `random.Random` for reproducible tests.
- `weighted`: smooth weighted round-robin (nginx's): each choice adds every candidate's weight to
  its running score, picks the highest score and subtracts the candidates' total weight from it.
  Deterministic, well interleaved, and exact: over every cycle of sum(weights) choices among the
  same candidates, each node gets exactly its weight's share. Under late binding it sets the
  shares only while several nodes have a free slot.
- `priority_based`: the lowest `priority` group that has a free slot (spill over to the next
  group when it is full); least_loaded inside the group.
- `model_aware`: prefer a free node whose `last_checkpoint` is the job's checkpoint (least loaded
  among them). When every node holding the checkpoint is full, pressure decides: with
  `backlog_by_checkpoint` (queued jobs needing each checkpoint, this one included), the job moves
  to another node only when the checkpoint's backlog exceeds `pressure_threshold` x the holders'
  total capacity (default 1.0: more jobs waiting than the holders have slots); otherwise it waits
  (None). Without backlog figures, or when no eligible node holds the checkpoint, it moves at once.
  A move goes to the free node whose loaded checkpoint is least wanted by the backlog, an empty
  node before one holding an unwanted model, then least loaded: a model other jobs are waiting
  for is not evicted while there is a better place.

`explain` says why no node is available, for the dispatcher and users. A Router is not
thread-safe; the dispatcher (one leader) owns it.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import get_args

from comfyfleet.catalog.raw import GRAPH_CAPABILITY
from comfyfleet.settings import NodeConfig, Strategy

STRATEGIES: tuple[str, ...] = get_args(Strategy)
DEFAULT_STRATEGY = "least_loaded"
_EMPTY: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class NodeView:
    """One node as the router sees it at this instant."""

    id: str
    url: str
    capacity: int
    in_flight: int = 0
    queue_depth: int = 0
    capabilities: frozenset[str] = frozenset()
    models: Mapping[str, frozenset[str]] | None = field(default=None, hash=False, compare=False)
    weight: float = 1.0
    priority: int = 0
    healthy: bool = True
    enabled: bool = True
    last_checkpoint: str | None = None
    node_class: str | None = None  # informational (e.g. GPU model); no strategy uses it yet
    class_types: frozenset[str] | None = field(default=None, hash=False, compare=False)
    """Installed class types (None: not read yet)."""
    model_files: frozenset[str] | None = field(default=None, hash=False, compare=False)
    """Every file in every model folder (None: not read yet)."""

    def __post_init__(self) -> None:
        if not isinstance(self.capabilities, frozenset):
            object.__setattr__(self, "capabilities", frozenset(self.capabilities))
        for name in ("class_types", "model_files"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, frozenset):
                object.__setattr__(self, name, frozenset(value))
        if self.models is not None:
            models = {folder: frozenset(files) for folder, files in self.models.items()}
            object.__setattr__(self, "models", models)

    @classmethod
    def from_config(cls, node: NodeConfig, **state: object) -> NodeView:
        """A view of a configured node; `state` gives in_flight, healthy, models, …"""
        return cls(
            id=node.id,
            url=node.url,
            capacity=node.capacity,
            capabilities=frozenset(node.capabilities),
            weight=node.weight,
            priority=node.priority,
            enabled=node.enabled,
            **state,  # type: ignore[arg-type]
        )


@dataclass(frozen=True, slots=True)
class JobView:
    """What routing needs to know about one job."""

    id: str
    capability: str
    required_models: Mapping[str, frozenset[str]] = field(
        default_factory=dict, hash=False, compare=False
    )
    checkpoint: str | None = None
    pinned_node: str | None = None
    exclude: frozenset[str] = frozenset()
    class_types: frozenset[str] = frozenset()
    """Class types the job's graph uses (raw graphs): the node must have them all."""
    model_files: frozenset[str] = frozenset()
    """Model files the job's graph names, in any folder (raw graphs)."""

    def __post_init__(self) -> None:
        models = {f: frozenset(files) for f, files in self.required_models.items() if files}
        object.__setattr__(self, "required_models", models)
        for name in ("exclude", "class_types", "model_files"):
            if not isinstance(getattr(self, name), frozenset):
                object.__setattr__(self, name, frozenset(getattr(self, name)))


def busy(node: NodeView) -> int:
    """Slots in use: our in-flight attempts and the node's foreign prompts."""
    return node.in_flight + node.queue_depth


def free_slots(node: NodeView) -> int:
    return max(0, node.capacity - busy(node))


def load(node: NodeView) -> float:
    """busy / capacity; a node without capacity is infinitely loaded."""
    return busy(node) / node.capacity if node.capacity > 0 else float("inf")


def has_models(node: NodeView, required: Mapping[str, frozenset[str]]) -> bool:
    if node.models is None or not required:
        return True
    return all(files <= node.models.get(folder, _EMPTY) for folder, files in required.items())


def served_capabilities(capabilities: Iterable[str]) -> frozenset[str]:
    """The capabilities a node with these takes jobs of: them, and raw graphs (every node may
    take one; `has_installed` says which can run it)."""
    return frozenset(capabilities) | {GRAPH_CAPABILITY}


def serves(node: NodeView, capability: str) -> bool:
    """The node takes jobs of this capability (every node takes raw graphs)."""
    return capability == GRAPH_CAPABILITY or capability in node.capabilities


def has_installed(node: NodeView, job: JobView) -> bool:
    """The node is known to have every class type and model file the job names."""
    if job.class_types and (node.class_types is None or not job.class_types <= node.class_types):
        return False
    return not job.model_files or (
        node.model_files is not None and job.model_files <= node.model_files
    )


def is_eligible(job: JobView, node: NodeView) -> bool:
    return (
        node.enabled
        and node.healthy
        and (job.pinned_node is None or node.id == job.pinned_node)
        and node.id not in job.exclude
        and serves(node, job.capability)
        and has_models(node, job.required_models)
        and has_installed(node, job)
    )


def eligible(job: JobView, nodes: Iterable[NodeView]) -> list[NodeView]:
    """The nodes that could run this job (ignoring load), in the order given."""
    return [n for n in nodes if is_eligible(job, n)]


def explain(job: JobView, nodes: Iterable[NodeView]) -> str:
    """Why no node can take this job now (or how many can), in words for users."""
    pool = list(nodes)
    if not pool:
        return "no nodes are registered"
    pinned = job.pinned_node
    if pinned is not None:
        pool = [n for n in pool if n.id == pinned]
        if not pool:
            return f"job is pinned to node {pinned}, which is not registered"
    where = f"node {pinned}" if pinned else "every eligible node"
    enabled = [n for n in pool if n.enabled]
    if not enabled:
        return f"node {pinned} is disabled" if pinned else "every node is disabled"
    healthy = [n for n in enabled if n.healthy]
    capable = [n for n in healthy if serves(n, job.capability)]
    if not capable:
        sick = [n.id for n in enabled if not n.healthy and serves(n, job.capability)]
        if pinned:
            msg = (
                f"node {pinned} is unhealthy"
                if sick
                else f"node {pinned} does not have capability {job.capability}"
            )
        elif not healthy:
            msg = f"no healthy node ({_ids(n.id for n in enabled)} unhealthy)"
        else:
            msg = f"no healthy node has capability {job.capability}"
            if sick:
                msg += f" ({_ids(sick)} {'has' if len(sick) == 1 else 'have'} it but unhealthy)"
        return msg
    installed = [n for n in capable if has_installed(n, job)]
    if not installed:
        return _not_installed(job, capable)
    stocked = [n for n in installed if has_models(n, job.required_models)]
    if not stocked:
        files = [(d, f) for d, fs in sorted(job.required_models.items()) for f in sorted(fs)]
        nowhere = [
            f for d, f in files if not any(has_models(n, {d: frozenset([f])}) for n in capable)
        ]
        if nowhere:
            noun = "model" if len(nowhere) == 1 else "models"
            return f"{noun} {', '.join(nowhere)} missing on {where}"
        return f"no eligible node has all of the required models ({_ids(f for _, f in files)})"
    fresh = [n for n in stocked if n.id not in job.exclude]
    if not fresh:
        if pinned:
            return f"node {pinned} already had a node fault for this job"
        return f"every eligible node already had a node fault for this job ({_ids(stocked)})"
    free = [n for n in fresh if free_slots(n) > 0]
    if not free:
        if len(fresh) == 1:
            n = fresh[0]
            return f"the only eligible node {n.id} is full ({busy(n)}/{n.capacity} busy)"
        return f"all {len(fresh)} eligible nodes are full"
    return f"{len(free)} of {len(fresh)} eligible nodes have a free slot"


def _not_installed(job: JobView, capable: list[NodeView]) -> str:
    """Why no healthy node has what the job's graph names: the class types and model files
    none has, or what the nearest lack, or that none has said what it has."""
    pinned = job.pinned_node
    lacks: dict[str, list[str]] = {}
    for node in capable:
        types, files = node.class_types, node.model_files
        if types is not None and files is not None:
            lacks[node.id] = sorted(job.class_types - types) + sorted(job.model_files - files)
    if not lacks:
        if pinned:
            return f"node {pinned} has not reported what it has installed yet"
        return "no healthy node has reported what it has installed yet"
    if pinned:
        return f"node {pinned} does not have {_named(job, lacks[pinned])}"
    nowhere = sorted(set.intersection(*(set(items) for items in lacks.values())))
    if nowhere:
        return f"no healthy node has {_named(job, nowhere)}"
    nearest = sorted(lacks.items(), key=lambda kv: (len(kv[1]), kv[0]))[:3]
    some = "; ".join(f"{node_id} lacks {', '.join(items)}" for node_id, items in nearest)
    return f"no healthy node has every class type and model file the job needs ({some})"


def _named(job: JobView, items: list[str]) -> str:
    """`class type A, B and model file c.safetensors`"""
    types = [i for i in items if i in job.class_types]
    files = [i for i in items if i not in job.class_types]
    parts = []
    if types:
        parts.append(f"class type{'s' if len(types) > 1 else ''} {', '.join(types)}")
    if files:
        parts.append(f"model file{'s' if len(files) > 1 else ''} {', '.join(files)}")
    return " and ".join(parts)


def _ids(items: Iterable[NodeView | str]) -> str:
    return ", ".join(sorted(i if isinstance(i, str) else i.id for i in items))


def _check_strategy(name: str) -> str:
    if name not in STRATEGIES:
        raise ValueError(f"unknown routing strategy {name!r}; known: {', '.join(STRATEGIES)}")
    return name


class Router:
    """Chooses a node with a free slot for a job, by the current strategy (stateful)."""

    def __init__(
        self,
        strategy: str = DEFAULT_STRATEGY,
        *,
        rng: random.Random | None = None,
        pressure_threshold: float = 1.0,
    ) -> None:
        self._strategy = _check_strategy(strategy)
        self._rng = rng if rng is not None else random.Random()
        self.pressure_threshold = pressure_threshold
        self._last_id: str | None = None  # last node chosen: round-robin cursor and tie-breaker
        self._score: dict[str, float] = {}  # smooth weighted round-robin running scores

    @property
    def strategy(self) -> str:
        return self._strategy

    @strategy.setter
    def strategy(self, name: str) -> None:
        self._strategy = _check_strategy(name)

    def set_strategy(self, name: str) -> None:
        self.strategy = name

    def choose(
        self,
        job: JobView,
        nodes: Sequence[NodeView],
        backlog_by_checkpoint: Mapping[str, int] | None = None,
    ) -> NodeView | None:
        """A node with a free slot for this job now, or None (see `explain` for why)."""
        elig = eligible(job, nodes)
        free = sorted((n for n in elig if free_slots(n) > 0), key=_node_id)
        if not free:
            return None
        s = self._strategy
        if s == "least_loaded":
            pick = self._least_loaded(free)
        elif s == "round_robin":
            pick = self._next_after_last(free)
        elif s == "random":
            pick = self._rng.choice(free)
        elif s == "weighted":
            pick = self._weighted(free, nodes)
        elif s == "priority_based":
            group = min(n.priority for n in free)
            pick = self._least_loaded([n for n in free if n.priority == group])
        else:
            pick = self._model_aware(job, elig, free, backlog_by_checkpoint)
        if pick is not None:
            self._last_id = pick.id
        return pick

    def explain(
        self,
        job: JobView,
        nodes: Sequence[NodeView],
        backlog_by_checkpoint: Mapping[str, int] | None = None,
    ) -> str:
        """Like the module's `explain`, plus model_aware's reason to wait for a warm node."""
        if self._strategy == "model_aware" and job.checkpoint is not None:
            elig = eligible(job, nodes)
            free = [n for n in elig if free_slots(n) > 0]
            if free and not any(n.last_checkpoint == job.checkpoint for n in free):
                reason = self._wait_reason(job.checkpoint, elig, backlog_by_checkpoint)
                if reason is not None:
                    return reason
        return explain(job, nodes)

    # -- strategies ---------------------------------------------------------------------------

    def _next_after_last(self, ordered: list[NodeView]) -> NodeView:
        """The first node (in id order) after the last one chosen, wrapping around."""
        last = self._last_id
        if last is not None:
            for n in ordered:
                if n.id > last:
                    return n
        return ordered[0]

    def _least_loaded(self, free: list[NodeView]) -> NodeView:
        best = min((load(n), n.in_flight) for n in free)
        return self._next_after_last([n for n in free if (load(n), n.in_flight) == best])

    def _weighted(self, free: list[NodeView], nodes: Sequence[NodeView]) -> NodeView:
        score = self._score
        if len(score) > 2 * len(nodes) + 8:  # forget removed nodes now and then
            present = {n.id for n in nodes}
            self._score = score = {k: v for k, v in score.items() if k in present}
        total = 0.0
        best: NodeView | None = None
        best_score = 0.0
        for n in free:
            weight = max(n.weight, 0.0)
            s = score.get(n.id, 0.0) + weight
            score[n.id] = s
            total += weight
            if best is None or s > best_score:
                best, best_score = n, s
        assert best is not None
        score[best.id] = best_score - total
        return best

    def _model_aware(
        self,
        job: JobView,
        elig: list[NodeView],
        free: list[NodeView],
        backlog: Mapping[str, int] | None,
    ) -> NodeView | None:
        ckpt = job.checkpoint
        if ckpt is None:
            return self._least_loaded(free)
        warm = [n for n in free if n.last_checkpoint == ckpt]
        if warm:
            return self._least_loaded(warm)
        if self._wait_reason(ckpt, elig, backlog) is not None:
            return None

        def cost(n: NodeView) -> tuple[int, bool]:  # what loading the model here would evict
            if n.last_checkpoint is None:
                return (0, False)
            return (backlog.get(n.last_checkpoint, 0) if backlog else 0, True)

        least = min(cost(n) for n in free)
        return self._least_loaded([n for n in free if cost(n) == least])

    def _wait_reason(
        self, ckpt: str, elig: list[NodeView], backlog: Mapping[str, int] | None
    ) -> str | None:
        """Why the job should wait for a (full) node holding its checkpoint; None: move it."""
        if backlog is None:
            return None
        holders = [n for n in elig if n.last_checkpoint == ckpt]
        if not holders:
            return None
        slots = sum(n.capacity for n in holders)
        waiting = max(backlog.get(ckpt, 0), 1)
        if waiting > self.pressure_threshold * slots:
            return None
        return (
            f"waiting for a node with {ckpt} loaded ({_ids(holders)} full); "
            f"{waiting} queued job(s) need it, within its {slots} slot(s)"
        )


def _node_id(node: NodeView) -> str:
    return node.id
