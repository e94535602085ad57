"""Helpers for the Hub tests: point huggingface_hub at a loopback server, and build real snapvit artifacts.

The artifacts come from the core itself (a small random-init ViT from ``conftest.SMALL_CONFIGS``, scored,
written as an elastic bundle, sliced to half its FLOPs), so the Hub code is tested on exactly what users push.
"""

from __future__ import annotations

import dataclasses
import importlib
import shutil
import socket
from pathlib import Path

from huggingface_hub import constants

from snapvit_cli.elastic.bundle import ElasticBundle, write_bundle
from snapvit_cli.elastic.sliced import save_sliced, sliced_config
from snapvit_cli.fileio import sha256_file
from snapvit_cli.hub_client import forget_reachability
from snapvit_cli.scoring import score_model
from tests.conftest import make_small_model, small_model_source

TOKEN = "hf_snapvitTEST0123456789abcdefXYZ"
SMALL = "dino"
BASE_HUB_ID = "timm/vit_small_patch16_224.dino"
BASE_LICENSE = "apache-2.0"
SLICE_FLOPS = 0.5

_HUB_ENV = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE",
            "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_TOKEN_PATH", "HF_HUB_DISABLE_XET")  # fmt: skip


def point_client_at(monkeypatch, home: Path, endpoint: str, **env: str) -> None:
    """Point huggingface_hub at ``endpoint`` with an isolated ``HF_HOME`` (no saved token, empty cache).

    ``huggingface_hub.constants`` reads the environment at import, so it is reloaded here; call
    :func:`restore_client` after ``monkeypatch.undo()`` to reload it with the original environment.
    """
    for name in _HUB_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    monkeypatch.setenv("HF_HOME", str(home))
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    importlib.reload(constants)
    forget_reachability()  # loopback ports are reused: a new server may sit where a silent one was


def restore_client() -> None:
    importlib.reload(constants)
    forget_reachability()


def build_artifacts(folder: Path) -> tuple[Path, Path]:
    """A real elastic bundle and the sliced model cut from it at ``SLICE_FLOPS``, under ``folder``."""
    model = make_small_model(SMALL)
    # stands for timm's pretrained Hub weights (pretrained=True), which is what a card may name as base model
    source = dataclasses.replace(
        small_model_source(SMALL, model), hf_hub_id=BASE_HUB_ID, license=BASE_LICENSE, origin="hub"
    )
    bundle_path = write_bundle(folder / "small.safetensors", model, source, score_model(model, "magnitude"))
    bundle = ElasticBundle.open(bundle_path)
    plan = bundle.plan(flops=SLICE_FLOPS)
    config = sliced_config(bundle.metadata, plan, bundle_sha256=sha256_file(bundle_path))
    sliced_dir = save_sliced(folder / "sliced", bundle.state_dict(plan.widths), config)
    return bundle_path, sliced_dir


def copy_artifacts(built: tuple[Path, Path], dest: Path) -> tuple[Path, Path]:
    """Private copies of :func:`build_artifacts`' outputs, so a test may change them."""
    bundle_path, sliced_dir = built
    dest.mkdir(parents=True, exist_ok=True)
    return Path(shutil.copy2(bundle_path, dest / bundle_path.name)), Path(
        shutil.copytree(sliced_dir, dest / sliced_dir.name)
    )


def snapshot(path: Path) -> dict[str, tuple[bytes, int]]:
    """Content and mtime of every file under ``path`` (or of ``path`` itself)."""
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return {str(f): (f.read_bytes(), f.stat().st_mtime_ns) for f in files}


def free_port() -> int:
    """A port nothing listens on: bound once to find it, then closed."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
