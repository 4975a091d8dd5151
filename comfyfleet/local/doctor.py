"""`comfyfleet doctor`: check a whole installation and say what is wrong and how to fix it.

Checks, in order (each prints `OK`, `WARN` or `FAIL`, and a fix for a failure):

- config: the settings load (comfyfleet.yaml, environment); the workflow catalog loads;
- prefect: the server at `prefect.api_url` answers (with the fleet's auth string), and its
  version; it fails when the API listens beyond loopback without auth;
- nodes: the registry (the `ComfyUINode` blocks; the config's nodes when Prefect is down);
  every enabled node answers `/system_stats` (its ComfyUI version), and every workflow of the
  node's capabilities passes the live check against its `/object_info` and models
  (`Workflow.check_against`, as `comfyfleet workflows check`);
- database: reachable, and migrated to the Alembic head this version ships;
- stores: the outputs and inputs directories exist or can be made, and are writable;
- auth: an enabled admin user exists.

The exit status is 1 when any check fails. Each check is a function returning `Check`s, so tests
drive them one by one.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import httpx

from comfyfleet.comfyui import ComfyUIError, probe_node
from comfyfleet.local.prefect_server import (
    AUTH_ENV,
    api_access,
    auth_headers,
    auth_string,
    auth_string_path,
    use_prefect,
)

if TYPE_CHECKING:
    from comfyfleet.catalog import Catalog, NodeFacts
    from comfyfleet.settings import NodeConfig, Settings

Status = Literal["OK", "WARN", "FAIL"]


@dataclass(frozen=True)
class Check:
    name: str
    status: Status
    detail: str
    fix: str = ""

    @property
    def failed(self) -> bool:
        return self.status == "FAIL"


def ok(name: str, detail: str) -> Check:
    return Check(name, "OK", detail)


def fail(name: str, detail: str, fix: str) -> Check:
    return Check(name, "FAIL", detail, fix)


def _why(exc: BaseException) -> str:
    return f"{exc.__class__.__name__}: {exc}".rstrip(": ")


# -- the checks ----------------------------------------------------------------------------------


def check_prefect(settings: Settings, *, timeout: float = 5.0) -> Check:
    url = settings.prefect.api_url.rstrip("/")
    if not url:
        return fail("prefect", "prefect.api_url is empty", "set prefect.api_url in comfyfleet.yaml")
    auth = os.environ.get(AUTH_ENV) or auth_string(auth_string_path(settings))
    try:
        with httpx.Client(timeout=timeout) as client:
            client.get(f"{url}/health").raise_for_status()
            version = client.get(f"{url}/admin/version", headers=auth_headers(auth))
            if version.status_code == 401:
                return fail(
                    "prefect",
                    f"the Prefect API at {url} refuses our auth string"
                    + ("" if auth else " (we have none)"),
                    f"put the server's string in prefect.auth_string_file "
                    f"({auth_string_path(settings)}) or {AUTH_ENV}",
                )
            version.raise_for_status()
            number = version.json()
    except (httpx.HTTPError, ValueError) as exc:
        return fail(
            "prefect",
            f"no Prefect server answers at {url} ({_why(exc)})",
            "start the fleet (`make up`) or the server (`prefect server start`), or point "
            "prefect.api_url (COMFYFLEET_PREFECT__API_URL) at it",
        )
    host = httpx.URL(url).host
    if not _loopback(host) and api_access(url, None, timeout=timeout) == "open":
        return fail(
            "prefect",
            f"the Prefect API at {url} listens beyond this host WITHOUT auth: anyone who "
            "reaches it can read the job-store secret and run flows",
            "start it with PREFECT_SERVER_API_AUTH_STRING (`comfyfleet up` does), or bind it "
            "to 127.0.0.1",
        )
    return ok("prefect", f"Prefect {number} at {url}" + (" (auth on)" if auth else ""))


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def registry_nodes(settings: Settings, *, prefect_up: bool) -> tuple[list[NodeConfig], str]:
    """The nodes to check and where they came from (the registry, or the config file)."""
    if prefect_up:
        from prefect.client.orchestration import get_client

        from comfyfleet.fleet.registry import read_nodes

        async def read() -> list[NodeConfig]:
            async with get_client() as client:
                return await read_nodes(client)

        use_prefect(settings)
        with contextlib.suppress(Exception):
            return asyncio.run(read()), "registry"
    return list(settings.nodes), "config"


def check_node(node: NodeConfig, *, timeout: float = 5.0) -> Check:
    name = f"node {node.id}"
    if not node.enabled:
        return Check(name, "WARN", f"{node.url}: disabled (gets no jobs)",
                     f"`comfyfleet nodes enable {node.id}` when it should work again")  # fmt: skip
    try:
        version = probe_node(node.url, timeout=timeout).version or "unknown version"
    except ComfyUIError as exc:
        return fail(
            name,
            f"{node.url} does not answer ({_why(exc)})",
            f"start ComfyUI there (`--listen` on that address), fix its URL, or take it out of "
            f"rotation: `comfyfleet nodes disable {node.id}`",
        )
    return ok(name, f"ComfyUI {version} at {node.url}")


def check_node_workflows(node: NodeConfig, catalog: Catalog, facts: NodeFacts) -> Check:
    """Every workflow of the node's capabilities against what the node has."""
    name = f"workflows @ {node.id}"
    workflows = [w for w in catalog if w.capability in node.capabilities]
    if facts.error:
        return fail(name, facts.error, f"make {node.url} reachable (see `node {node.id}`)")
    problems = [
        f"{w.id}: {p}" for w in workflows for p in w.check_against(facts.object_info, facts.models)
    ]
    if problems:
        return fail(
            name,
            f"{len(problems)} problem(s) in {len(workflows)} workflow(s):\n" + "\n".join(problems),
            "install the missing custom nodes / models on the node (models go to its "
            "models/<folder>), map model names with `models:` in comfyfleet.yaml, or drop the "
            f"capability from node {node.id}",
        )
    return ok(name, f"{len(workflows)} workflow(s) can run there")


