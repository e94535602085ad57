"""Data layer: every source, labels, seeded subsets, errors, the demo set, preprocessing and batching."""

from __future__ import annotations

import json
import os
import pickle
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from snapvit_cli.data import DEMO_CLASSES, demo_images, describe, load_images, make_loader, preprocess
from snapvit_cli.errors import DataError, SnapvitWarning
from snapvit_cli.fileio import sha256_file

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("SNAPVIT_SHARED_DATA", REPO.parent / "shared" / "data"))
CIFAR = SHARED_DATA / "cifar10_subset.npz"
CFG = {"mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5), "input_size": (3, 16, 16), "interpolation": "bicubic"}


def save_image(path: Path, value: int, mode: str = "RGB", size: tuple[int, int] = (6, 4)) -> None:
    """A constant image of ``value`` in every channel (alpha 255), saved in the format its suffix names."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fill = value if mode == "L" else (value, value, value, 255)[: len(mode)]
    Image.new(mode, size, fill).save(path, lossless=True)  # lossless matters for webp; others ignore it


def pixel(dataset, i: int) -> int:
    """The (constant) value of image i, checking that it really has 3 equal channels."""
    image, _ = dataset[i]
    assert image.dtype == torch.uint8 and image.shape[0] == 3
    assert torch.equal(image, image[:1].expand_as(image))
    return int(image[0, 0, 0])


@pytest.fixture
def class_folder(tmp_path: Path) -> Path:
    """Two classes, one nested deeper, in several formats, plus files that must be ignored."""
    root = tmp_path / "imgs"
    save_image(root / "dog" / "b.png", 30)
    save_image(root / "dog" / "a.jpg", 20)
    save_image(root / "cat" / "deep" / "er" / "c.bmp", 40)
    save_image(root / "cat" / "gray.PNG", 50, mode="L")
    save_image(root / "cat" / "rgba.webp", 60, mode="RGBA")
    save_image(root / "cat" / ".hidden.png", 99)
    save_image(root / ".cache" / "x.png", 99)
    (root / "dog" / "notes.txt").write_text("not an image")
    return root


def test_folder_labels_from_first_level_subfolders(class_folder: Path) -> None:
    ds = load_images(str(class_folder), need_labels=True)
    assert ds.class_names == ["cat", "dog"] and ds.num_classes == 2
    # Sorted relative paths: cat/deep/er/c.bmp, cat/gray.PNG, cat/rgba.webp, dog/a.jpg, dog/b.png.
    assert [pixel(ds, i) for i in range(len(ds))] == [40, 50, 60, pytest.approx(20, abs=2), 30]
    assert ds.labels.tolist() == [0, 0, 0, 1, 1]
    assert [ds[i][1] for i in range(len(ds))] == [0, 0, 0, 1, 1]
    assert ds.labels.dtype == torch.long and ds.name == "imgs" and ds.split == "train"


def test_flat_folder_is_unlabelled(tmp_path: Path) -> None:
    save_image(tmp_path / "a.png", 1)
    save_image(tmp_path / "sub" / "b.png", 2)
    ds = load_images(str(tmp_path))
    assert len(ds) == 2 and ds.labels is None and ds.num_classes is None and ds[0][1] == -1
    with pytest.raises(DataError, match="has no labels.*sub-folder per class"):
        load_images(str(tmp_path), need_labels=True)


def test_folder_splits_share_class_ids(tmp_path: Path) -> None:
    save_image(tmp_path / "train" / "ant" / "1.png", 1)
    save_image(tmp_path / "train" / "bee" / "2.png", 2)
    save_image(tmp_path / "val" / "bee" / "3.png", 3)  # no 'ant' in val: 'bee' must keep id 1
    train = load_images(str(tmp_path), "train", need_labels=True)
    test = load_images(str(tmp_path), "test", need_labels=True)  # served by val/
    assert (len(train), len(test)) == (2, 1)
    assert test.split == "val" and pixel(test, 0) == 3
    assert test.labels.tolist() == [1] and test.class_names == train.class_names == ["ant", "bee"]
    with pytest.raises(DataError, match="no split 'extra'.*train, val"):
        load_images(str(tmp_path), "extra")


def test_single_split_folder_refuses_test_split(class_folder: Path) -> None:
    with pytest.raises(DataError, match="single split.*'test'"):
        load_images(str(class_folder), "test")


def test_empty_folder_and_missing_paths(tmp_path: Path) -> None:
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "readme.txt").write_text("x")
    with pytest.raises(DataError, match="no image files"):
        load_images(str(tmp_path / "empty"))
    with pytest.raises(DataError, match="'.*nope' not found: expected an image folder, an .npz file"):
        load_images(str(tmp_path / "nope"))
    (tmp_path / "data.csv").write_text("a,b")
    with pytest.raises(DataError, match="cannot read data from .*data.csv"):
        load_images(str(tmp_path / "data.csv"))


def test_undecodable_image_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "broken.jpg").write_bytes(b"definitely not a jpeg")
    ds = load_images(str(tmp_path))
    with pytest.raises(DataError, match="cannot decode image .*broken.jpg"):
        ds[0]


def test_npz_single_split(tmp_path: Path) -> None:
    x = np.arange(5, dtype=np.uint8).reshape(5, 1, 1, 1) * np.ones((1, 4, 3, 3), dtype=np.uint8)
    np.savez(tmp_path / "one.npz", x=x, y=np.array([0, 2, 1, 2, 0]))
    ds = load_images(str(tmp_path / "one.npz"), need_labels=True)
    assert len(ds) == 5 and ds.num_classes == 3 and ds.class_names is None and ds.name == "one"
    image, label = ds[3]
    assert image.shape == (3, 4, 3) and image.dtype == torch.uint8 and int(image.max()) == 3 and label == 2
    with pytest.raises(DataError, match="single split.*'test'"):
        load_images(str(tmp_path / "one.npz"), "test")


def test_npz_splits_classes_and_gray_images(tmp_path: Path) -> None:
    gray = np.full((2, 5, 5, 1), 7, dtype=np.uint8)
    np.savez(
        tmp_path / "s.npz",
        x_train=np.zeros((3, 5, 5, 3), np.uint8),
        y_train=np.array([0, 1, 1]),
        x_val=gray,
        y_val=np.array([1, 0]),
        classes=np.array(["no", "yes"]),
    )
    test = load_images(str(tmp_path / "s.npz"), "test", need_labels=True)
    assert test.split == "val" and test.class_names == ["no", "yes"] and test.labels.tolist() == [1, 0]
    assert pixel(test, 0) == 7 and test[0][0].shape == (3, 5, 5)
    assert len(load_images(str(tmp_path / "s.npz"), "train")) == 3


def test_npz_without_labels(tmp_path: Path) -> None:
    np.savez(tmp_path / "u.npz", x=np.zeros((2, 4, 4, 3), np.uint8))
    assert load_images(str(tmp_path / "u.npz"))[1][1] == -1
    with pytest.raises(DataError, match="has no labels.*'y' or 'y_train'"):
        load_images(str(tmp_path / "u.npz"), need_labels=True)


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"images": np.zeros((2, 4, 4, 3), np.uint8)}, "no image array: expected 'x' or 'x_train'.*images"),
        ({"x": np.zeros((2, 4, 4, 3), np.float32)}, "'x' must be uint8 images, got dtype float32"),
        ({"x": np.zeros((2, 4, 4), np.uint8)}, r"'x' must have shape \[N,H,W,C\].*\(2, 4, 4\)"),
        ({"x": np.zeros((2, 6, 32, 32), np.uint8)}, r"'x' must have shape \[N,H,W,C\] or \[N,C,H,W\] with 1-4"),
        ({"x": np.zeros((2, 4, 4, 3), np.uint8), "y": np.zeros(3, int)}, r"'y' must have shape \(2,\)"),
        ({"x": np.zeros((2, 4, 4, 3), np.uint8), "y": np.zeros(2)}, "'y' must hold integer class ids"),
        ({"x": np.zeros((2, 4, 4, 3), np.uint8), "y": np.array([0, -1])}, "negative class ids"),
        (
            {"x": np.zeros((2, 4, 4, 3), np.uint8), "y": np.array([0, 2]), "classes": np.array(["a", "b"])},
            "label 2 in 'y' has no entry in 'classes'",
        ),
    ],
)
def test_npz_errors(tmp_path: Path, arrays: dict, message: str) -> None:
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(DataError, match=message):
        load_images(str(tmp_path / "bad.npz"))


@pytest.mark.parametrize("channels", [1, 3, 4])
def test_npz_nchw_images_are_read_as_the_same_pixels(tmp_path: Path, channels: int) -> None:
    rng = np.random.default_rng(channels)
    nhwc = rng.integers(0, 256, (3, 9, 7, channels), dtype=np.uint8)
    np.savez(tmp_path / "nhwc.npz", x=nhwc)
    np.savez(tmp_path / "nchw.npz", x=np.ascontiguousarray(nhwc.transpose(0, 3, 1, 2)))
    a, b = load_images(str(tmp_path / "nhwc.npz")), load_images(str(tmp_path / "nchw.npz"))
    for i in range(3):
        assert a[i][0].shape == (3, 9, 7)
        assert torch.equal(a[i][0], b[i][0])


def test_npz_that_is_not_an_archive(tmp_path: Path) -> None:
    (tmp_path / "junk.npz").write_bytes(b"garbage" * 10)
    with pytest.raises(DataError, match="cannot read .*junk.npz as an .npz archive"):
        load_images(str(tmp_path / "junk.npz"))
    with open(tmp_path / "plain.npz", "wb") as f:
        np.save(f, np.zeros((2, 4, 4, 3), np.uint8))
    with pytest.raises(DataError, match="single .npy array"):
        load_images(str(tmp_path / "plain.npz"))


def test_seeded_subsets(tmp_path: Path) -> None:
    np.savez(tmp_path / "n.npz", x=np.arange(50, dtype=np.uint8).reshape(50, 1, 1, 1).repeat(3, 3), y=np.arange(50))
    src = str(tmp_path / "n.npz")
    a = load_images(src, samples=10, seed=1)
    b = load_images(src, samples=10, seed=1)
    c = load_images(src, samples=10, seed=2)
    picked = [pixel(a, i) for i in range(10)]
    assert len(a) == 10 and len(set(picked)) == 10  # without replacement
    assert picked == a.labels.tolist() == [a[i][1] for i in range(10)]  # labels follow their images
    assert picked == [pixel(b, i) for i in range(10)]
    assert picked != [pixel(c, i) for i in range(10)]
    # The reference implementation's draw: the first samples of a seeded randperm.
    assert picked == torch.randperm(50, generator=torch.Generator().manual_seed(1))[:10].tolist()
    with pytest.warns(SnapvitWarning, match="500 images asked .* which has 50: using 50"):
        everything = load_images(src, samples=500)
    assert len(everything) == 50 and everything.samples == 50  # the number used is what is recorded
    with pytest.raises(DataError, match="must be positive"):
        load_images(src, samples=0)


def test_demo_set_is_deterministic_and_balanced() -> None:
    first = demo_images(150, seed=0)[0]
    images, labels = demo_images(1000, seed=0)
    assert images.shape == (1000, 3, 64, 64) and images.dtype == torch.uint8
    assert torch.bincount(labels).tolist() == [100] * 10
    assert torch.equal(images, demo_images(1000, seed=0)[0])
    assert torch.equal(first, images[:150])  # image i does not depend on the count
    assert not torch.equal(demo_images(100, seed=1)[0], images[:100])
    assert images.float().std(dim=(1, 2, 3)).min() > 10  # every image shows a pattern, none is blank


def test_demo_source() -> None:
    train, test = load_images("demo", need_labels=True), load_images("demo", "test")
    assert (len(train), len(test)) == (500, 200)
    assert train.class_names == list(DEMO_CLASSES) and train.num_classes == 10
    assert not torch.equal(train[0][0], test[0][0])
    small = load_images("demo:30/20", "val")
    assert (len(small), small.split) == (20, "test")
    assert torch.equal(small[5][0], test[5][0])  # same generator stream per split
    for bad in ("demo:", "demo:10", "demo:a/b", "demo:0/5"):
        with pytest.raises(DataError, match="'demo:TRAIN/TEST'"):
            load_images(bad)


def test_demo_classes_are_separable_by_a_random_vit() -> None:
    """Sanity: kNN on a small random-init ViT's CLS features is far above the 10 % of chance."""
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = timm.models.VisionTransformer(
        img_size=64, patch_size=8, embed_dim=64, depth=2, num_heads=2, num_classes=0
    ).eval()
    transform = preprocess({**CFG, "input_size": (3, 64, 64)})

    def features(split: str) -> tuple[torch.Tensor, torch.Tensor]:
        ds = load_images("demo:300/100", split)
        with torch.inference_mode():
            feats = torch.cat([model(x) for x, _ in make_loader(ds, transform, 100)])
        return torch.nn.functional.normalize(feats, dim=1), ds.labels

    memory, memory_labels = features("train")
    queries, query_labels = features("test")
    nearest = (queries @ memory.T).argmax(dim=1)
    accuracy = (memory_labels[nearest] == query_labels).float().mean().item()
    assert accuracy > 0.3


def test_preprocess_constant_image_matches_hand_computation() -> None:
    cfg = {
        "mean": (0.2, 0.4, 0.6),
        "std": (0.5, 0.25, 0.1),
        "input_size": (3, 12, 12),
        "interpolation": "bilinear",
    }
    image = torch.tensor([51, 102, 204], dtype=torch.uint8).view(3, 1, 1).expand(3, 7, 9)
    out = preprocess(cfg)(image)
    assert out.shape == (3, 12, 12) and out.dtype == torch.float32
    expected = [(51 / 255 - 0.2) / 0.5, (102 / 255 - 0.4) / 0.25, (204 / 255 - 0.6) / 0.1]
    for channel, value in enumerate(expected):
        assert torch.allclose(out[channel], torch.full((12, 12), value), atol=1e-5)
    assert preprocess(cfg, resolution=20)(image).shape == (3, 20, 20)


def test_preprocess_gray_and_rgba_become_rgb() -> None:
    transform = preprocess(CFG)
    gray = transform(torch.full((1, 5, 5), 255, dtype=torch.uint8))
    rgba = transform(
        torch.cat([torch.zeros(3, 5, 5, dtype=torch.uint8), torch.full((1, 5, 5), 255, dtype=torch.uint8)])
    )
    assert gray.shape == rgba.shape == (3, 16, 16)
    assert torch.allclose(gray, torch.ones_like(gray)) and torch.allclose(rgba, -torch.ones_like(rgba))


def test_preprocess_crop_pct_follows_timm_eval_recipe() -> None:
    """A white 10-px frame around a black 80x80 centre: resizing keeps it; crop_pct 0.8 at R=80 cuts it."""
    image = torch.full((3, 100, 100), 255, dtype=torch.uint8)
    image[:, 10:90, 10:90] = 0
    cfg = {**CFG, "input_size": (3, 80, 80)}
    assert preprocess(cfg)(image).max() > 0.9
    cropped = preprocess(cfg, crop_pct=0.8)(image)
    assert cropped.shape == (3, 80, 80) and torch.allclose(cropped, -torch.ones_like(cropped), atol=1e-5)
    wide = preprocess(cfg, crop_pct=0.875)(torch.zeros(3, 40, 80, dtype=torch.uint8))
    assert wide.shape == (3, 80, 80)


def test_preprocess_crop_pct_matches_timm_eval_transform() -> None:
    """Same geometry as timm's own eval transform (PIL resize + centre crop) on a smooth non-square image."""
    timm_data = pytest.importorskip("timm.data")
    cfg = {"mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225), "input_size": (3, 32, 32)}
    cfg.update(interpolation="bicubic", crop_pct=0.875)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, 50), torch.linspace(0, 1, 70), indexing="ij")
    image = torch.stack([xx, yy, xx * yy]).mul(255).round().to(torch.uint8)
    pil_image = Image.fromarray(image.permute(1, 2, 0).numpy())
    reference = timm_data.create_transform(**cfg, is_training=False)(pil_image)
    ours = preprocess(cfg, crop_pct=0.875)(image)
    assert ours.shape == reference.shape == (3, 32, 32)
    assert (ours - reference).abs().max() < 0.05  # PIL and tensor bicubic differ only by rounding
    assert (preprocess(cfg)(image) - reference).abs().mean() > 0.1  # whole-image resize is a different view


