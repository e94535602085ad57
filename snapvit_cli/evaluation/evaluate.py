"""``snapvit eval``: accuracy, cost and speed of a dense model and of the models sliced from it (method §10).

For every model the report gives top-1 kNN accuracy (§10.2) and optionally linear-probe accuracy (§10.3) on
frozen features, GMACs and parameters at the evaluated resolution, and measured throughput and batch-1
latency. Features are the pooled embedding with the classifier disabled (§1.4), extracted once per model and
split. The linear probe selects its checkpoint on a validation split carved from the train split: the test
split is only ever scored, never used for selection.

The report is an :class:`~snapvit_cli.evaluation.report.EvalReport` (its JSON is ``snapvit eval --json``, schema in
docs/evaluation.md); ``snapvit push --eval-results`` puts its rows into a model card.
"""

from __future__ import annotations

import contextlib
import statistics
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from snapvit_cli._version import __version__
from snapvit_cli.adapters import Widths, get_adapter
from snapvit_cli.adapters.cost import CostTerms
from snapvit_cli.data import ImageSet, describe, load_images, make_loader
from snapvit_cli.data.transforms import describe_transform, eval_transform
from snapvit_cli.devices import resolve_device
from snapvit_cli.elastic.budget import SlicePlan
from snapvit_cli.elastic.records import Budget, budget_label
from snapvit_cli.errors import BudgetError, SnapvitError, SnapvitWarning
from snapvit_cli.evaluation.knn import knn_accuracy
from snapvit_cli.evaluation.probe import probe_accuracy, train_linear_probe
from snapvit_cli.evaluation.report import EvalReport, EvalRow, EvaluatedSource, Throughput
from snapvit_cli.evaluation.settings import DEFAULT_BUDGETS, EvalSettings
from snapvit_cli.fileio import sha256_file

TORCH_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}

# Progress is reported as (label, done, total); the CLI draws one bar per label.
Progress = Callable[[str, int, int], None]


@dataclass
class Candidate:
    """One model of a target, built on demand so that only one budget's weights exist at a time."""

    name: str
    budget: Budget | None  # None: the target's dense model
    build: Callable[[], nn.Module]


@dataclass
class Target:
    """What TARGET named, opened: the models to evaluate and the dense architecture they are measured against."""

    spec: str
    kind: str  # "bundle" | "sliced" | "model"
    pretrained_cfg: dict[str, Any]
    dense: nn.Module  # the dense architecture (a meta-device skeleton is enough): cost fractions and "dense" flags
    candidates: list[Candidate]
    source: EvaluatedSource | None = None  # what was evaluated, by content hash: push checks eval results with it


@dataclass(frozen=True)
class Speed:
    """Measured speed: median over ``repeats`` timed forward passes after ``warmup`` untimed ones."""

    images_per_s: float
    batch_size: int
    latency_ms: float
    device: str
    dtype: str
    threads: int
    warmup: int
    repeats: int
    batch_ms_quartiles: tuple[float, float, float] | None = None  # ms per batch: first quartile, median, third
    single_ms_quartiles: tuple[float, float, float] | None = None  # the same at batch 1


# -- targets ---------------------------------------------------------------------------------------------


def open_target(
    spec: str,
    *,
    budgets: Sequence[float] | None = None,
    checkpoint: str | Path | None = None,
    revision: str | None = None,
    reference: str | Path | None = None,
) -> Target:
    """Resolve TARGET: an elastic bundle (one model per FLOPs budget), a sliced model, or a model name (dense).

    Bundles and sliced models may be local paths or ``hf-hub:OWNER/NAME[@REV]`` repositories pushed by
    ``snapvit push``; a sliced model is its folder or that folder's ``config.json`` / ``model.safetensors``.
    ``reference`` (sliced models only) is the bundle the model was cut from: its dense model is evaluated too, as
    the first row, so that a report and its plot show what the budget cost.
    """
    from snapvit_cli.elastic.artifacts import looks_like_path, resolve_artifact

    artifact = resolve_artifact(spec, revision=revision) if looks_like_path(spec) else None
    if artifact is not None and checkpoint is not None:
        raise SnapvitError("--checkpoint applies to model names only, not to bundles or sliced models")
    if (artifact is None or artifact.kind != "bundle") and budgets is not None:
        raise BudgetError("--budgets applies to elastic bundles only; a sliced model or a model name is one row")
    if reference is not None and (artifact is None or artifact.kind != "sliced"):
        raise SnapvitError("--reference applies to sliced models: the bundle they were cut from", param="reference")
    if artifact is None:
        return _model_target(spec, checkpoint, revision)
    if artifact.kind == "bundle":
        return _bundle_target(spec, artifact.path, artifact.name, budgets or DEFAULT_BUDGETS)
    target = _sliced_target(spec, artifact.path, artifact.name)
    return target if reference is None else _with_reference(target, reference)


