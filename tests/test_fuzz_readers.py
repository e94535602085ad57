"""Property-based fuzzing of the readers of files from strangers (issue 23): safetensors headers and bundle
metadata, a sliced model's ``config.json``, ``.npz`` image archives and published score pickles.

Every generated input must end in success or a :class:`~snapvit_cli.errors.SnapvitError` (the CLI's one ``error:``
line), within :data:`SECONDS` per input and without growing the process's peak memory by more than
:data:`PEAK_GROWTH` over the whole module: inputs here are a few kB to a MB, so the resource rule (2·S + 1 GB)
allows about 1 GB. Examples are derandomised so that CI is repeatable; ``HYPOTHESIS_PROFILE=deep`` runs many more
with fresh randomness. The module takes about a minute of CI time.
"""

from __future__ import annotations

import io
import json
import os
import resource
import shutil
import struct
import time
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from snapvit_cli.errors import SnapvitError

SECONDS = 10.0  # per input: the readers refuse in well under a second; a hang or a huge allocation does not
PEAK_GROWTH = 1 << 30  # bytes of peak RSS the whole module may add

settings.register_profile(
    "ci",
    derandomize=True,
    deadline=None,  # timed below, generously: six processes share two cores in CI
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile("deep", parent=settings.get_profile("ci"), derandomize=False, max_examples=2000)
PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "ci")


def examples(ci: int):
    """``ci`` examples in CI; the deep profile's count otherwise."""
    profile = settings.get_profile(PROFILE)
    return settings(profile, max_examples=ci if PROFILE == "ci" else profile.max_examples)


def peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kB on Linux


START_PEAK = peak_rss()


def accepted_or_refused(read, *args: Any) -> str:
    """Run a reader: success or a SnapvitError, within SECONDS, and the module's peak memory within bounds."""
    start = time.monotonic()
    try:
        read(*args)
        outcome = "ok"
    except SnapvitError as exc:
        message = str(exc)
        assert message and "\n" not in message, repr(message)
        outcome = "refused"
    assert time.monotonic() - start < SECONDS, f"took {time.monotonic() - start:.1f} s"
    assert peak_rss() - START_PEAK < PEAK_GROWTH, f"peak RSS grew by {(peak_rss() - START_PEAK) >> 20} MiB"
    event(outcome)  # --hypothesis-show-statistics: how many inputs were accepted and refused
    return outcome


# -- values a hostile file may hold --------------------------------------------------------------------------

EDGE_INTS = st.sampled_from([0, 1, -1, 2, 3, 7, 8, 2**15, 2**31 - 1, 2**31, 2**53 + 1, 2**63, 10**12, 10**30])
SCALARS = (
    st.none()
    | st.booleans()
    | EDGE_INTS
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
    | st.sampled_from(["F32", "F64", "BF16", "I64", "U8", "F8_E4M3", "vit_small_patch16_224", "\x1b[2J", ""])
)
JSON_VALUES = st.recursive(
    SCALARS,
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids, max_size=4),
    max_leaves=12,
)


