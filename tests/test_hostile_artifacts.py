"""Bundles and sliced folders crafted by a hostile stranger: each is refused with exit 1 and one stderr line, in
under 2 s and 200 MB of peak memory growth, with nothing written (issue 13's fuzz acceptance).

All cases run in one subprocess (``hostile_runner.py``) that imports torch and timm first, so the time and memory
measured are those of reading the hostile file, not of starting Python.
"""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from snapvit_cli.elastic.bundle import ElasticBundle

V1 = Path(__file__).parent / "data" / "v1-bundle.safetensors"
RUNNER = Path(__file__).parent / "hostile_runner.py"
MAX_SECONDS, MAX_RSS_MB = 2.0, 200.0
# The eval every sliced case runs; the control runs it on the untouched folder and must succeed.
EVAL_OPTIONS = ["--data", "demo", "--samples-train", "20", "--samples-test", "10", "--knn-k", "3", "--no-speed"]
EVAL_OPTIONS += ["--json"]
CONTROLS = ("bundle: control (the same crafting, nothing changed)", "sliced: control (the same copy, nothing changed)")
CONTROL_OUTPUT = "out-control"
DEEP = "@@deep@@"


def _craft_bundle(
    dst: Path,
    meta: Callable[[dict], Any] | None = None,
    tensors: Callable[[dict], Any] | None = None,
    text: Callable[[str], str] | None = None,
) -> Path:
    """A copy of the v1 fixture bundle with its metadata, metadata text or tensors changed."""
    state = load_file(V1)
    with safe_open(str(V1), "pt") as f:
        metadata = json.loads(f.metadata()["snapvit"])
    if meta is not None:
        meta(metadata)
    raw = json.dumps(metadata)
    if text is not None:
        raw = text(raw)
    if tensors is not None:
        tensors(state)
    save_file(state, str(dst), metadata={"format": "pt", "snapvit": raw})
    return dst


def _args(m: dict) -> dict:
    return m["source"]["model_args"]


def _deep(depth: int) -> Callable[[str], str]:
    return lambda raw: raw.replace(json.dumps(DEEP), "[" * depth + "]" * depth)


def _set_deep(m: dict) -> None:
    m["scoring"]["settings"] = DEEP


def _nan(raw: str) -> str:
    return raw.replace('"mlp": 0.05', '"mlp": NaN')


def _truncate(path: Path, keep: int) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:keep] if keep >= 0 else data[:keep])