def _bundle_target(spec: str, path: Path, name: str, budgets: Sequence[float]) -> Target:
    from snapvit_cli.elastic.bundle import ElasticBundle

    bundle = ElasticBundle.open(path)
    plans = [bundle.plan(flops=fraction) for fraction in budgets]  # unreachable budgets fail before any work

    def candidate(plan: SlicePlan) -> Candidate:
        return Candidate(name, plan.budget, lambda: bundle.slice(plan))

    source = EvaluatedSource("bundle", sha256=bundle.sha256())
    return Target(
        spec, "bundle", bundle.source.pretrained_cfg, bundle.skeleton(), [candidate(p) for p in plans], source
    )


def _sliced_target(spec: str, folder: Path, name: str) -> Target:
    from snapvit_cli.elastic.sliced import WEIGHTS_NAME, load_sliced
    from snapvit_cli.models.loading import build_architecture

    model = load_sliced(folder)  # checked against its config (names, shapes, finite values) before any data is read
    config = model.snapvit_config
    candidate = Candidate(name, config.budget, lambda: model)
    dense = build_architecture(config.source, device="meta")  # cost fractions and "dense" flags
    evaluated = EvaluatedSource("sliced", sha256=sha256_file(folder / WEIGHTS_NAME), bundle_sha256=config.bundle_sha256)
    return Target(spec, "sliced", config.pretrained_cfg, dense, [candidate], evaluated)


def _with_reference(target: Target, reference: str | Path) -> Target:
    """``target`` (a sliced model) with the dense model of the bundle it was cut from as its first candidate; the
    bundle must be that very file (its sha256 is the one the sliced model's config.json records)."""
    from snapvit_cli.elastic.artifacts import require_kind, resolve_artifact
    from snapvit_cli.elastic.bundle import ElasticBundle

    artifact = require_kind(resolve_artifact(reference), "bundle")
    bundle = ElasticBundle.open(artifact.path)
    expected = None if target.source is None else target.source.bundle_sha256
    if expected is None or bundle.sha256() != expected:
        raise SnapvitError(
            f"--reference {reference} is not the bundle this model was cut from (its sha256 differs from the "
            "bundle_sha256 in config.json)",
            param="reference",
        )
    plan = bundle.plan(mlp=0.0, heads=0.0)
    dense = Candidate(artifact.name, plan.budget, lambda: bundle.slice(plan))
    return Target(
        target.spec, target.kind, target.pretrained_cfg, target.dense, [dense, *target.candidates], target.source
    )


def _model_target(spec: str, checkpoint: str | Path | None, revision: str | None) -> Target:
    from snapvit_cli.models.loading import load_model

    model, source = load_model(spec, checkpoint=checkpoint, revision=revision)
    evaluated = EvaluatedSource("model", weights_sha256=source.weights_sha256 or None)
    return Target(
        spec, "model", source.pretrained_cfg, model, [Candidate(source.timm_name, None, lambda: model)], evaluated
    )


# -- measurements ----------------------------------------------------------------------------------------


@contextlib.contextmanager
def _inference(device: torch.device, dtype: str) -> Iterator[None]:
    """No autograd, and bf16 autocast when asked (as the reference extracted features, §10.1)."""
    with torch.inference_mode():
        if dtype == "float32":
            yield
        else:
            with torch.autocast(device.type, dtype=TORCH_DTYPES[dtype]):
                yield