def check_database(settings: Settings) -> Check:
    from sqlalchemy.engine import make_url

    from comfyfleet.store import Database
    from comfyfleet.store.migrate import current_revision, head_revision

    shown = make_url(settings.database.url).render_as_string(hide_password=True)
    db = Database(settings.database.url)
    try:
        current = current_revision(db)
    except Exception as exc:
        return fail(
            "database", f"{shown}: cannot connect ({_why(exc)})",
            "check database.url (COMFYFLEET_DATABASE__URL) and that the server runs",
        )  # fmt: skip
    finally:
        db.dispose()
    head = head_revision()
    if current != head:
        return fail(
            "database",
            f"{shown}: schema at {current or 'nothing (empty)'}, this version needs {head}",
            "run `comfyfleet db upgrade`",
        )
    return ok("database", f"{shown}: migrated ({head})")


def check_store_dir(label: str, path: Path) -> Check:
    name = f"store {label}"
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".doctor-"):
            pass
    except OSError as exc:
        return fail(
            name, f"{path} is not writable ({_why(exc)})",
            f"create it writable for this user, or set store.{label}_dir",
        )  # fmt: skip
    return ok(name, f"{path} writable")


def check_auth(settings: Settings) -> Check:
    from comfyfleet.store import Database, list_users

    db = Database(settings.database.url)
    try:
        users = db.run(list_users, readonly=True)
    except Exception as exc:
        return fail("auth", f"cannot read users ({_why(exc)})", "fix the database check first")
    finally:
        db.dispose()
    admins = [u for u in users if u.role == "admin" and not u.disabled]
    if not admins:
        return fail(
            "auth", "no enabled admin user: nobody can manage nodes, users or clients",
            "`comfyfleet users create NAME --admin` (`make up` creates one at its first start)",
        )  # fmt: skip
    regular = len([u for u in users if u.role == "user"])
    names = ", ".join(sorted(u.username for u in admins))
    return ok("auth", f"admin(s): {names}; {regular} other user(s)")


def run_checks(settings: Settings) -> list[Check]:
    """Every check, in order."""
    from comfyfleet.catalog import CatalogError, fetch_node_facts
    from comfyfleet.jobs import load_catalog

    checks: list[Check] = []
    catalog = None
    try:
        catalog = load_catalog(settings)
        checks.append(ok("workflows", f"{len(catalog)} workflow(s) in the catalog"))
    except CatalogError as exc:
        checks.append(fail("workflows", "\n".join(exc.problems), "fix the workflow files named"))
    prefect = check_prefect(settings)
    checks.append(prefect)
    nodes, source = registry_nodes(settings, prefect_up=not prefect.failed)
    if not nodes:
        checks.append(fail(
            "nodes", f"no nodes ({source})",
            "list nodes in comfyfleet.yaml (then `make up`), or `comfyfleet nodes add`",
        ))  # fmt: skip
    for node in nodes:
        check = check_node(node)
        checks.append(check)
        if check.status != "OK" or catalog is None:
            continue
        folders = sorted({f for w in catalog for f in w.required_models})
        facts = fetch_node_facts(node.id, node.url, folders, timeout=30)
        checks.append(check_node_workflows(node, catalog, facts))
    database = check_database(settings)
    checks.append(database)
    checks.append(check_store_dir("outputs", settings.store.outputs_dir))
    checks.append(check_store_dir("inputs", settings.store.inputs_dir))
    if not database.failed:
        checks.append(check_auth(settings))
    return checks


def render(checks: Sequence[Check]) -> Iterable[str]:
    width = max((len(c.name) for c in checks), default=0)
    for check in checks:
        first, *rest = check.detail.splitlines() or [""]
        yield f"{check.status:<4}  {check.name:<{width}}  {first}"
        pad = " " * (width + 8)
        for line in rest:
            yield f"{pad}{line}"
        if check.fix and check.status != "OK":
            yield f"{pad}fix: {check.fix}"