def test_preprocess_rejects_bad_settings() -> None:
    with pytest.raises(DataError, match="unsupported interpolation 'lanczos'"):
        preprocess({**CFG, "interpolation": "lanczos"})
    with pytest.raises(DataError, match="crop_pct must be in"):
        preprocess(CFG, crop_pct=1.5)


def test_make_loader_batches_and_determinism() -> None:
    ds = load_images("demo:40/10", need_labels=True)
    transform = preprocess(CFG)
    batches = list(make_loader(ds, transform, 16))
    assert [len(y) for _, y in batches] == [16, 16, 8]
    x, y = batches[0]
    assert x.shape == (16, 3, 16, 16) and x.dtype == torch.float32 and y.dtype == torch.long
    assert y.tolist() == ds.labels[:16].tolist()

    def order(seed: int, workers: int = 0) -> list[int]:
        loader = make_loader(ds, transform, 8, shuffle=True, seed=seed, num_workers=workers)
        return [round(float(v), 4) for x, _ in loader for v in x[:, 0, 0, 0]]

    assert order(3) == order(3) == order(3, workers=1)
    assert order(3) != order(4)
    assert pickle.loads(pickle.dumps(transform))(ds[0][0]).shape == (3, 16, 16)


def test_describe_is_json_and_identifies_the_data(tmp_path: Path, class_folder: Path) -> None:
    np.savez(tmp_path / "d.npz", x=np.zeros((8, 2, 2, 3), np.uint8), y=np.arange(8))
    sub = load_images(str(tmp_path / "d.npz"), samples=4, seed=5)
    info = json.loads(json.dumps(describe(sub)))
    assert info["n"] == 4 and info["samples"] == 4 and info["seed"] == 5 and info["split"] == "train"
    assert info["num_classes"] == 8 and info["identity"]["sha256"] == sha256_file(tmp_path / "d.npz")
    assert describe(load_images(str(tmp_path / "d.npz"), samples=4, seed=6))["indices_sha256"] != info["indices_sha256"]

    before = describe(load_images(str(class_folder)))
    save_image(class_folder / "dog" / "new.png", 1)
    after = describe(load_images(str(class_folder)))
    assert before["identity"]["files_sha256"] != after["identity"]["files_sha256"]
    assert (before["n"], after["n"]) == (5, 6)
    assert json.loads(json.dumps(describe(load_images("demo", "test"))))["identity"]["generator"]


