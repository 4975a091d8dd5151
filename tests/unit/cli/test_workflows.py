"""`comfyfleet workflows list|check|reload|new`."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from comfyfleet.cli import main
from tests.unit.catalog.test_catalog import BUNDLED
from tests.unit.cli.configs import use_config


def test_workflows_list_prints_a_table(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    use_config(tmp_path, monkeypatch)
    assert main(["workflows", "list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:3] == ["WORKFLOW", "CAPABILITY", "TITLE"]
    rows = {line.split()[0]: line for line in lines[2:]}
    assert set(rows) == {
        "delay",
        "fail",
        "sd15-basic",
        "sd15-img2img",
        "sd15-upscale",
        "sdxl-basic",
        "svd-basic",
    }
    assert "checkpoints: tiny-svd.ckpt" in rows["svd-basic"]


def test_workflows_list_json_has_the_schemas(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    use_config(tmp_path, monkeypatch)
    assert main(["workflows", "list", "--json"]) == 0
    doc = {w["id"]: w for w in json.loads(capsys.readouterr().out)}
    width = doc["sd15-basic"]["parameters"]["properties"]["width"]
    assert width["default"] == 64  # the fleet default
    assert doc["svd-basic"]["parameters"]["required"] == ["image"]


def test_workflows_check_reports_an_unreachable_node(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    use_config(tmp_path, monkeypatch)
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    assert main(["workflows", "check", "--node", url, "--timeout", "2"]) == 1
    out = capsys.readouterr().out
    assert "7 workflows pass the static checks." in out
    rows = [line.split() for line in out.splitlines() if line.startswith("sd15-basic ")]
    assert rows == [["sd15-basic", "text_to_image", url, "UNREACHABLE"]]


def test_workflows_check_static_and_reload(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    use_config(tmp_path, monkeypatch)
    assert main(["workflows", "check", "--static"]) == 0
    assert main(["workflows", "reload"]) == 0
    assert "Reloaded 7 workflows" in capsys.readouterr().out


def test_workflows_new_writes_a_draft_that_loads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "mine"
    use_config(tmp_path, monkeypatch, workflow_dirs=[str(out)])
    source = BUNDLED / "image_to_video" / "svd-basic.json"
    assert main(["workflows", "new", str(source), "--id", "my-svd"]) == 0
    printed = capsys.readouterr().out
    folder = out / "image_to_video"  # the guessed capability, in the first configured dir
    assert (folder / "my-svd.json").read_text() == source.read_text()  # unchanged
    assert (folder / "my-svd.yaml").read_text().startswith("# DRAFT")
    assert f"wrote {folder / 'my-svd.yaml'}" in printed
    assert "capability: image_to_video (guessed)" in printed
    assert "`comfyfleet workflows check` and `comfyfleet workflows reload`" in printed
    assert main(["workflows", "list", "--json"]) == 0
    [listed] = json.loads(capsys.readouterr().out)
    assert listed["id"] == "my-svd" and listed["parameters"]["required"] == ["image"]

    # again: it names what it will not overwrite
    assert main(["workflows", "new", str(source), "--id", "my-svd"]) == 1
    err = capsys.readouterr().err
    assert "will not overwrite" in err and str(folder / "my-svd.json") in err
    assert str(folder / "my-svd.yaml") in err


def test_workflows_new_with_out_capability_and_json(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    use_config(tmp_path, monkeypatch)
    graph = tmp_path / "portrait.json"
    graph.write_text((BUNDLED / "text_to_image" / "sd15-basic.json").read_text())
    argv = ["workflows", "new", str(graph), "--capability", "portraits", "--out",
            str(tmp_path / "drafts"), "--json"]  # fmt: skip
    assert main(argv) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["workflow"] == "portrait" and doc["capability"] == "portraits"
    assert doc["contract"] == str(tmp_path / "drafts" / "portraits" / "portrait.yaml")
    assert {"prompt", "seed", "steps", "width", "height"} <= set(doc["parameters"])
    assert doc["in_catalog"] is False
    # text: says the directory is not in the catalog
    argv = ["workflows", "new", str(graph), "--id", "p2", "--out", str(tmp_path / "drafts")]
    assert main(argv) == 0
    assert "is not one of the configured workflow_dirs" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("content", "argv", "message"),
    [
        ('{"nodes": [], "links": []}', [], 'export the graph with "Save (API)"'),
        ("{\n oops", [], "g.json: not valid JSON: line 2, column 2"),
        (None, ["--id", "sd15-basic"], "workflow id 'sd15-basic' is taken by"),
        (None, ["--id", "../up"], "bad workflow id"),
    ],
)  # fmt: skip
def test_workflows_new_refuses(
    content: str | None, argv: list[str], message: str, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    use_config(tmp_path, monkeypatch)
    graph = tmp_path / "g.json"
    graph.write_text(content or (BUNDLED / "text_to_image" / "sd15-basic.json").read_text())
    assert main(["workflows", "new", str(graph), "--out", str(tmp_path / "o"), *argv]) == 1
    assert message in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
