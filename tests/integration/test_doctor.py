"""`comfyfleet doctor` against the real test fleet: Prefect, ComfyUI nodes, the catalog on each
node, the migrated database, the stores and an admin all check out; a node that stops answering
fails the run."""

from __future__ import annotations

from typing import Any

import pytest

from comfyfleet.local import doctor
from comfyfleet.settings import get_settings

pytestmark = pytest.mark.integration


def test_doctor_passes_on_the_test_fleet(
    prefect_fleet: Any, comfy_fleet: list[Any], principals: Any
) -> None:
    checks = doctor.run_checks(get_settings())
    print("\n".join(doctor.render(checks)))
    by_name = {c.name: c for c in checks}
    assert not [c for c in checks if c.failed], "\n".join(doctor.render(checks))
    assert by_name["prefect"].detail.startswith("Prefect 3.")
    for node in comfy_fleet:
        assert "ComfyUI 0.3.75" in by_name[f"node {node.id}"].detail
        assert by_name[f"workflows @ {node.id}"].status == "OK"
    assert by_name["database"].status == "OK" and "root" in by_name["auth"].detail


def test_doctor_fails_for_a_node_that_is_down(
    prefect_fleet: Any, disposable_node: Any, principals: Any
) -> None:
    from comfyfleet.settings import NodeConfig

    node = NodeConfig(id="doc-1", url=disposable_node.url)
    assert doctor.check_node(node).status == "OK"
    disposable_node.kill()
    check = doctor.check_node(node, timeout=2)
    assert check.failed and disposable_node.url in check.detail