def test_hf_source_without_the_datasets_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` fail, installed or not
    with pytest.raises(DataError, match=r"needs the 'datasets' package: pip install datasets"):
        load_images("hf:uoft-cs/cifar10")


def test_hf_source_offline_names_the_dataset(monkeypatch: pytest.MonkeyPatch) -> None:
    datasets = pytest.importorskip("datasets")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True, raising=False)
    with pytest.raises(DataError, match="cannot load Hugging Face dataset 'snapvit-tests/no-such-set'"):
        load_images("hf:snapvit-tests/no-such-set:cfg")


class _FakeImage:
    """Stands for ``datasets.Image``: a feature whose rows decode to PIL images."""


class _FakeClassLabel:
    def __init__(self, names: list[str]) -> None:
        self.names = names


class _FakeValue:
    def __init__(self, dtype: str) -> None:
        self.dtype = dtype


class _FakeDataset:
    """The slice of ``datasets.Dataset`` that the loader uses: features, rows, columns, select_columns."""

    def __init__(self, features: dict, rows: list[dict]) -> None:
        self.features, self.rows = features, rows
        self.column_names = list(features)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, key):
        return [r[key] for r in self.rows] if isinstance(key, str) else self.rows[key]

    def select_columns(self, columns: list[str]) -> _FakeDataset:
        return _FakeDataset({c: self.features[c] for c in columns}, [{c: r[c] for c in columns} for r in self.rows])


def _fake_datasets(features: dict, rows: list[dict], splits: list[str]) -> types.ModuleType:
    module = types.ModuleType("datasets")
    module.Image, module.ClassLabel, module.Value = _FakeImage, _FakeClassLabel, _FakeValue
    module.exceptions = types.SimpleNamespace(DatasetsError=type("DatasetsError", (Exception,), {}))
    module.load_dataset_builder = lambda name, config: types.SimpleNamespace(info=types.SimpleNamespace(splits=splits))
    module.load_dataset = lambda name, config, split: _FakeDataset(features, rows)
    return module


def test_hf_source_picks_image_and_label_columns(monkeypatch: pytest.MonkeyPatch) -> None:
    rows = [{"caption": "x", "picture": Image.new("L", (4, 3), 9 * i), "fine": i % 3, "id": i} for i in range(6)]
    features = {
        "caption": _FakeValue("string"),
        "picture": _FakeImage(),
        "fine": _FakeClassLabel(["a", "b", "c"]),
        "id": _FakeValue("int64"),
    }
    monkeypatch.setitem(sys.modules, "datasets", _fake_datasets(features, rows, ["train", "validation"]))
    ds = load_images("hf:someone/pics", "test", need_labels=True, samples=4, seed=0)
    assert ds.split == "validation" and ds.class_names == ["a", "b", "c"] and len(ds) == 4
    for i in range(4):
        image, label = ds[i]
        assert image.shape == (3, 3, 4) and label == int(image[0, 0, 0]) // 9 % 3
    assert describe(ds)["identity"] == {"dataset": "someone/pics", "config": None}
    with pytest.raises(DataError, match="Hugging Face dataset 'someone/pics' has no split 'extra'"):
        load_images("hf:someone/pics", "extra")


def test_hf_source_without_usable_columns(monkeypatch: pytest.MonkeyPatch) -> None:
    rows = [{"image": Image.new("RGB", (2, 2)), "label": "cat"}]
    features = {"image": _FakeImage(), "label": _FakeValue("string")}
    monkeypatch.setitem(sys.modules, "datasets", _fake_datasets(features, rows, []))
    assert load_images("hf:x/y").labels is None  # string labels are not class ids
    monkeypatch.setitem(sys.modules, "datasets", _fake_datasets({"text": _FakeValue("string")}, [{"text": "a"}], []))
    with pytest.raises(DataError, match="has no image column \\(columns: text\\)"):
        load_images("hf:x/y")


@pytest.mark.skipif(not CIFAR.is_file(), reason="shared data folder absent (set SNAPVIT_SHARED_DATA)")
def test_real_cifar_subset() -> None:
    train = load_images(str(CIFAR), "train", need_labels=True)
    test = load_images(str(CIFAR), "test", need_labels=True)
    assert (len(train), len(test), train.num_classes) == (5000, 1000, 10)
    assert train.class_names[0] == "airplane" and torch.bincount(test.labels).tolist() == [100] * 10
    image, label = test[0]
    assert image.shape == (3, 32, 32) and image.dtype == torch.uint8 and label == int(test.labels[0])