def paths_of(value: Any, prefix: tuple = ()) -> list[tuple]:
    """Every path (keys / indices) into a JSON value, the value itself included."""
    found = [prefix]
    if isinstance(value, dict):
        for key, item in value.items():
            found += paths_of(item, (*prefix, key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            found += paths_of(item, (*prefix, i))
    return found


def mutated(data: st.DataObject, value: Any, rounds: int = 3) -> Any:
    """``value`` (JSON) with up to ``rounds`` random edits: a value replaced, a key deleted or added."""
    value = json.loads(json.dumps(value))
    for _ in range(data.draw(st.integers(1, rounds))):
        path = data.draw(st.sampled_from(paths_of(value)))
        action = data.draw(st.sampled_from(["replace", "delete", "add"]))
        if not path:
            value = data.draw(JSON_VALUES) if action == "replace" else value
            continue
        parent = value
        for key in path[:-1]:
            parent = parent[key]
        if action == "delete" and isinstance(parent, dict):
            del parent[path[-1]]
        elif action == "add" and isinstance(parent, dict):
            parent[data.draw(st.text(max_size=8))] = data.draw(JSON_VALUES)
        else:
            parent[path[-1]] = data.draw(JSON_VALUES)
    return value


# -- artifacts to mutate, built once ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory) -> tuple[Path, Path]:
    """A small real bundle (random-init ViT, magnitude-like scores) and a sliced folder cut from it."""
    from snapvit_cli.api import load_bundle
    from snapvit_cli.elastic.bundle import write_bundle
    from snapvit_cli.scoreset import ScoreSet
    from tests.conftest import make_small_model, small_model_source

    folder = tmp_path_factory.mktemp("fuzz")
    model = make_small_model("dino")
    generator = torch.Generator().manual_seed(0)
    scores = ScoreSet(mlp=torch.rand(3, 96, generator=generator), heads=torch.rand(3, 4, generator=generator),
                      method="magnitude")  # fmt: skip
    bundle = write_bundle(folder / "b.safetensors", model, small_model_source("dino", model), scores)
    sliced = folder / "sliced"
    elastic = load_bundle(bundle)
    elastic.save_slice(sliced, elastic.plan(flops=0.5))
    return bundle, sliced


def split_safetensors(blob: bytes) -> tuple[dict, bytes]:
    (size,) = struct.unpack("<Q", blob[:8])
    return json.loads(blob[8 : 8 + size]), blob[8 + size :]


def join_safetensors(header: Any, body: bytes) -> bytes:
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + body


def load_any(path: Path) -> None:
    """What `load` and `eval` do first with any artifact: resolve it and build the model."""
    import snapvit_cli

    snapvit_cli.load(path)


# -- safetensors headers and bundle metadata ----------------------------------------------------------------------


@examples(80)
@given(data=st.data())
def test_fuzz_bundle_header(artifacts, tmp_path, data):
    """A real bundle whose safetensors header (tensor names, dtypes, shapes, offsets) was edited at random."""
    bundle, _ = artifacts
    header, body = split_safetensors(bundle.read_bytes())
    tensors = {k: v for k, v in header.items() if k != "__metadata__"}
    edited = mutated(data, tensors)
    if isinstance(edited, dict):
        edited["__metadata__"] = header["__metadata__"]
    path = tmp_path / "fuzz.safetensors"
    path.write_bytes(join_safetensors(edited, body))
    accepted_or_refused(load_any, path)


@examples(100)
@given(data=st.data())
def test_fuzz_bundle_metadata(artifacts, tmp_path, data):
    """A real bundle whose snapvit metadata record (source, structure, scoring, min_keep...) was edited at
    random: strangers' metadata is data, never constructor arguments."""
    bundle, _ = artifacts
    header, body = split_safetensors(bundle.read_bytes())
    record = json.loads(header["__metadata__"]["snapvit"])
    header["__metadata__"]["snapvit"] = json.dumps(mutated(data, record, rounds=4))
    path = tmp_path / "fuzz.safetensors"
    path.write_bytes(join_safetensors(header, body))
    accepted_or_refused(load_any, path)


@examples(60)
@given(prefix=st.binary(max_size=8), text=st.binary(max_size=200), body=st.binary(max_size=64),
       size=st.one_of(st.none(), EDGE_INTS.filter(lambda n: 0 <= n < 2**64)))  # fmt: skip
def test_fuzz_safetensors_bytes(tmp_path, prefix, text, body, size):
    """Arbitrary bytes behind a header length that may lie (or no valid length at all)."""
    head = struct.pack("<Q", len(text) if size is None else size) if len(prefix) < 8 else prefix
    path = tmp_path / "junk.safetensors"
    path.write_bytes(head + text + body)
    accepted_or_refused(load_any, path)


# -- a sliced model's config.json -------------------------------------------------------------------------------


@examples(100)
@given(data=st.data())
def test_fuzz_sliced_config(artifacts, tmp_path, data):
    _, sliced = artifacts
    folder = tmp_path / "model"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir()
    shutil.copy(sliced / "model.safetensors", folder / "model.safetensors")
    config = json.loads((sliced / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(mutated(data, config, rounds=4)))
    accepted_or_refused(load_any, folder)


# -- .npz image archives ----------------------------------------------------------------------------------------

DTYPES = st.sampled_from(["u1", "i1", "<u2", "<i8", "<f4", "?", "<U3", "S2", ">i4"])


def read_npz(path: Path, split: str) -> None:
    from snapvit_cli.data import load_images

    data = load_images(str(path), split)
    data[len(data) - 1]  # serve the last image


IMAGES = st.tuples(st.just("u1"), st.tuples(st.integers(1, 4), st.integers(1, 6), st.integers(1, 6), st.integers(1, 4)))
LABELS = st.tuples(st.sampled_from(["<i8", "u1", "<f4"]), st.lists(st.integers(0, 4), max_size=2))


@examples(100)
@given(
    shapes=st.dictionaries(
        st.sampled_from(["x", "y", "x_train", "y_train", "x_test", "y_test", "classes", "other"]),
        st.tuples(DTYPES, st.lists(st.integers(0, 6), max_size=5)),
        max_size=4,
    )
    | st.fixed_dictionaries({"x": IMAGES}, optional={"y": LABELS, "classes": st.tuples(DTYPES, st.just([5]))}),
    compressed=st.booleans(),
    split=st.sampled_from(["train", "test", "val"]),
    labels=st.lists(st.integers(-5, 10**13), max_size=4),
)
def test_fuzz_npz_arrays(tmp_path, shapes, compressed, split, labels):
    arrays = {name: np.zeros(shape, dtype=dtype) for name, (dtype, shape) in shapes.items()}
    for name, array in arrays.items():
        if name.startswith("y") and array.dtype.kind in "iu" and array.size and labels:
            array.flat[: len(labels)] = np.array(labels[: array.size], dtype=np.int64).astype(array.dtype)
    path = tmp_path / "data.npz"
    (np.savez_compressed if compressed else np.savez)(path, **arrays)
    accepted_or_refused(read_npz, path, split)


@examples(150)
@given(data=st.data())
def test_fuzz_npz_bytes(tmp_path, data):
    """A valid archive with bytes overwritten, inserted or cut off: zip directory, npy headers and data alike."""
    buffer = io.BytesIO()
    np.savez(buffer, x=np.arange(2 * 4 * 4 * 3, dtype=np.uint8).reshape(2, 4, 4, 3), y=np.array([0, 1]))
    blob = bytearray(buffer.getvalue())
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, len(blob)))
        action = data.draw(st.sampled_from(["overwrite", "insert", "truncate"]))
        chunk = data.draw(st.binary(min_size=1, max_size=8) | st.sampled_from([b"\xff" * 8, b"\x00" * 8, b"(9" * 4]))
        if action == "overwrite":
            blob[at : at + len(chunk)] = chunk
        elif action == "insert":
            blob[at:at] = chunk
        else:
            del blob[at:]
    path = tmp_path / "data.npz"
    path.write_bytes(bytes(blob))
    accepted_or_refused(read_npz, path, "train")


# -- published score pickles --------------------------------------------------------------------------------------

TENSORS = st.builds(
    lambda shape, dtype: torch.zeros(shape, dtype=dtype),
    st.lists(st.integers(0, 9), max_size=3),
    st.sampled_from([torch.float32, torch.float64, torch.float16, torch.int64, torch.bool, torch.complex64]),
)
PY_VALUES = st.recursive(
    SCALARS | TENSORS | st.floats(),  # NaN and infinities too
    lambda kids: st.lists(kids, max_size=4) | st.tuples(kids, kids) | st.dictionaries(SCALARS, kids, max_size=4),
    max_leaves=10,
)


def read_scores(path: Path) -> None:
    from snapvit_cli.reference.scores import read_reference_scores

    read_reference_scores(path)


@examples(80)
@given(data=st.data())
def test_fuzz_score_pickles(tmp_path, data):
    from tests.test_reference_scores import valid_contents, write_reference_file

    contents = valid_contents()
    for key in data.draw(st.lists(st.sampled_from([*contents, "extra"]), max_size=3)):
        contents[key] = data.draw(PY_VALUES)
    path = tmp_path / "scores.pt"
    try:
        write_reference_file(path, contents)
    except (TypeError, ValueError, RecursionError):  # torch.save cannot pickle it: not an input to test
        return
    accepted_or_refused(read_scores, path)


@examples(80)
@given(data=st.data())
def test_fuzz_score_pickle_bytes(tmp_path, data):
    """A valid score archive with its pickle bytes edited (opcodes, lengths, memo indices) or its zip damaged."""
    from tests.test_reference_scores import valid_contents, write_reference_file

    path = write_reference_file(tmp_path / "scores.pt", valid_contents())
    with zipfile.ZipFile(path) as archive:
        members = [(info.filename, archive.read(info)) for info in archive.infolist()]
    edited = []
    for name, content in members:
        if name.endswith("data.pkl"):
            blob = bytearray(content)
            for _ in range(data.draw(st.integers(1, 3))):
                at = data.draw(st.integers(0, len(blob) - 1))
                blob[at : at + 1] = data.draw(st.binary(min_size=1, max_size=4))
            content = bytes(blob)
        edited.append((name, content))
    with zipfile.ZipFile(path, "w") as archive:
        for name, content in edited:
            archive.writestr(name, content)
    accepted_or_refused(read_scores, path)
