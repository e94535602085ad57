"""Hostile inputs built in the tests (no binary blobs): small real bundles and sliced folders from
``conftest.SMALL_CONFIGS``, then edited the way a stranger would edit them (metadata, tensors, dtypes).

Shared by the ``test_hardening_*`` modules (issue 23)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import timm
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from snapvit_cli.adapters import get_adapter
from snapvit_cli.elastic.bundle import ElasticBundle, write_bundle
from snapvit_cli.scoring.magnitude import magnitude_scores
from tests.conftest import SMALL_CONFIGS, small_model_source


def small_bundle(path: Path, name: str = "dino", **overrides: Any) -> Path:
    """A real bundle of the small ``name`` config (``overrides`` change its timm arguments), magnitude-scored."""
    arch, kwargs = SMALL_CONFIGS[name]
    torch.manual_seed(0)
    model = timm.create_model(arch, pretrained=False, **{**kwargs, **overrides}).eval()
    source = small_model_source(name, model)
    source = type(source)(**{**source.__dict__, "model_args": {**kwargs, **overrides}})
    write_bundle(path, model, source, magnitude_scores(model, get_adapter(model)))
    return path


def sliced_folder(bundle: Path, out: Path, **budget: float) -> Path:
    """The folder ``snapvit slice BUNDLE --mlp M --heads H -o OUT`` writes (default: half the MLP neurons)."""
    opened = ElasticBundle.open(bundle)
    return opened.save_slice(out, opened.plan(**(budget or {"mlp": 0.5, "heads": 0.0})))


def edit_safetensors(
    src: Path,
    dst: Path,
    *,
    meta: Callable[[dict], Any] | None = None,
    tensors: Callable[[dict[str, torch.Tensor]], Any] | None = None,
) -> Path:
    """A copy of the safetensors file ``src`` with its ``snapvit`` metadata (parsed JSON) and/or tensors changed."""
    state = load_file(str(src))
    with safe_open(str(src), "pt") as f:
        header = dict(f.metadata() or {})
    if meta is not None:
        record = json.loads(header["snapvit"])
        meta(record)
        header["snapvit"] = json.dumps(record)
    if tensors is not None:
        tensors(state)
    save_file({k: v.contiguous() for k, v in state.items()}, str(dst), metadata=header)
    return dst


def edit_config(folder: Path, edit: Callable[[dict], Any]) -> Path:
    """Rewrite a sliced folder's ``config.json`` through ``edit`` (the parsed record, changed in place)."""
    path = folder / "config.json"
    record = json.loads(path.read_text())
    edit(record)
    path.write_text(json.dumps(record, indent=2, sort_keys=True))
    return folder
