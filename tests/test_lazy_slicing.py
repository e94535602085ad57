"""Cheap slicing: reading only the kept units from the file, fresh skeletons, and `save_slice` provenance."""

from __future__ import annotations

import json

import pytest
import torch

from snapvit_cli.adapters import get_adapter
from snapvit_cli.api import load, load_bundle
from snapvit_cli.elastic.bundle import write_bundle
from snapvit_cli.fileio import sha256_file
from snapvit_cli.scoring import score_model
from tests.conftest import image_batch, make_small_model, small_model_source


@pytest.fixture
def written(tmp_path, small_name):
    model = make_small_model(small_name)
    scores = score_model(model, "magnitude")
    path = write_bundle(tmp_path / "b.safetensors", model, small_model_source(small_name, model), scores)
    return model, path


@pytest.mark.parametrize(
    "budget", [{"flops": 0.5}, {"flops": 0.8}, {"mlp": 0.5, "heads": 0.0}, {"mlp": 0.0, "heads": 0.0}]
)
def test_read_state_dict_equals_in_memory_cut(written, budget):
    _, path = written
    widths = load_bundle(path).plan(**budget).widths
    from_file = load_bundle(path).read_state_dict(widths)
    in_memory = load_bundle(path).state_dict(widths)
    assert from_file.keys() == in_memory.keys()
    for key, tensor in in_memory.items():
        assert from_file[key].is_contiguous() and from_file[key].dtype == tensor.dtype, key
        assert torch.equal(from_file[key], tensor), key


def test_skeleton_is_fresh_after_slicing(written):
    _, path = written
    bundle = load_bundle(path)
    small = bundle.slice(flops=0.4)
    skeleton = bundle.skeleton()
    assert get_adapter(skeleton).widths() == bundle.dense_widths != get_adapter(small).widths()
    assert all(p.is_meta for p in skeleton.parameters())
    assert skeleton is not bundle.skeleton()


@torch.no_grad()
def test_save_slice_matches_in_process_slice(tmp_path, written):
    model, path = written
    bundle = load_bundle(path)
    plan = bundle.plan(flops=0.6)
    out = bundle.save_slice(tmp_path / "cut", plan)
    config = json.loads((out / "config.json").read_text())
    assert config["bundle_sha256"] == sha256_file(path)
    x = image_batch(model)
    assert torch.equal(load(out)(x), bundle.slice(plan)(x))
