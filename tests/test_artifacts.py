"""One resolver decides what a path or hf-hub id is; the API, eval and push agree with it on every kind."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

import snapvit_cli
from snapvit_cli.elastic.artifacts import resolve_artifact
from snapvit_cli.errors import BundleError, SnapvitError
from snapvit_cli.evaluation.evaluate import open_target
from snapvit_cli.hub.push import push
from tests.hub_artifacts import TOKEN, point_client_at, restore_client
from tests.hub_server import FakeHub


@pytest.fixture
def hub(tmp_path, monkeypatch, built):
    bundle_path, sliced_dir = built
    with FakeHub(token=TOKEN) as server:
        point_client_at(monkeypatch, tmp_path / "hf-home", server.url)
        push(bundle_path, "tester/elastic", token=TOKEN)
        push(sliced_dir, "tester/half", token=TOKEN)
        yield server
    monkeypatch.undo()
    restore_client()


def _specs(built, tmp_path) -> dict[str, tuple[str, str | None]]:
    """name -> (spec, expected kind or None for an error)."""
    bundle_path, sliced_dir = built
    junk_text = tmp_path / "notes.safetensors"
    junk_text.write_text("not a safetensors file")
    foreign = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(2)}, str(foreign))
    empty_dir = tmp_path / "empty"
    empty_dir.mkdir()
    return {
        "bundle file": (str(bundle_path), "bundle"),
        "sliced folder": (str(sliced_dir), "sliced"),
        "sliced config.json": (str(sliced_dir / "config.json"), "sliced"),
        "sliced model.safetensors": (str(sliced_dir / "model.safetensors"), "sliced"),
        "hub bundle": ("hf-hub:tester/elastic", "bundle"),
        "hub sliced": ("hf-hub:tester/half", "sliced"),
        "junk file": (str(junk_text), None),
        "foreign safetensors": (str(foreign), None),
        "folder without config": (str(empty_dir), None),
        "missing path": (str(tmp_path / "nothing.safetensors"), None),
    }


def test_every_kind_resolves_the_same_everywhere(hub, built, tmp_path):
    for name, (spec, kind) in _specs(built, tmp_path).items():
        if kind is None:
            for call in (resolve_artifact, snapvit_cli.load, lambda s: open_target(s)):
                with pytest.raises(BundleError):
                    call(spec)
            if not spec.startswith("hf-hub:"):
                with pytest.raises(BundleError):
                    push(spec, "tester/x", dry_run_dir=tmp_path / f"dry-{len(name)}")
            continue
        artifact = resolve_artifact(spec)
        assert artifact.kind == kind, name
        assert open_target(spec).kind == kind, name
        model = snapvit_cli.load(spec)
        assert hasattr(model, "snapvit_config") == (kind == "sliced"), name
        if kind == "bundle":
            assert snapvit_cli.load_bundle(spec).path == artifact.path
        else:
            with pytest.raises(BundleError, match="is a sliced model, not an elastic bundle"):
                snapvit_cli.load_bundle(spec)
        if not spec.startswith("hf-hub:"):
            dry = tmp_path / f"dry-{name.replace(' ', '-')}"
            assert push(spec, "tester/x", dry_run_dir=dry).kind == kind, name


def test_directory_error_says_directory(tmp_path):
    with pytest.raises(BundleError, match="is a directory but not a sliced model folder"):
        resolve_artifact(tmp_path)


def test_revision_only_for_hub_ids(built):
    with pytest.raises(SnapvitError, match="only applies to hf-hub"):
        resolve_artifact(built[0], revision="main")