BUNDLE_CASES: dict[str, dict[str, Any]] = {
    "depth 10^9": {"meta": lambda m: _args(m).update(depth=10**9)},
    "depth 10^5 with structure to match": {
        "meta": lambda m: (_args(m).update(depth=10**5), m["structure"].update(num_blocks=10**5))
    },
    "depth 100 on a 2-block file": {
        "meta": lambda m: (_args(m).update(depth=100), m["structure"].update(num_blocks=100))
    },
    "embed_dim 4096 with a small file": {
        "meta": lambda m: (_args(m).update(embed_dim=4096, num_heads=32), m["structure"].update(embed_dim=4096))
    },
    "model_args device": {"meta": lambda m: _args(m).update(device="cuda")},
    "model_args checkpoint_path": {"meta": lambda m: _args(m).update(checkpoint_path="/etc/passwd")},
    "model_args pretrained": {"meta": lambda m: _args(m).update(pretrained=True)},
    "model_args pretrained_cfg_overlay": {"meta": lambda m: _args(m).update(pretrained_cfg_overlay={"file": "/x"})},
    "model_args unknown key": {"meta": lambda m: _args(m).update(block_fn="os.system")},
    "unknown top-level key": {"meta": lambda m: m.update(evil=1)},
    "unknown source key": {"meta": lambda m: m["source"].update(code="import os")},
    "nesting 10^5 (RecursionError in json)": {"meta": _set_deep, "text": _deep(100_000)},
    "nesting 20": {"meta": _set_deep, "text": _deep(20)},
    "min_keep a string": {"meta": lambda m: m["min_keep"].update(mlp="0.05")},
    "min_keep NaN": {"text": _nan},
    "min_keep 1e999": {"text": lambda raw: raw.replace('"mlp": 0.05', '"mlp": 1e999')},
    "min_keep 1.5": {"meta": lambda m: m["min_keep"].update(mlp=1.5)},
    "depth a string": {"meta": lambda m: _args(m).update(depth="2")},
    "depth a boolean": {"meta": lambda m: _args(m).update(depth=True)},
    "architecture a number": {"meta": lambda m: m["source"].update(architecture=5)},
    "architecture of no family": {"meta": lambda m: m["source"].update(architecture="resnet18")},
    "architecture unknown to timm": {"meta": lambda m: m["source"].update(architecture="vit_evil_patch16")},
    "source a list": {"meta": lambda m: m.update(source=[1, 2])},
    "scoring a string": {"meta": lambda m: m.update(scoring="magnitude")},
    "pretrained_cfg input_size 10^5": {
        "meta": lambda m: m["source"]["pretrained_cfg"].update(input_size=[3, 10**5, 10**5])
    },
    "pretrained_cfg unknown key": {"meta": lambda m: m["source"]["pretrained_cfg"].update(file="/etc/passwd")},
    "format version 2": {"meta": lambda m: m.update(format_version=2)},
    "format version 10^30": {"meta": lambda m: m.update(format_version=10**30)},
    "metadata not JSON": {"text": lambda raw: raw[:-5]},
    "metadata of 5 MB": {"meta": lambda m: m["scoring"]["settings"].update({f"k{i}": "x" * 1000 for i in range(5000)})},
    "structure lies about the family": {"meta": lambda m: m["structure"].update(mlp_type="swiglu")},
    "extra tensor": {"tensors": lambda t: t.update(evil=torch.zeros(10))},
    "extra tensor listed as extra that shadows a weight": {"meta": lambda m: m.update(extras=["model.cls_token"])},
    "missing tensor": {"tensors": lambda t: t.pop("model.blocks.1.mlp.fc2.weight")},
    "tensor of the wrong shape": {"tensors": lambda t: t.update({"model.blocks.0.mlp.fc1.bias": torch.zeros(65)})},
    "scores NaN": {"tensors": lambda t: t["scores.mlp"].__setitem__((0, 0), float("nan"))},
    "order not a permutation": {"tensors": lambda t: t["order.mlp"].__setitem__((0, 1), 0)},
    "weights edited": {"tensors": lambda t: t["model.blocks.0.mlp.fc1.weight"].add_(1.0)},
    "weights NaN, no hash recorded": {
        "meta": lambda m: m["source"].update(weights_sha256=""),
        "tensors": lambda t: t["model.blocks.0.mlp.fc1.weight"].__setitem__((0, 0), float("nan")),
    },
}


def _sliced_base(folder: Path) -> Path:
    bundle = ElasticBundle.open(V1)
    return bundle.save_slice(folder, bundle.plan(flops=0.8))


def _craft_sliced(base: Path, dst: Path, case: dict[str, Any]) -> Path:
    shutil.copytree(base, dst)
    config = json.loads((dst / "config.json").read_text())
    if "config" in case:
        case["config"](config)
    raw = json.dumps(config)
    if "text" in case:
        raw = case["text"](raw)
    (dst / "config.json").write_text(raw)
    if "tensors" in case:
        state = load_file(dst / "model.safetensors")
        case["tensors"](state)
        save_file(state, str(dst / "model.safetensors"), metadata={"format": "pt"})
    if "cut" in case:
        _truncate(dst / "model.safetensors", case["cut"])
    return dst


