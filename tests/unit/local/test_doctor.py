"""The installation checks (comfyfleet.local.doctor): each fails with the reason and a fix."""

from __future__ import annotations

import socket
from pathlib import Path

from comfyfleet.auth import create_user
from comfyfleet.catalog import NodeFacts
from comfyfleet.local import doctor
from comfyfleet.settings import NodeConfig, Settings
from comfyfleet.store import Database, upgrade

REPO = Path(__file__).resolve().parents[3]


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def settings_at(tmp_path: Path, **kw: object) -> Settings:
    values: dict[str, object] = {
        "database": {"url": f"sqlite:///{tmp_path / 'cf.db'}"},
        "store": {"outputs_dir": str(tmp_path / "out"), "inputs_dir": str(tmp_path / "in")},
        "prefect": {"api_url": f"http://127.0.0.1:{closed_port()}/api"},
        "workflow_dirs": [str(REPO / "workflows")],
        "nodes": [],
    }
    values.update(kw)
    return Settings(**values)


def test_prefect_unreachable_fails_with_how_to_start_it(tmp_path: Path) -> None:
    check = doctor.check_prefect(settings_at(tmp_path), timeout=1)
    assert check.failed and "no Prefect server answers" in check.detail
    assert "make up" in check.fix and "prefect.api_url" in check.fix


def test_unreachable_node_fails_and_a_disabled_one_warns() -> None:
    url = f"http://127.0.0.1:{closed_port()}"
    check = doctor.check_node(NodeConfig(id="gpu-9", url=url), timeout=1)
    assert check.failed and url in check.detail
    assert "comfyfleet nodes disable gpu-9" in check.fix
    off = doctor.check_node(NodeConfig(id="gpu-8", url=url, enabled=False))
    assert off.status == "WARN" and not off.failed


def test_workflows_that_cannot_run_on_a_node_fail_with_each_problem(tmp_path: Path) -> None:
    from comfyfleet.jobs import load_catalog

    settings = settings_at(tmp_path)
    catalog = load_catalog(settings)
    node = NodeConfig(id="gpu-1", url="http://gpu-1:8188", capabilities=["text_to_image"])
    facts = NodeFacts(label="gpu-1", url=node.url, object_info={}, models={})
    check = doctor.check_node_workflows(node, catalog, facts)
    assert check.failed
    assert "sd15-basic: " in check.detail and "is not installed on this node" in check.detail
    assert "sdxl-basic" not in check.detail  # not a capability of this node
    unreachable = NodeFacts(label="gpu-1", url=node.url, error="unreachable: ConnectError")
    assert doctor.check_node_workflows(node, catalog, unreachable).failed


def test_an_unmigrated_database_fails_with_db_upgrade(tmp_path: Path) -> None:
    check = doctor.check_database(settings_at(tmp_path))
    assert check.failed and "nothing (empty)" in check.detail
    assert check.fix == "run `comfyfleet db upgrade`"
    upgrade(Database(settings_at(tmp_path).database.url))
    assert doctor.check_database(settings_at(tmp_path)).status == "OK"


def test_an_unreachable_database_fails(tmp_path: Path) -> None:
    url = f"mysql+pymysql://nobody:x@127.0.0.1:{closed_port()}/cf"
    check = doctor.check_database(settings_at(tmp_path, database={"url": url}))
    assert check.failed and "cannot connect" in check.detail and "x@" not in check.detail


def test_a_store_that_cannot_be_written_fails(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    check = doctor.check_store_dir("outputs", blocker / "outputs")
    assert check.failed and "store.outputs_dir" in check.fix
    assert doctor.check_store_dir("inputs", tmp_path / "new" / "inputs").status == "OK"


def test_no_enabled_admin_fails(tmp_path: Path) -> None:
    settings = settings_at(tmp_path)
    db = Database(settings.database.url)
    upgrade(db)
    db.run(lambda s: create_user(s, username="alice", password="correct horse battery"))
    check = doctor.check_auth(settings)
    assert check.failed and "users create NAME --admin" in check.fix
    db.run(lambda s: create_user(s, username="root", password="correct horse b", admin=True))
    assert doctor.check_auth(settings).status == "OK"
    db.dispose()