def extract_features(
    model: nn.Module,
    images: ImageSet,
    transform: Callable[[Tensor], Tensor],
    *,
    batch_size: int = 64,
    device: torch.device | str = "cpu",
    dtype: str = "float32",
    workers: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> Tensor:
    """Pooled features [N, E] (float32, on the CPU) of every image, in dataset order; classifier disabled."""
    device = torch.device(device)
    adapter = get_adapter(model)
    loader = make_loader(images, transform, batch_size, num_workers=workers)
    parts, done = [], 0
    if progress is not None:
        progress(0, len(images))
    with _inference(device, dtype):
        for batch, _ in loader:
            parts.append(adapter.features(batch.to(device)).float().cpu())
            done += len(batch)
            if progress is not None:
                progress(done, len(images))
    return torch.cat(parts)


def measure_speed(
    model: nn.Module,
    resolution: int,
    *,
    batch_size: int = 32,
    device: torch.device | str = "cpu",
    dtype: str = "float32",
    warmup: int = 2,
    repeats: int = 5,
    progress: Callable[[int, int], None] | None = None,
) -> Speed:
    """Images/s at ``batch_size`` and latency at batch 1 of a full forward pass on random input.

    Medians of ``repeats`` timed passes, each after ``warmup`` untimed ones (allocator, kernel selection and
    cache effects), so a single interrupted pass on a shared machine does not move the result. ``progress(done,
    total)`` is called after every pass, warm-up included.
    """
    device = torch.device(device)
    generator = torch.Generator().manual_seed(0)
    batch = torch.randn(batch_size, 3, resolution, resolution, generator=generator).to(device)
    passes = warmup + repeats

    def report(first: int):
        return None if progress is None else lambda done: progress(first + done, 2 * passes)

    per_batch = _seconds(model, batch, device, dtype, warmup, repeats, report(0))
    per_image = _seconds(model, batch[:1], device, dtype, warmup, repeats, report(passes))
    return Speed(
        images_per_s=batch_size / statistics.median(per_batch),
        batch_size=batch_size,
        latency_ms=statistics.median(per_image) * 1000.0,
        device=_device_name(device),
        dtype=dtype,
        threads=torch.get_num_threads(),
        warmup=warmup,
        repeats=repeats,
        batch_ms_quartiles=_quartiles_ms(per_batch),
        single_ms_quartiles=_quartiles_ms(per_image),
    )


def _quartiles_ms(seconds: list[float]) -> tuple[float, float, float]:
    """First quartile, median and third quartile of ``seconds``, in milliseconds (the spread over repeats)."""
    if len(seconds) == 1:
        return (seconds[0] * 1000.0,) * 3
    q1, median, q3 = statistics.quantiles(seconds, n=4, method="inclusive")
    return q1 * 1000.0, median * 1000.0, q3 * 1000.0


def _seconds(
    model: nn.Module,
    x: Tensor,
    device: torch.device,
    dtype: str,
    warmup: int,
    repeats: int,
    on_pass: Callable[[int], None] | None = None,
) -> list[float]:
    times = []
    with _inference(device, dtype):
        for i in range(warmup + repeats):
            _synchronize(device)
            start = time.perf_counter()
            model(x)
            _synchronize(device)
            if i >= warmup:
                times.append(time.perf_counter() - start)
            if on_pass is not None:
                on_pass(i + 1)
    return times


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return "cpu"


def _at_resolution(model: nn.Module, resolution: int) -> nn.Module:
    """``model`` taking ``resolution``-pixel input: timm resamples the position embeddings when it differs."""
    if get_adapter(model).cost_terms().resolution == resolution:
        return model
    if not hasattr(model, "set_input_size"):
        raise SnapvitError(f"{type(model).__name__} cannot change its input size; drop --resolution")
    model.set_input_size(img_size=(resolution, resolution))
    return model


def _cost(model: nn.Module, resolution: int) -> tuple[CostTerms, Widths]:
    adapter = get_adapter(model)
    return adapter.cost_terms(resolution), adapter.widths()


# -- the evaluation --------------------------------------------------------------------------------------


@dataclass
class EvalData:
    """Train (kNN memory, probe training and validation) and test (scored only) images, read once per run."""

    train: ImageSet
    test: ImageSet

    @classmethod
    def load(cls, source: str, settings: EvalSettings) -> EvalData:
        seed = settings.seed
        train = load_images(source, "train", samples=settings.samples_train, seed=seed, need_labels=True)
        test = load_images(source, "test", samples=settings.samples_test, seed=seed, need_labels=True)
        if train.labels is not None and torch.unique(torch.as_tensor(train.labels)).numel() == 1:
            warnings.warn(
                f"{source}: the train split holds a single class, so every kNN vote is right and the accuracy "
                "says nothing about the model; give one sub-folder per class",
                SnapvitWarning,
                stacklevel=2,
            )
        return cls(train, test)

    def describe(self) -> dict[str, Any]:
        return {"train": describe(self.train), "test": describe(self.test)}


def public_name(spec: str) -> str:
    """What a report records of what was evaluated: a model name or ``hf-hub:`` id as given, a local file or folder
    by its name only (reports get published; a path would say where the user keeps their files)."""
    return spec if spec.startswith("hf-hub:") else Path(spec).name or spec


def evaluate_target(
    spec: str,
    data_source: str,
    settings: EvalSettings = EvalSettings(),
    *,
    budgets: Sequence[float] | None = None,
    checkpoint: str | Path | None = None,
    revision: str | None = None,
    reference: str | Path | None = None,
    progress: Progress | None = None,
) -> EvalReport:
    """Open TARGET and the data, then :func:`evaluate`; the report's ``wall_s`` includes both openings."""
    started = time.perf_counter()
    target = open_target(spec, budgets=budgets, checkpoint=checkpoint, revision=revision, reference=reference)
    get_adapter(target.dense).check_resolution(settings.resolution)  # before the data is read
    opened = time.perf_counter()
    data = EvalData.load(data_source, settings)
    loaded = time.perf_counter()
    report = evaluate(target, data, settings, progress)
    wall_s = {
        "open_target": opened - started,
        "load_data": loaded - opened,
        "evaluate": report.wall_s["total"],
        "total": time.perf_counter() - started,
    }
    return replace(report, wall_s=wall_s)


def evaluate(
    target: Target, data: EvalData, settings: EvalSettings = EvalSettings(), progress: Progress | None = None
) -> EvalReport:
    """Evaluate every model of ``target`` on ``data``."""
    started = time.perf_counter()
    device = resolve_device(settings.device)
    resolution = get_adapter(target.dense).check_resolution(settings.resolution)
    transform = eval_transform(settings.transform, target.pretrained_cfg, resolution)
    dense_cost, dense_widths = _cost(target.dense, resolution)
    cache: dict[Widths, tuple[Tensor, Tensor]] = {}
    results = tuple(
        _evaluate_one(c, data, settings, device, resolution, transform, (dense_cost, dense_widths), cache, progress)
        for c in target.candidates
    )
    return EvalReport(
        snapvit_version=__version__,
        target=public_name(target.spec),
        target_kind=target.kind,
        dataset=data.describe(),
        resolution=resolution,
        preprocessing={k: target.pretrained_cfg.get(k) for k in ("interpolation", "mean", "std")},
        settings=_settings_json(settings, device),
        results=results,
        wall_s={"total": time.perf_counter() - started},
        source=target.source,
        transform=describe_transform(transform),
    )


def _evaluate_one(
    candidate: Candidate,
    data: EvalData,
    settings: EvalSettings,
    device: torch.device,
    resolution: int,
    transform: Callable[[Tensor], Tensor],
    dense: tuple[CostTerms, Widths],
    cache: dict[Widths, tuple[Tensor, Tensor]],
    progress: Progress | None,
) -> EvalRow:
    """One result row: build the model, extract (or reuse) features, score them, measure cost and speed."""
    label = f"{candidate.name} ({budget_label(candidate.budget)})"
    wall: dict[str, float] = {}
    with _timer(wall, "load"):
        model = _at_resolution(candidate.build().eval().to(device), resolution)
    cost, widths = _cost(model, resolution)
    dense_cost, dense_widths = dense
    if widths not in cache:  # budgets that round to the same widths share their features
        cache[widths] = _features(model, data, settings, device, transform, label, progress, wall)
    train_x, test_x = cache[widths]
    train_y, test_y = data.train.labels, data.test.labels

    with _timer(wall, "knn"):
        knn = knn_accuracy(
            train_x.to(device), train_y, test_x.to(device), test_y, settings.k, settings.vote, settings.temperature
        )
    probe_accuracy_, probe = None, None
    if settings.probe:
        with _timer(wall, "probe"):
            probe_accuracy_, probe = _linear_probe(train_x, train_y, test_x, test_y, settings, device, label, progress)
    speed = None
    if settings.speed:
        stage = f"speed {label}"
        with _timer(wall, "speed"):
            speed = measure_speed(
                model,
                resolution,
                batch_size=settings.speed_batch_size,
                device=device,
                dtype=settings.dtype,
                warmup=settings.speed_warmup,
                repeats=settings.speed_repeats,
                progress=None if progress is None else lambda done, total: progress(stage, done, total),
            )
    return EvalRow(
        name=candidate.name,
        budget=candidate.budget,
        dense=widths == dense_widths,
        knn=knn,
        probe=probe_accuracy_,
        probe_info=probe,
        gmacs=cost.gmacs(widths),
        params=cost.params(widths),
        dense_gmacs=dense_cost.gmacs(dense_widths),
        dense_params=dense_cost.params(dense_widths),
        resolution=resolution,
        widths=widths.to_json(),
        throughput=None if speed is None else _throughput(speed),
        latency_ms=None if speed is None else speed.latency_ms,
        wall_s=wall,
    )


def _features(
    model: nn.Module,
    data: EvalData,
    settings: EvalSettings,
    device: torch.device,
    transform: Callable[[Tensor], Tensor],
    label: str,
    progress: Progress | None,
    wall: dict[str, float],
) -> tuple[Tensor, Tensor]:
    """Train and test features of ``model``, timing each split."""
    features = []
    for split in ("train", "test"):
        stage = f"features {label} {split}"
        with _timer(wall, f"features_{split}"):
            features.append(
                extract_features(
                    model,
                    getattr(data, split),
                    transform,
                    batch_size=settings.batch_size,
                    device=device,
                    dtype=settings.dtype,
                    workers=settings.workers,
                    progress=None if progress is None else lambda done, total, s=stage: progress(s, done, total),
                )
            )
    return features[0], features[1]


def _linear_probe(
    train_x: Tensor,
    train_y: Tensor,
    test_x: Tensor,
    test_y: Tensor,
    settings: EvalSettings,
    device: torch.device,
    label: str,
    progress: Progress | None,
) -> tuple[float, dict[str, Any]]:
    """Train on train features (validation carved from them, seeded), then score the selected probe on test.

    The test split reaches :func:`probe_accuracy` only, after training and selection are over.
    """
    stage = f"probe {label}"
    result = train_linear_probe(
        train_x,
        train_y,
        val_fraction=settings.probe_val_fraction,
        epochs=settings.probe_epochs,
        lr=settings.probe_lr,
        seed=settings.seed,
        device=device,
        progress=None if progress is None else lambda done, total: progress(stage, done, total),
    )
    accuracy = probe_accuracy(result, test_x, test_y)
    return accuracy, {"best_epoch": result.best_epoch, "val_accuracy": result.best_val_accuracy}


def _throughput(speed: Speed) -> Throughput:
    data = asdict(speed)
    del data["latency_ms"]
    return Throughput(**data)


def _settings_json(settings: EvalSettings, device: torch.device) -> dict[str, Any]:
    data = asdict(settings)
    data["device"] = _device_name(device)
    data["threads"] = torch.get_num_threads()
    if settings.vote != "weighted":
        del data["temperature"]
    return data


@contextlib.contextmanager
def _timer(wall: dict[str, float], stage: str) -> Iterator[None]:
    start = time.perf_counter()
    yield
    wall[stage] = wall.get(stage, 0.0) + time.perf_counter() - start