SLICED_CASES: dict[str, dict[str, Any]] = {
    "config model_args device": {"config": lambda c: c["model_args"].update(device="cuda")},
    "config model_args checkpoint_path": {"config": lambda c: c["model_args"].update(checkpoint_path="/etc/passwd")},
    "config depth 10^9": {"config": lambda c: c["model_args"].update(depth=10**9)},
    "config depth 100": {
        "config": lambda c: (c["model_args"].update(depth=100), c["structure"].update(num_blocks=100))
    },
    "config embed_dim 4096": {"config": lambda c: c["model_args"].update(embed_dim=4096, num_heads=32)},
    "config nesting 10^5": {"config": lambda c: c["scoring"].update(settings=DEEP), "text": _deep(100_000)},
    "config NaN": {"text": lambda raw: raw.replace('"gmacs": ', '"gmacs": NaN, "x": ', 1)},
    "config widths a string": {"config": lambda c: c.update(widths="all")},
    "config widths wider than dense": {"config": lambda c: c["widths"]["mlp_hidden"].__setitem__(0, 10**6)},
    "config unknown key": {"config": lambda c: c.update(exec="rm -rf /")},
    "weights extra tensor": {"tensors": lambda t: t.update(evil=torch.zeros(3))},
    "weights wrong shape": {"tensors": lambda t: t.update({"blocks.0.mlp.fc1.bias": torch.zeros(200)})},
    "weights NaN": {"tensors": lambda t: t["blocks.0.mlp.fc1.weight"].__setitem__((0, 0), float("nan"))},
    "weights truncated": {"cut": -100},
    "weights header only": {"cut": 40},
}


