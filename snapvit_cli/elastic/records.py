"""The persisted records of the elastic formats: a bundle's metadata, a sliced model's ``config.json``, the budget.

Frozen dataclasses with ``to_json`` / ``from_json``. ``from_json`` is the one place a stored record is checked:
known keys only, each typed and bounded (:mod:`snapvit_cli.schema`), the source model's architecture and
arguments against the family allow-list (:mod:`snapvit_cli.models.source`). ``to_json`` gives the layout written
since format version 1, so files written before these records existed still load. Imports neither torch nor timm.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from snapvit_cli.elastic.artifacts import BUNDLE_KIND, SLICED_KIND
from snapvit_cli.errors import BundleError
from snapvit_cli.models.families import MLP_PRUNING
from snapvit_cli.models.source import (
    MAX_DEPTH,
    MAX_EMBED_DIM,
    MAX_HEADS,
    MAX_IMG_SIZE,
    MAX_MLP_RATIO,
    MAX_PATCH_SIZE,
    MAX_REG_TOKENS,
    ModelSource,
    Provenance,
    check_model_args,
    check_pretrained_cfg,
)
from snapvit_cli.schema import Fields, as_data, check_sha256, check_str, optional_str

FORMAT_VERSION = 1
LATENCY_KINDS = ("speedup", "latency")  # budgets in measured time (snapvit_cli.latency)
BUDGET_KINDS = ("flops", "params", "ratios", *LATENCY_KINDS)
LATENCY_PROFILE_VERSION = 1  # the latency profile format a speedup/latency budget was resolved with
MAX_SPEEDUP = 1000.0
MAX_ROUND_TO = 1 << 16  # slice --round-to: far above any MLP width (ViT-7B: 8192 after SwiGLU packing)
MAX_LATENCY_MS = 1e9
MAX_MLP_HIDDEN = int(MAX_EMBED_DIM * MAX_MLP_RATIO)
BASE_MODEL_KEYS = ("model_id", "timm_name", "weights_sha256")  # plus the Provenance fields


# -- budget ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LatencyBasis:
    """What a ``speedup`` / ``latency`` budget was resolved with: the latency profile's key (device, threads, dtype,
    batch, resolution, torch), the profile's sha256, and the times it predicted for the dense and the sliced model
    (milliseconds per forward pass of a batch)."""

    device: str
    device_name: str
    threads: int
    dtype: str
    batch_size: int
    resolution: int
    torch: str
    profile_sha256: str
    dense_ms: float
    predicted_ms: float
    profile_version: int = LATENCY_PROFILE_VERSION
    clock: str = "wall"  # how the profile timed: wall time, or the calling thread's CPU time

    @property
    def speedup(self) -> float:
        """The predicted speed-up over the dense model."""
        return self.dense_ms / self.predicted_ms if self.predicted_ms else 0.0

    def describe(self) -> str:
        """``cpu (Intel Xeon), 2 threads, float32, batch 32, 224 px, torch 2.4.0``."""
        threads = f", {self.threads} thread{'s' if self.threads > 1 else ''}" if self.device == "cpu" else ""
        clock = ", CPU time" if self.clock == "cpu" else ""
        return (
            f"{self.device} ({self.device_name}){threads}, {self.dtype}, batch {self.batch_size}, "
            f"{self.resolution} px, torch {self.torch}{clock}"
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "profile_version": self.profile_version,
            "clock": self.clock,
            "device": self.device,
            "device_name": self.device_name,
            "threads": self.threads,
            "dtype": self.dtype,
            "batch_size": self.batch_size,
            "resolution": self.resolution,
            "torch": self.torch,
            "profile_sha256": self.profile_sha256,
            "dense_ms": self.dense_ms,
            "predicted_ms": self.predicted_ms,
        }

    @classmethod
    def from_json(cls, data: Any, where: str = "latency") -> LatencyBasis:
        f = Fields(data, where)
        record = cls(
            profile_version=f.int("profile_version", LATENCY_PROFILE_VERSION, LATENCY_PROFILE_VERSION),
            device=f.str("device"),
            device_name=f.str("device_name"),
            threads=f.int("threads", 1, 1 << 16),
            dtype=f.str("dtype", choices=("float32", "bfloat16")),
            batch_size=f.int("batch_size", 1, 1 << 20),
            resolution=f.int("resolution", 1, MAX_IMG_SIZE),
            torch=f.str("torch"),
            profile_sha256=check_sha256(f.str("profile_sha256"), f"{where}.profile_sha256"),
            dense_ms=f.float("dense_ms", 0.0, MAX_LATENCY_MS, open_lo=True),
            predicted_ms=f.float("predicted_ms", 0.0, MAX_LATENCY_MS, open_lo=True),
            clock=f.str("clock", choices=("wall", "cpu")),
        )
        f.done()
        return record


@dataclass(frozen=True)
class Budget:
    """A budget as asked: keep a fraction of FLOPs or params (``target``, with ``head_offset``), remove fractions
    of MLP neurons and heads (``kind="ratios"``, the paper's convention), or run ``target`` times faster than dense
    (``speedup``) or in ``target`` milliseconds per batch (``latency``) as a measured profile predicts
    (``latency`` then records that profile)."""

    kind: str
    target: float | None = None
    head_offset: float | None = None
    mlp: float | None = None
    heads: float | None = None
    round_to: int = 1  # every block's kept MLP width a multiple of this (slice --round-to); 1 = exact counts
    latency: LatencyBasis | None = None  # speedup / latency budgets only

    def label(self) -> str:
        """The budget for people, the same in tables, plots and model cards: ``flops 0.5``, ``mlp 0.35 heads 0.2``,
        ``speedup 2``, ``latency 12.5 ms``."""
        rounded = f" round-to {self.round_to}" if self.round_to != 1 else ""
        if self.kind == "ratios":
            return f"mlp {self.mlp or 0:g} heads {self.heads or 0:g}{rounded}"
        unit = " ms" if self.kind == "latency" else ""
        return f"{self.kind} {self.target:g}{unit}{rounded}"

    def to_json(self) -> dict[str, Any]:
        rounded = {"round_to": self.round_to} if self.round_to != 1 else {}  # absent: files stay as they were
        if self.kind == "ratios":
            return {"kind": "ratios", "mlp": self.mlp, "heads": self.heads, **rounded}
        timed = {"latency": self.latency.to_json()} if self.latency is not None else {}
        return {"kind": self.kind, "target": self.target, "head_offset": self.head_offset, **rounded, **timed}

    @classmethod
    def from_json(cls, data: Any, where: str = "budget") -> Budget:
        budget, fields = cls._read(data, where)
        fields.done()
        return budget

    @classmethod
    def _read(cls, data: Any, where: str) -> tuple[Budget, Fields]:
        f = Fields(data, where)
        kind = f.str("kind", choices=BUDGET_KINDS)
        round_to = f.int("round_to", 1, MAX_ROUND_TO, 1)
        if kind == "ratios":
            budget = cls(kind, mlp=f.float("mlp", 0.0, 1.0), heads=f.float("heads", 0.0, 1.0), round_to=round_to)
            if budget.mlp >= 1.0 or budget.heads >= 1.0:
                raise BundleError(f"{where}: removed fractions must lie in [0, 1)")
        elif kind in LATENCY_KINDS:
            target = (
                f.float("target", 1.0, MAX_SPEEDUP)
                if kind == "speedup"
                else f.float("target", 0.0, MAX_LATENCY_MS, open_lo=True)
            )
            head_offset = f.float("head_offset", 0.0, 1.0)
            latency = LatencyBasis.from_json(f.obj("latency").data, f"{where}.latency")
            budget = cls(kind, target=target, head_offset=head_offset, round_to=round_to, latency=latency)
        else:
            target = f.float("target", 0.0, 1.0, open_lo=True)
            head_offset = f.float("head_offset", 0.0, 1.0, None)
            budget = cls(kind, target=target, head_offset=head_offset, round_to=round_to)
        return budget, f


def budget_label(budget: Budget | None) -> str:
    """:meth:`Budget.label`, or ``dense`` for a model evaluated without a budget."""
    return "dense" if budget is None else budget.label()


# -- shared parts ---------------------------------------------------------------------------------------------


def check_min_keep(data: Any, where: str) -> dict[str, float]:
    """Per-block fractions never removed: ``mlp`` and ``heads``, each in [0, 1)."""
    f = Fields(data, where)
    out = {key: f.float(key, 0.0, 1.0) for key in ("mlp", "heads")}
    f.done()
    if max(out.values()) >= 1.0:
        raise BundleError(f"{where} fractions must lie in [0, 1)")
    return out


def check_structure(data: Any, where: str) -> dict[str, Any]:
    """The dense structure an adapter describes (``ModelAdapter.structure()``), typed and bounded."""
    f = Fields(data, where)
    out: dict[str, Any] = {
        "family": f.str("family"),
        "num_blocks": f.int("num_blocks", 1, MAX_DEPTH),
        "embed_dim": f.int("embed_dim", 1, MAX_EMBED_DIM),
        "num_heads": f.int("num_heads", 1, MAX_HEADS),
        "head_dim": f.int("head_dim", 1, MAX_EMBED_DIM),
        "mlp_hidden": f.int("mlp_hidden", 1, MAX_MLP_HIDDEN),
        "mlp_type": f.str("mlp_type", choices=MLP_PRUNING),
        "num_prefix_tokens": f.int("num_prefix_tokens", 0, MAX_REG_TOKENS + 2),
        "patch_size": f.ints("patch_size", 1, MAX_PATCH_SIZE, length=2),
        "img_size": f.ints("img_size", 1, MAX_IMG_SIZE, length=2),
        "num_classes": f.int("num_classes", 0, 1_000_000),
        "global_pool": f.str("global_pool"),
        "attention_pool": f.bool("attention_pool"),
    }
    if f.has("qkv_layout"):
        out["qkv_layout"] = f.str("qkv_layout", choices=("fused qkv", "separate q/k/v"))
    if f.has("rope"):
        out["rope"] = f.bool("rope")
    f.done()
    return out


@dataclass(frozen=True)
class Scoring:
    """The scoring method and every setting it ran with (free-form data: shown to people, never executed)."""

    method: str
    settings: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"method": self.method, "settings": as_data(self.settings, "scoring settings")}

    @classmethod
    def from_json(cls, data: Any, where: str = "scoring") -> Scoring:
        f = Fields(data, where)
        scoring = cls(f.str("method"), f.data_of("settings", {}))
        if not isinstance(scoring.settings, dict):
            raise BundleError(f"{where}.settings must be a JSON object")
        f.data_of("timings_s", None)  # written by snapvit <= 0.1; timings now stay out of the file
        f.done()
        return scoring


def check_environment(data: Any, where: str) -> dict[str, str]:
    """Versions of the libraries that wrote a file (``{"torch": "2.4.0", ...}``): the same on every run."""
    f = Fields(data, where)
    out = {key: f.str(key) for key in sorted(f.data)}
    f.done()
    return out


def environment() -> dict[str, str]:
    """The writer's library versions, recorded in bundles and ``config.json`` (they never vary run to run)."""
    from importlib.metadata import version

    return {name: version(name) for name in ("safetensors", "timm", "torch")}


# -- correction statistics ------------------------------------------------------------------------------------


#: How the stored Gram matrices are laid out: float32 values, written since the accuracy study (issue 28) measured
#: float64 and float32 statistics to the same kNN and top-1 accuracy; float64 in bundles written before, still read.
STATS_STORAGE = "float32 upper triangle (row-major, torch.triu_indices) of sum(x x^T) / rows"
STATS_STORAGE_FLOAT64 = "float64 upper triangle (row-major, torch.triu_indices) of sum(x x^T) / rows"
#: The safetensors dtype of the stored values, per layout.
STATS_DTYPES = {STATS_STORAGE: "F32", STATS_STORAGE_FLOAT64: "F64"}
MAX_STATS_IMAGES = 1 << 31


@dataclass(frozen=True)
class CorrectionStats:
    """What a bundle's stored correction statistics are (``snapvit score --correction-stats``): per consumer layer,
    the input second moments of the dense model over ``images`` fit images and ``heldout_images`` held-back ones
    (every ``holdout``-th calibration image), each split into the ``readout`` rows (``cls``: the class token, ``mean``:
    the per-image patch mean) and the rest, over ``tokens`` rows per image; ``data`` describes the images."""

    images: int
    heldout_images: int
    holdout: int
    tokens: int
    readout: str
    prefix: int
    data: dict[str, Any] | None = None
    storage: str = STATS_STORAGE

    def rows(self, split: str, part: str) -> int:
        """How many input rows went into the ``split`` (fit, heldout) ``part`` (readout, rest) of every layer."""
        images = self.images if split == "fit" else self.heldout_images
        if part == "readout":
            return images
        return images * (self.tokens - 1 if self.readout == "cls" else self.tokens)

    def to_json(self) -> dict[str, Any]:
        data = {
            "images": self.images,
            "heldout_images": self.heldout_images,
            "holdout": self.holdout,
            "tokens": self.tokens,
            "readout": self.readout,
            "prefix": self.prefix,
            "storage": self.storage,
        }
        if self.data is not None:
            data["data"] = as_data(self.data, "correction statistics data")
        return data

    @classmethod
    def from_json(cls, data: Any, where: str = "correction_stats") -> CorrectionStats:
        f = Fields(data, where)
        record = cls(
            images=f.int("images", 1, MAX_STATS_IMAGES),
            heldout_images=f.int("heldout_images", 1, MAX_STATS_IMAGES),
            holdout=f.int("holdout", 2, MAX_STATS_IMAGES),
            tokens=f.int("tokens", 2, 1 << 24),
            readout=f.str("readout", choices=("cls", "mean")),
            prefix=f.int("prefix", 0, MAX_REG_TOKENS + 2),
            data=f.data_of("data", None),
            storage=f.str("storage", choices=tuple(STATS_DTYPES)),
        )
        f.done()
        return record


# -- bundle metadata ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BundleMetadata:
    """The ``snapvit`` JSON document in a bundle's safetensors header."""

    snapvit_version: str
    source: ModelSource
    structure: dict[str, Any]
    min_keep: dict[str, float]
    scoring: Scoring
    extras: tuple[str, ...] = ()
    environment: dict[str, str] = field(default_factory=dict)
    correction_stats: CorrectionStats | None = None

    def to_json(self) -> dict[str, Any]:
        data = {
            "format_version": FORMAT_VERSION,
            "kind": BUNDLE_KIND,
            "snapvit_version": self.snapvit_version,
            "source": self.source.to_json(),
            "structure": dict(self.structure),
            "min_keep": dict(self.min_keep),
            "scoring": self.scoring.to_json(),
            "extras": sorted(self.extras),
        }
        if self.environment:
            data["environment"] = dict(self.environment)
        if self.correction_stats is not None:  # absent: bundles without statistics stay as they were
            data["correction_stats"] = self.correction_stats.to_json()
        BundleMetadata.from_json(data)  # a writer never produces what its reader refuses
        return data

    @classmethod
    def from_json(cls, data: Any, where: str = "bundle metadata") -> BundleMetadata:
        f = Fields(data, where)
        kind = f.data.get("kind")
        if kind != BUNDLE_KIND:
            shown = check_str(kind, f"{where}.kind") if isinstance(kind, str) else "file"
            raise BundleError(f"this is a snapvit {shown}, not an elastic bundle")
        f.str("kind")
        _check_version(f.data.get("format_version"), "bundle format version")
        f.int("format_version", FORMAT_VERSION, FORMAT_VERSION)
        extras = f.data_of("extras", [])
        if not isinstance(extras, list) or not all(isinstance(e, str) for e in extras):
            raise BundleError(f"{where}.extras must be a list of tensor names")
        record = cls(
            snapvit_version=f.str("snapvit_version"),
            source=ModelSource.from_json(f.obj("source").data, "source"),
            structure=check_structure(f.obj("structure").data, "structure"),
            min_keep=check_min_keep(f.obj("min_keep").data, "min_keep"),
            scoring=Scoring.from_json(f.obj("scoring").data, "scoring"),
            extras=tuple(extras),
            environment=check_environment(f.obj("environment").data, "environment") if f.has("environment") else {},
            correction_stats=(
                CorrectionStats.from_json(f.obj("correction_stats").data) if f.has("correction_stats") else None
            ),
        )
        f.done()
        return record


def _check_version(version: Any, what: str) -> None:
    if version != FORMAT_VERSION or isinstance(version, bool):
        newer = isinstance(version, int) and not isinstance(version, bool) and version > FORMAT_VERSION
        hint = "; upgrade snapvit" if newer else ""
        shown = version if isinstance(version, int) and abs(version) < 10**6 else "unknown"
        raise BundleError(f"{what} {shown}; this snapvit reads version {FORMAT_VERSION}{hint}")


# -- sliced model config --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Cost:
    """GMACs and parameters of a sliced model and of its dense model, at ``resolution``."""

    resolution: int
    gmacs: float
    params: int
    dense_gmacs: float
    dense_params: int

    @property
    def flops_fraction(self) -> float:
        return self.gmacs / self.dense_gmacs if self.dense_gmacs else 0.0

    @property
    def params_fraction(self) -> float:
        return self.params / self.dense_params if self.dense_params else 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "resolution": self.resolution,
            "gmacs": self.gmacs,
            "params": self.params,
            "dense_gmacs": self.dense_gmacs,
            "dense_params": self.dense_params,
            "flops_fraction": self.flops_fraction,
            "params_fraction": self.params_fraction,
        }

    @classmethod
    def from_json(cls, data: Any, where: str = "cost") -> Cost:
        f = Fields(data, where)
        cost = cls(
            resolution=f.int("resolution", 1, MAX_IMG_SIZE),
            gmacs=f.float("gmacs", 0.0, 1e9),
            params=f.int("params", 0, 10**13),
            dense_gmacs=f.float("dense_gmacs", 0.0, 1e9),
            dense_params=f.int("dense_params", 0, 10**13),
        )
        f.float("flops_fraction", 0.0, 1e3)  # derived; recomputed rather than trusted
        f.float("params_fraction", 0.0, 1e3)
        f.done()
        return cost


