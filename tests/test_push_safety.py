"""`snapvit push` uploads only what it means to: symbolic links and unloadable folders are refused before any
request reaches the (loopback) Hub; with --follow-links a link inside the folder is uploaded as its target."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from snapvit_cli.cli.app import app
from snapvit_cli.errors import BundleError
from snapvit_cli.hub.push import folder_files
from tests.hub_artifacts import TOKEN, copy_artifacts, point_client_at, restore_client
from tests.hub_server import FakeHub

runner = CliRunner()
REPO = "tester/small-half"


@pytest.fixture
def sliced(built, tmp_path) -> Path:
    return copy_artifacts(built, tmp_path / "mine")[1]


@pytest.fixture
def hub(tmp_path, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    with FakeHub(token=TOKEN) as server:
        point_client_at(monkeypatch, tmp_path / "hf-home", server.url)
        yield server
    monkeypatch.undo()
    restore_client()


def push(folder: Path, *args: str):
    return runner.invoke(app, ["push", str(folder), "--repo", REPO, "--token", TOKEN, "--quiet", *args])


def assert_refused(result, hub: FakeHub, *needles: str) -> None:
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit), result.exception
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and all(n in lines[0] for n in needles), result.stderr
    assert hub.requests == []  # refused before anything was sent


def test_symlink_to_a_file_outside_is_refused(hub, sliced, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("do not upload")
    (sliced / "notes.txt").symlink_to(secret)
    assert_refused(push(sliced), hub, "symbolic links (notes.txt)")
    assert_refused(push(sliced, "--follow-links"), hub, "point outside the folder (notes.txt)")


def test_symlinked_directory_is_refused_and_every_link_named(hub, sliced, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "key").write_text("private")
    (sliced / "extra").symlink_to(outside, target_is_directory=True)
    (sliced / "docs").mkdir()
    (sliced / "docs" / "card.md").symlink_to(sliced / "config.json")
    assert_refused(push(sliced), hub, "symbolic links (docs/card.md, extra)")


def test_follow_links_uploads_targets_inside_the_folder(hub, sliced):
    (sliced / "docs").mkdir()
    (sliced / "docs" / "notes.txt").write_text("notes")
    (sliced / "config-copy.json").symlink_to("config.json")
    (sliced / "docs-again").symlink_to("docs", target_is_directory=True)
    assert_refused(push(sliced), hub, "symbolic links (config-copy.json, docs-again)")
    result = push(sliced, "--follow-links")
    assert result.exit_code == 0, result.output
    files = hub.files(REPO)
    assert files["config-copy.json"] == (sliced / "config.json").read_bytes()
    assert files["docs-again/notes.txt"] == files["docs/notes.txt"] == b"notes"


def test_a_link_loop_is_refused(sliced):
    (sliced / "docs").mkdir()
    (sliced / "docs" / "up").symlink_to("..", target_is_directory=True)
    with pytest.raises(BundleError, match="the symbolic link docs/up makes a loop; remove it to push"):
        folder_files(sliced, follow_links=True)


def test_fifo_and_hidden_files_are_not_uploaded(sliced):
    os.mkfifo(sliced / "pipe.bin")  # reading it would block
    (sliced / ".cache").mkdir()
    (sliced / ".cache" / "x").write_text("x")
    assert sorted(folder_files(sliced)) == ["config.json", "model.safetensors"]


def test_truncated_weights_are_refused(hub, sliced):
    weights = sliced / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    assert_refused(push(sliced), hub, str(sliced))


def test_weights_that_do_not_match_config_are_refused(hub, sliced):
    import json

    config = json.loads((sliced / "config.json").read_text())
    config["widths"]["mlp_hidden"][0] += 1
    (sliced / "config.json").write_text(json.dumps(config))
    assert_refused(push(sliced), hub, str(sliced))


def test_dry_run_never_replaces_the_pushed_folder(hub, sliced):
    assert_refused(push(sliced, "--dry-run", str(sliced), "--force"), hub, "it is the input")
    assert sorted(p.name for p in sliced.iterdir()) == ["config.json", "model.safetensors"]