# Why each case is refused: a part of its one error line (the path before it differs per run).
EXPECTED = {
    "bundle: depth 10^9": "source.model_args.depth must lie in [1, 128], got 1000000000",
    "bundle: depth 10^5 with structure to match": "source.model_args.depth must lie in [1, 128], got 100000",
    "bundle: depth 100 on a 2-block file": "the file holds 2 blocks but structure.num_blocks is 100",
    "bundle: embed_dim 4096 with a small file": "structure.embed_dim 4096 differs from the file's embedding width 32",
    "bundle: model_args device": "source.model_args may not set device (allowed: ",
    "bundle: model_args checkpoint_path": "source.model_args may not set checkpoint_path (allowed: ",
    "bundle: model_args pretrained": "source.model_args may not set pretrained (allowed: ",
    "bundle: model_args pretrained_cfg_overlay": "source.model_args may not set pretrained_cfg_overlay (allowed: ",
    "bundle: model_args unknown key": "source.model_args may not set block_fn (allowed: ",
    "bundle: unknown top-level key": "bundle metadata has unknown key evil",
    "bundle: unknown source key": "source has unknown key code",
    "bundle: nesting 10^5 (RecursionError in json)": (
        "is neither an elastic bundle nor a sliced model written by snapvit"
    ),
    "bundle: nesting 20": "bundle metadata nests deeper than 8 levels",
    "bundle: min_keep a string": "min_keep.mlp must be a number, not a string",
    "bundle: min_keep NaN": "bundle metadata is not valid JSON (NaN is not a number snapvit accepts)",
    "bundle: min_keep 1e999": "bundle metadata is not valid JSON (1e999 overflows a float)",
    "bundle: min_keep 1.5": "min_keep.mlp must lie in [0, 1], got 1.5",
    "bundle: depth a string": "source.model_args.depth must be an integer, not a string",
    "bundle: depth a boolean": "source.model_args.depth must be an integer, not a boolean",
    "bundle: architecture a number": "source.architecture must be a string, not a number",
    "bundle: architecture of no family": "source.architecture 'resnet18' is not an architecture of a supported family",
    "bundle: architecture unknown to timm": (
        "source.architecture 'vit_evil_patch16' is not an architecture of a supported"
    ),
    "bundle: source a list": "bundle metadata.source must be a JSON object, not a list",
    "bundle: scoring a string": "bundle metadata.scoring must be a JSON object, not a string",
    "bundle: pretrained_cfg input_size 10^5": "source.pretrained_cfg.input_size must lie in [1, 4096], got 100000",
    "bundle: pretrained_cfg unknown key": "source.pretrained_cfg has unknown key file",
    "bundle: format version 2": "bundle format version 2; this snapvit reads version 1; upgrade snapvit",
    "bundle: format version 10^30": "bundle format version unknown; this snapvit reads version 1",
    "bundle: metadata not JSON": "is neither an elastic bundle nor a sliced model written by snapvit",
    "bundle: metadata of 5 MB": "bundle metadata is 5065182 characters long; at most 4194304 are read",
    "bundle: structure lies about the family": (
        "the structure record does not describe the architecture built from source"
    ),
    "bundle: extra tensor": "the file holds 1 tensors the metadata does not list, e.g. ['evil']",
    "bundle: extra tensor listed as extra that shadows a weight": (
        "an extra tensor listed in the metadata shadows a weight"
    ),
    "bundle: missing tensor": (
        "the file is missing 1 tensors the metadata implies, e.g. ['model.blocks.1.mlp.fc2.weight']"
    ),
    "bundle: tensor of the wrong shape": (
        "tensor model.blocks.0.mlp.fc1.bias has shape [65] but the metadata implies [64]"
    ),
    "bundle: scores NaN": "scores.mlp contains NaN or infinity",
    "bundle: order not a permutation": "order.mlp is not a permutation of each block's units",
    "bundle: weights edited": "the weights do not match the weights_sha256 recorded in the bundle",
    "bundle: weights NaN, no hash recorded": (
        "the sliced weights: tensor blocks.0.mlp.fc1.weight contains NaN or infinity"
    ),
    "bundle: truncated": "truncated.safetensors is not a readable safetensors file (truncated or corrupt?)",
    "bundle: cut in the header": "short.safetensors is neither an elastic bundle nor a sliced model: not a safetensors",
    "bundle: header length 2^60": "huge-header.safetensors is neither an elastic bundle nor a sliced model: not a",
    "bundle: a directory": "is a directory but not a sliced model folder (no config.json in it)",
    "sliced: config model_args device": "config.json.model_args may not set device (allowed: ",
    "sliced: config model_args checkpoint_path": "config.json.model_args may not set checkpoint_path (allowed: ",
    "sliced: config depth 10^9": "config.json.model_args.depth must lie in [1, 128], got 1000000000",
    "sliced: config depth 100": "config.json.widths.mlp_hidden must be a list of 100 integers",
    "sliced: config embed_dim 4096": "model_args.embed_dim 4096 differs from the file's embedding width 32",
    "sliced: config nesting 10^5": "config.json nests deeper than 8 levels",
    "sliced: config NaN": "config.json is not valid JSON (NaN is not a number snapvit accepts)",
    "sliced: config widths a string": "config.json.widths must be a JSON object, not a string",
    "sliced: config widths wider than dense": "config.json.widths.mlp_hidden must lie in [1, 64], got 1000000",
    "sliced: config unknown key": "config.json has unknown key exec",
    "sliced: weights extra tensor": "the file holds 1 tensors the metadata does not list, e.g. ['evil']",
    "sliced: weights wrong shape": "tensor blocks.0.mlp.fc1.bias has shape [200] but the metadata implies [23]",
    "sliced: weights NaN": "model.safetensors: tensor blocks.0.mlp.fc1.weight contains NaN or infinity",
    "sliced: weights truncated": "model.safetensors cannot be read (truncated, corrupt or changed while read?)",
    "sliced: weights header only": "model.safetensors cannot be read (truncated, corrupt or changed while read?)",
}


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory) -> dict[str, dict[str, Any]]:
    """Craft every case, run them all in one measuring subprocess; ``{case: result}``."""
    root = tmp_path_factory.mktemp("hostile")
    cases = []
    for i, (name, case) in enumerate(BUNDLE_CASES.items()):
        path = _craft_bundle(root / f"b{i}.safetensors", case.get("meta"), case.get("tensors"), case.get("text"))
        cases.append([f"bundle: {name}", ["slice", str(path), "--flops", "0.8", "-o", str(root / f"out{i}")]])
    truncated = _craft_bundle(root / "truncated.safetensors")
    _truncate(truncated, truncated.stat().st_size - 100)
    short = _craft_bundle(root / "short.safetensors")
    _truncate(short, 30)
    huge_header = root / "huge-header.safetensors"
    huge_header.write_bytes(struct.pack("<Q", 2**60) + b"{}")
    for name, path in (("truncated", truncated), ("cut in the header", short), ("header length 2^60", huge_header)):
        cases.append([f"bundle: {name}", ["slice", str(path), "--flops", "0.8", "-o", str(root / f"out-{name}")]])
    cases.append(["bundle: a directory", ["slice", str(root), "--flops", "0.8", "-o", str(root / "out-dir")]])
    control = _craft_bundle(root / "control.safetensors")  # the same crafting, nothing changed
    cases.append([CONTROLS[0], ["slice", str(control), "--flops", "0.8", "-o", str(root / CONTROL_OUTPUT)]])

    base = _sliced_base(root / "sliced-base")
    for i, (name, case) in enumerate(SLICED_CASES.items()):
        folder = _craft_sliced(base, root / f"s{i}", case)
        cases.append([f"sliced: {name}", ["eval", str(folder), *EVAL_OPTIONS]])
    cases.append([CONTROLS[1], ["eval", str(_craft_sliced(base, root / "s-control", {})), *EVAL_OPTIONS]])

    spec, results = root / "cases.json", root / "results.json"
    spec.write_text(json.dumps(cases))
    listing = sorted(p.name for p in root.iterdir())
    proc = subprocess.run(
        [sys.executable, str(RUNNER), str(spec), str(results), str(V1)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    written = set(p.name for p in root.iterdir()) - set(listing) - {"results.json", CONTROL_OUTPUT}
    assert not written, f"the hostile runs wrote {sorted(written)}"
    found = {r["name"]: r for r in json.loads(results.read_text())}
    found[CONTROLS[0]]["output"] = str(root / CONTROL_OUTPUT)
    return found


ALL = [f"bundle: {n}" for n in BUNDLE_CASES] + [
    f"bundle: {n}" for n in ("truncated", "cut in the header", "header length 2^60", "a directory")
]
ALL += [f"sliced: {n}" for n in SLICED_CASES]


@pytest.mark.parametrize("name", ALL)
def test_hostile_artifact_is_one_line_exit_1_fast_and_small(outcomes, name):
    result = outcomes[name]
    lines = result["stderr"].strip().splitlines()
    assert result["code"] == 1, result
    assert len(lines) == 1 and lines[0].startswith("error: "), result["stderr"]
    assert EXPECTED[name] in lines[0], f"refused for another reason than {EXPECTED[name]!r}: {lines[0]}"
    assert "Traceback" not in result["stderr"]
    assert result["seconds"] < MAX_SECONDS, result
    assert result["rss_mb"] < MAX_RSS_MB, result


def test_every_case_says_why_it_is_refused():
    assert sorted(EXPECTED) == sorted(ALL)


def test_the_same_slice_on_the_untouched_bundle_succeeds(outcomes):
    """The control: the crafting round-trip with nothing changed, through the same runner and options, exits 0."""
    result = outcomes[CONTROLS[0]]
    assert result["code"] == 0 and "error" not in result["stderr"], result
    config = json.loads((Path(result["output"]) / "config.json").read_text())
    assert config["budget"]["target"] == 0.8


def test_the_same_eval_on_the_untouched_folder_succeeds_with_those_options(outcomes):
    """The control of the sliced cases: the same eval options on the untouched copy run and are the ones measured
    (so a case's refusal is the folder's doing, not the options')."""
    result = outcomes[CONTROLS[1]]
    assert result["code"] == 0 and "error" not in result["stderr"], result
    report = json.loads(result["stdout"])
    settings, row = report["settings"], report["results"][0]
    assert (settings["samples_train"], settings["samples_test"], settings["k"], settings["speed"]) == (20, 10, 3, False)
    assert report["dataset"]["train"]["n"] == 20 and report["dataset"]["test"]["n"] == 10
    assert report["target_kind"] == "sliced" and 0.0 <= row["accuracy"]["knn"] <= 1.0


def test_the_base_files_themselves_are_accepted(tmp_path):
    """The crafting round-trip (load_file/save_file) is not what makes the cases fail."""
    copy = _craft_bundle(tmp_path / "same.safetensors")
    bundle = ElasticBundle.open(copy)
    folder = bundle.save_slice(tmp_path / "sliced", bundle.plan(flops=0.8))
    same = _craft_sliced(folder, tmp_path / "same-sliced", {})
    from snapvit_cli.api import load

    assert load(same)(torch.zeros(1, 3, 64, 64)).shape == (1, 10)
