"""Elastic bundles: writing keeps the model's function, reading validates everything, slicing is a prefix."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from snapvit_cli.adapters import get_adapter
from snapvit_cli.api import load, load_bundle
from snapvit_cli.elastic.bundle import write_bundle
from snapvit_cli.errors import BundleError, OutputExistsError
from snapvit_cli.scoring import score_model
from tests.conftest import image_batch, make_small_model, small_model_source


@pytest.fixture
def written(tmp_path, small_name):
    model = make_small_model(small_name)
    scores = score_model(model, "magnitude")
    path = write_bundle(tmp_path / "b.safetensors", model, small_model_source(small_name, model), scores)
    return model, path


@torch.no_grad()
def test_bundle_dense_model_keeps_outputs(written):
    model, path = written
    x = image_batch(model)
    dense = load_bundle(path).dense_model()
    assert (dense(x) - model(x)).abs().max() < 1e-5


def test_bundle_scores_and_order(written):
    model, path = written
    tensors = load_file(path)
    expected = score_model(model, "magnitude")
    assert torch.equal(tensors["scores.mlp"], expected.mlp) and tensors["scores.mlp"].dtype == torch.float64
    bundle = load_bundle(path)
    for kind in ("mlp", "heads"):
        ordered = bundle.scores[kind]
        assert torch.all(ordered[:, :-1] >= ordered[:, 1:])  # descending: any budget is a prefix
        assert torch.equal(ordered, tensors[f"scores.{kind}"].gather(1, tensors[f"order.{kind}"]))
    source = bundle.source_scores()  # the scored model's order: what pairs with the source model's units
    assert torch.equal(source["mlp"], expected.mlp) and torch.equal(source["heads"], expected.heads)
    assert not torch.equal(source["mlp"], bundle.scores["mlp"])  # magnitude scores are not already descending


def test_metadata_is_self_describing(written):
    _, path = written
    with safe_open(str(path), "pt") as f:
        header = f.metadata()
    assert header["format"] == "pt"
    meta = json.loads(header["snapvit"])
    assert meta["format_version"] == 1 and meta["kind"] == "elastic-bundle"
    assert {"mean", "std", "input_size", "interpolation"} <= set(meta["source"]["pretrained_cfg"])
    assert len(meta["source"]["weights_sha256"]) == 64
    assert meta["scoring"]["method"] == "magnitude" and meta["min_keep"] == {"mlp": 0.05, "heads": 0.2}
    assert meta["snapvit_version"]


@torch.no_grad()
def test_slice_switches_budget_and_roundtrips(tmp_path, written):
    from snapvit_cli.elastic.sliced import save_sliced, sliced_config

    model, path = written
    bundle = load_bundle(path)
    x = image_batch(model)
    small, large = bundle.plan(flops=0.6), bundle.plan(flops=0.9)
    first = bundle.slice(small)(x)
    assert not torch.allclose(bundle.slice(large)(x), first)
    assert torch.equal(bundle.slice(small)(x), first)  # switching back gives the same model
    out = save_sliced(tmp_path / "sliced", bundle.state_dict(small.widths), sliced_config(bundle.metadata, small))
    reloaded = load(out)
    assert torch.equal(reloaded(x), first)
    assert get_adapter(reloaded).widths() == small.widths
    assert sum(p.numel() for p in reloaded.parameters()) == small.params


def test_slice_refuses_a_plan_together_with_a_budget(written):
    _, path = written
    bundle = load_bundle(path)
    with pytest.raises(TypeError, match=r"give a plan or a budget, not both \(got a plan and flops\)"):
        bundle.slice(bundle.plan(flops=0.9), flops=0.5)  # was: the 0.9 plan, the 0.5 silently ignored
    assert get_adapter(bundle.slice(flops=0.5)).widths() == bundle.plan(flops=0.5).widths


def test_sliced_model_does_not_alias_bundle(written):
    _, path = written
    bundle = load_bundle(path)
    model = bundle.slice(flops=1.0)
    before = {k: v.clone() for k, v in bundle.weights().items()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    assert all(torch.equal(before[k], v) for k, v in bundle.weights().items())


def test_refuses_overwrite(tmp_path):
    model = make_small_model("dino")
    path = tmp_path / "b.safetensors"
    write_bundle(path, model, small_model_source("dino", model), score_model(model, "magnitude"))
    with pytest.raises(OutputExistsError):
        write_bundle(path, model, small_model_source("dino", model), score_model(model, "magnitude"))


# --- validation -----------------------------------------------------------------------------------------------------
@pytest.fixture
def dino_bundle(tmp_path):
    model = make_small_model("dino")
    scores = score_model(model, "magnitude")
    return write_bundle(tmp_path / "ok.safetensors", model, small_model_source("dino", model), scores)


def _rewrite(path, target, *, tensors=None, meta_update=None, header=None):
    data = load_file(path)
    with safe_open(str(path), "pt") as f:
        metadata = dict(f.metadata())
    meta = json.loads(metadata["snapvit"])
    meta.update(meta_update or {})
    metadata["snapvit"] = json.dumps(meta)
    if header is not None:
        metadata = header
    save_file(tensors(data) if tensors else data, str(target), metadata=metadata)
    return target


def test_truncated_bundle(tmp_path, dino_bundle):
    bad = tmp_path / "truncated.safetensors"
    bad.write_bytes(dino_bundle.read_bytes()[:-1000])
    with pytest.raises(BundleError, match="truncated or corrupt"):
        load_bundle(bad)


def test_garbage_file(tmp_path):
    bad = tmp_path / "x.safetensors"
    bad.write_bytes(b"\x00" * 100)
    with pytest.raises(BundleError):
        load_bundle(bad)


def test_wrong_format_version(tmp_path, dino_bundle):
    bad = _rewrite(dino_bundle, tmp_path / "v9.safetensors", meta_update={"format_version": 9})
    with pytest.raises(BundleError, match="format version 9.*upgrade"):
        load_bundle(bad)


def test_not_a_bundle(tmp_path, dino_bundle):
    bad = _rewrite(dino_bundle, tmp_path / "plain.safetensors", header={"format": "pt"})
    with pytest.raises(BundleError, match="neither an elastic bundle nor a sliced model"):
        load_bundle(bad)


def test_tensor_shape_disagrees_with_metadata(tmp_path, dino_bundle):
    def shrink(data):
        data["model.blocks.1.mlp.fc1.weight"] = data["model.blocks.1.mlp.fc1.weight"][:-1].contiguous()
        return data

    bad = _rewrite(dino_bundle, tmp_path / "shape.safetensors", tensors=shrink)
    with pytest.raises(BundleError, match="blocks.1.mlp.fc1.weight"):
        load_bundle(bad)


def test_missing_scores(tmp_path, dino_bundle):
    def drop(data):
        del data["scores.heads"]
        return data

    with pytest.raises(BundleError, match="missing"):
        load_bundle(_rewrite(dino_bundle, tmp_path / "missing.safetensors", tensors=drop))


def test_order_not_a_permutation(tmp_path, dino_bundle):
    def break_order(data):
        data["order.mlp"][0, 0] = data["order.mlp"][0, 1]
        return data

    with pytest.raises(BundleError, match="permutation"):
        load_bundle(_rewrite(dino_bundle, tmp_path / "order.safetensors", tensors=break_order))


def test_missing_file(tmp_path):
    with pytest.raises(BundleError, match="does not exist"):
        load_bundle(tmp_path / "nope.safetensors")