@dataclass(frozen=True)
class SlicedConfig:
    """A sliced model's ``config.json``: enough to rebuild it from stock timm modules, and its provenance."""

    architecture: str
    model_args: dict[str, Any]
    pretrained_cfg: dict[str, Any]
    base_model: dict[str, Any]
    structure: dict[str, Any]
    widths: dict[str, list[int]]  # {"mlp_hidden": [...], "num_heads": [...]}, one entry per block
    budget: Budget
    mlp_ratio: float  # fractions of units removed
    head_ratio: float
    cost: Cost
    min_keep: dict[str, float]
    scoring: Scoring
    bundle_sha256: str | None
    snapvit_version: str
    correction: dict[str, Any] | None = None
    environment: dict[str, str] = field(default_factory=dict)

    @property
    def head_dim(self) -> int:
        return self.structure["head_dim"]

    @property
    def source(self) -> ModelSource:
        """The base model as a :class:`ModelSource`, like :attr:`BundleMetadata.source`: to rebuild the (dense)
        architecture, and to say where the scored weights came from (model cards)."""
        base = self.base_model
        return ModelSource(
            model_id=base.get("model_id") or "",
            timm_name=base.get("timm_name") or self.architecture,
            architecture=self.architecture,
            model_args=self.model_args,
            pretrained_cfg=self.pretrained_cfg,
            weights_sha256=base.get("weights_sha256") or "",
            **Provenance.read(Fields(dict(base), "base_model")).__dict__,
        )

    def to_json(self) -> dict[str, Any]:
        data = {
            "snapvit_format_version": FORMAT_VERSION,
            "kind": SLICED_KIND,
            "architecture": self.architecture,
            "model_args": dict(self.model_args),
            "pretrained_cfg": dict(self.pretrained_cfg),
            "base_model": dict(self.base_model),
            "structure": dict(self.structure),
            "widths": {k: list(v) for k, v in self.widths.items()},
            "head_dim": self.head_dim,
            "budget": {**self.budget.to_json(), "mlp_ratio": self.mlp_ratio, "head_ratio": self.head_ratio},
            "cost": self.cost.to_json(),
            "min_keep": dict(self.min_keep),
            "scoring": self.scoring.to_json(),
            "bundle_sha256": self.bundle_sha256,
            "snapvit_version": self.snapvit_version,
        }
        if self.correction is not None:
            data["correction"] = as_data(self.correction, "correction record")
        if self.environment:
            data["environment"] = dict(self.environment)
        SlicedConfig.from_json(data)
        return data

    @classmethod
    def from_json(cls, data: Any, where: str = "config.json") -> SlicedConfig:
        f = Fields(data, where)
        if f.data.get("kind") != SLICED_KIND:
            raise BundleError(f"{where} does not describe a snapvit sliced model")
        f.str("kind")
        _check_version(f.data.get("snapvit_format_version"), "format version")
        f.int("snapvit_format_version", FORMAT_VERSION, FORMAT_VERSION)
        architecture = f.str("architecture")
        structure = check_structure(f.obj("structure").data, f"{where}.structure")
        budget, bf = Budget._read(f.obj("budget").data, f"{where}.budget")
        mlp_ratio, head_ratio = bf.float("mlp_ratio", 0.0, 1.0), bf.float("head_ratio", 0.0, 1.0)
        bf.done()
        head_dim = f.int("head_dim", 1, MAX_EMBED_DIM)
        if head_dim != structure["head_dim"]:
            raise BundleError(f"{where}: head_dim {head_dim} differs from structure.head_dim")
        record = cls(
            architecture=architecture,
            model_args=check_model_args(architecture, f.obj("model_args").data, f"{where}.model_args"),
            pretrained_cfg=check_pretrained_cfg(f.obj("pretrained_cfg").data, f"{where}.pretrained_cfg"),
            base_model=_base_model(f.obj("base_model").data, f"{where}.base_model"),
            structure=structure,
            widths=_widths(f.obj("widths").data, structure, f"{where}.widths"),
            budget=budget,
            mlp_ratio=mlp_ratio,
            head_ratio=head_ratio,
            cost=Cost.from_json(f.obj("cost").data, f"{where}.cost"),
            min_keep=check_min_keep(f.obj("min_keep").data, f"{where}.min_keep"),
            scoring=Scoring.from_json(f.obj("scoring").data, f"{where}.scoring"),
            bundle_sha256=optional_str(f, "bundle_sha256"),
            snapvit_version=f.str("snapvit_version"),
            correction=f.data_of("correction", None),
            environment=check_environment(f.obj("environment").data, f"{where}.environment")
            if f.has("environment")
            else {},
        )
        f.done()
        return record


def base_model_record(source: ModelSource) -> dict[str, Any]:
    """``config.json``'s ``base_model``: the source model's name and weights hash, and its :class:`Provenance`."""
    return {key: getattr(source, key) for key in BASE_MODEL_KEYS} | source.provenance.to_json()


def _base_model(data: Any, where: str) -> dict[str, Any]:
    """Where the dense model came from, in the explicit shape; config.json of snapvit <= 0.1 (``pretrained``, a
    Hub id and licence even for weights not from the Hub) is read into it, keeping only what was true."""
    f = Fields(data, where)
    out: dict[str, Any] = {key: optional_str(f, key) for key in BASE_MODEL_KEYS}
    if out["weights_sha256"]:
        check_sha256(out["weights_sha256"], f"{where}.weights_sha256")
    out.update(Provenance.read(f).to_json())
    f.done()
    return out


def _widths(data: Any, structure: dict[str, Any], where: str) -> dict[str, list[int]]:
    """Per-block kept units: one entry per block, each between 1 and the dense width."""
    f = Fields(data, where)
    blocks = structure["num_blocks"]
    out = {
        "mlp_hidden": f.ints("mlp_hidden", 1, structure["mlp_hidden"], length=blocks),
        "num_heads": f.ints("num_heads", 1, structure["num_heads"], length=blocks),
    }
    f.done()
    return out
