"""The elastic bundle: one ``.safetensors`` file from which a model of any budget is cut offline.

Layout (all tensors in one file):

- ``model.<name>``: the dense state dict with every block's MLP neurons and heads permuted into descending
  importance (the model's output is unchanged), so any budget is a prefix of each block;
- ``scores.mlp`` ``[L, D]`` and ``scores.heads`` ``[L, H]``: final importance scores in float64 (published scores
  reach 1e-43, below float32's normal range), in the *original* unit order;
- ``order.mlp`` / ``order.heads``: the permutation applied (permuted unit ``k`` of block ``l`` is original unit
  ``order[l, k]``), so ``scores.gather(1, order)`` is descending per row;
- optional method extras, e.g. ``raw.mlp``, ``ga.mlp_weight``, ``ga.fitness_trace``.

The header metadata holds ``"format": "pt"`` and ``"snapvit"``: the :class:`~snapvit_cli.elastic.records.BundleMetadata`
record (format version, source model, structure, scoring method with every setting, min-keep ratios, snapvit and
library versions), written with sorted keys and without timings, so the same inputs give the same bytes.

Opening a bundle checks, before anything is built, that the metadata is well-formed and bounded and that the
tensors it implies are the file's, in names and shapes; the file is then read through one handle
(:class:`~snapvit_cli.elastic.safetensors_io.OpenFile`), so a bundle replaced while it is read is never mixed in.
"""

from __future__ import annotations

import copy
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from snapvit_cli._version import __version__
from snapvit_cli.adapters import HEADS, MLP, ModelAdapter, Widths, get_adapter
from snapvit_cli.adapters.cost import CostTerms
from snapvit_cli.elastic.artifacts import HEADER_KEY as METADATA_KEY
from snapvit_cli.elastic.budget import DEFAULT_HEAD_OFFSET, DEFAULT_MIN_KEEP, SlicePlan, plan_slice
from snapvit_cli.elastic.records import STATS_DTYPES, BundleMetadata, Scoring, environment
from snapvit_cli.elastic.safetensors_io import OpenFile, save_canonical
from snapvit_cli.elastic.sliced import save_sliced, sliced_config
from snapvit_cli.elastic.stats_layout import STATS_PREFIX, StatisticsToStore, expected_shapes, to_tensors
from snapvit_cli.elastic.surgery import (
    build_model,
    keep_prefix,
    permute,
    read_prefix,
    unaliased,
    unpermuted_sha256,
)
from snapvit_cli.elastic.tensor_checks import (
    EXTRA_DTYPES,
    check_computed,
    check_dtypes,
    check_finite,
    check_same_tensors,
    dtype_name,
    precheck_size,
)
from snapvit_cli.errors import BundleError, SnapvitError
from snapvit_cli.fileio import atomic_path, check_output
from snapvit_cli.models.loading import ModelSource, build_architecture
from snapvit_cli.models.pretrained_cfg import honest_pretrained_cfg
from snapvit_cli.schema import parse_json, sorted_json
from snapvit_cli.scoreset import ScoreSet

WEIGHT_PREFIX = "model."
SCORE_KEYS = {MLP: "scores.mlp", HEADS: "scores.heads"}
ORDER_KEYS = {MLP: "order.mlp", HEADS: "order.heads"}


def descending_order(scores: torch.Tensor) -> torch.Tensor:
    """Per-row permutation into descending score; equal scores keep their original order."""
    return torch.argsort(scores, dim=1, descending=True, stable=True)


def write_bundle(
    path: str | os.PathLike,
    model: nn.Module,
    source: ModelSource,
    scores: ScoreSet,
    *,
    min_keep: dict[str, float] | None = None,
    correction_stats: StatisticsToStore | None = None,
    force: bool = False,
) -> Path:
    """Permute ``model`` by ``scores`` and write the bundle atomically (never overwriting without ``force``).

    ``correction_stats`` (:func:`snapvit_cli.correction.statistics.collect_correction_statistics` on ``model``)
    are stored permuted like the units, so that ``slice --correct`` needs no images. The file holds no timings
    (``scores.timings`` stay with the caller), so the same inputs give the same bytes.
    """
    path = check_output(path, force)
    adapter = get_adapter(model)
    dense = adapter.widths()
    blocks = adapter.num_blocks
    orders: dict[str, list[torch.Tensor]] = {}
    tensors: dict[str, torch.Tensor] = {}
    for kind in (MLP, HEADS):
        values = scores.of(kind).detach().to("cpu", torch.float64)
        expected = (blocks, dense.of(kind)[0])
        if tuple(values.shape) != expected or len(set(dense.of(kind))) != 1:
            raise ValueError(f"{kind} scores have shape {tuple(values.shape)}, expected {expected}")
        if not torch.isfinite(values).all():
            raise ValueError(f"{kind} scores contain NaN or infinity")
        order = descending_order(values)
        orders[kind] = list(order)
        tensors[SCORE_KEYS[kind]] = values.contiguous()
        tensors[ORDER_KEYS[kind]] = order.contiguous()
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    for name, tensor in permute(state, adapter, orders).items():
        tensors[WEIGHT_PREFIX + name] = tensor.contiguous()
    for name, tensor in scores.extras.items():
        if dtype_name(tensor.dtype) not in EXTRA_DTYPES:  # the reader would refuse the file
            raise ValueError(f"extra tensor {name} has dtype {tensor.dtype}, not a plain real dtype")
        tensors[name] = tensor.detach().cpu().contiguous()
    if correction_stats is not None:
        tensors.update(to_tensors(correction_stats, adapter, orders))
    metadata = BundleMetadata(
        snapvit_version=__version__,
        source=source,
        structure=adapter.structure(),
        min_keep={**DEFAULT_MIN_KEEP, **(min_keep or {})},
        scoring=Scoring(scores.method, scores.settings),
        extras=tuple(sorted(scores.extras)),
        environment=environment(),
        correction_stats=None if correction_stats is None else correction_stats.record,
    )
    text = readable_metadata(metadata, path)
    with atomic_path(path, force=force) as tmp:
        save_canonical(tensors, tmp, {"format": "pt", METADATA_KEY: text})
    return path


class ElasticBundle:
    """A validated bundle. ``slice(...)`` cuts a model of any budget; weights are read once and kept, so
    switching budget at run time costs a prefix copy, not a reload. ``read_state_dict`` serves one-off cuts.

    Every read goes through the file handle opened by :meth:`open`, so the bundle stays the version that was
    validated even if its path is replaced meanwhile.
    """

    def __init__(
        self,
        file: OpenFile,
        metadata: BundleMetadata,
        scores: dict[str, torch.Tensor],
        orders: dict[str, torch.Tensor],
        adapter: ModelAdapter,
    ):
        self._file = file
        self.path = file.path
        self.metadata = metadata
        self.source = metadata.source
        self.structure: dict[str, Any] = metadata.structure
        self.min_keep: dict[str, float] = metadata.min_keep
        self.scores = scores  # descending per block, aligned with the permuted weights
        self._orders = orders  # original unit of each permuted unit, per block
        self._adapter = adapter  # on a meta-device skeleton: shapes only
        self._weights: dict[str, torch.Tensor] | None = None

    # --- reading -------------------------------------------------------------------------------------------------
    @classmethod
    def open(cls, path: str | os.PathLike) -> ElasticBundle:
        """Open and validate a bundle: the metadata record, the tensors it implies against the file's (names and
        shapes, before anything is built or read), then the scores and orders."""
        file = OpenFile(path, "bundle")
        path = file.path
        try:
            with file.safe_open() as f:
                header = f.metadata() or {}
                keys = set(f.keys())
                shapes = {k: tuple(f.get_slice(k).get_shape()) for k in keys}
                dtypes = {k: f.get_slice(k).get_dtype() for k in keys}
                metadata = _parse_metadata(header)
                _precheck(metadata, shapes)
                skeleton = _skeleton(metadata.source)
                check_computed(skeleton)
                adapter = get_adapter(skeleton)
                _check_tensors(metadata, shapes, skeleton, adapter)
                check_dtypes(_expected_dtypes(metadata, skeleton, adapter), dtypes, set(metadata.extras))
                raw = {k: f.get_tensor(k) for k in (*SCORE_KEYS.values(), *ORDER_KEYS.values())}
        except BundleError as exc:
            message = str(exc)
            raise BundleError(message if message.startswith(str(path)) else f"{path}: {message}") from None
        except SnapvitError:
            raise
        except Exception as exc:  # noqa: BLE001 - safetensors reports corruption with several exception types
            reason = (str(exc).splitlines() or [type(exc).__name__])[0]
            raise BundleError(
                f"{path} is not a readable safetensors bundle (truncated or corrupt?): {reason}"
            ) from None
        scores, orders = {}, {}
        for kind in (MLP, HEADS):
            values, order = raw[SCORE_KEYS[kind]].double(), raw[ORDER_KEYS[kind]].long()
            if not torch.equal(torch.sort(order, dim=1).values, torch.arange(order.shape[1]).expand_as(order)):
                raise BundleError(f"{path}: {ORDER_KEYS[kind]} is not a permutation of each block's units")
            if not torch.isfinite(values).all():
                raise BundleError(f"{path}: {SCORE_KEYS[kind]} contains NaN or infinity")
            scores[kind] = values.gather(1, order)
            orders[kind] = order
        return cls(file, metadata, scores, orders, adapter)

    @property
    def num_blocks(self) -> int:
        return self._adapter.num_blocks

    @property
    def dense_widths(self) -> Widths:
        return self._adapter.widths()

    def cost(self, resolution: int | None = None) -> CostTerms:
        return self._adapter.cost_terms(resolution)

    def source_scores(self) -> dict[str, torch.Tensor]:
        """The scores in the scored model's own unit order, per kind ``[blocks, units]``: what to pair with the
        source model's units (``scores`` follows the bundle's permuted order, descending per block)."""
        return {
            kind: torch.empty_like(values).scatter_(1, self._orders[kind], values)
            for kind, values in self.scores.items()
        }

    def read_tensor(self, name: str) -> torch.Tensor:
        """One tensor of the file by its stored name (e.g. ``raw.mlp``), read on demand."""
        with self._file.reading(), self._file.safe_open() as f:
            if name not in f.keys():
                raise BundleError(f"{self.path} has no tensor {name!r}")
            return f.get_tensor(name)

    def read_tensors(self, names: list[str]) -> dict[str, torch.Tensor]:
        """Several tensors of the file by their stored names, read together through the open handle (the stored
        correction statistics are read one layer at a time this way)."""
        with self._file.reading(), self._file.safe_open() as f:
            return {name: f.get_tensor(name) for name in names}

    def weights(self) -> dict[str, torch.Tensor]:
        """The permuted dense state dict, read on first use and kept in memory. It is read with ``pread`` into fresh
        tensors, not memory-mapped: a bundle truncated in place later must not kill the process (SIGBUS)."""
        if self._weights is None:
            with self._file.reading(), self._file.safe_open() as f:
                self._weights = {
                    k[len(WEIGHT_PREFIX) :]: f.get_tensor(k) for k in f.keys() if k.startswith(WEIGHT_PREFIX)
                }
        return self._weights

    def sha256(self) -> str:
        """sha256 of the bundle file as opened (the Hub's LFS id for it), read through the open handle."""
        return self._file.sha256()

    def verify_weights(self) -> None:
        """Check that the stored weights, put back in their original unit order, hash to the source's
        ``weights_sha256`` (one tensor in memory at a time); a bundle that records no hash passes."""
        expected = self.source.weights_sha256
        if not expected:
            return
        with self._file.reading(), self._file.safe_open(backend="pread") as f:
            digest = unpermuted_sha256(f, self._adapter, self._orders, prefix=WEIGHT_PREFIX)
        if digest != expected:
            raise BundleError(
                f"{self.path}: the weights do not match the weights_sha256 recorded in the bundle "
                "(corrupt, edited or changed while being read); nothing was written"
            )

    def save_with_statistics(
        self, path: str | os.PathLike, statistics: StatisticsToStore, *, force: bool = False
    ) -> Path:
        """Write a copy of this bundle holding ``statistics`` (collected on :meth:`dense_model`, i.e. already in the
        bundle's unit order) instead of any it had: the same as scoring again with ``--correction-stats``, without
        the scoring. The weights are verified first; everything else is copied as it is."""
        path = check_output(path, force, inputs=(self.path,))
        if set(statistics.tensors) != set(expected_shapes(self._adapter)):
            raise ValueError("the statistics were not collected on this bundle's architecture")
        self.verified_sha256()
        with self._file.reading(), self._file.safe_open() as f:
            tensors = {k: f.get_tensor(k) for k in f.keys() if not k.startswith(STATS_PREFIX)}
        self._file.check_unchanged()
        tensors.update(to_tensors(statistics, self._adapter, None))
        metadata = replace(self.metadata, correction_stats=statistics.record)
        with atomic_path(path, force=force) as tmp:
            save_canonical(tensors, tmp, {"format": "pt", METADATA_KEY: readable_metadata(metadata, path)})
        return path

    # --- slicing -------------------------------------------------------------------------------------------------
    def plan(
        self,
        *,
        flops: float | None = None,
        params: float | None = None,
        mlp: float | None = None,
        heads: float | None = None,
        resolution: int | None = None,
        head_offset: float = DEFAULT_HEAD_OFFSET,
        round_to: int = 1,
    ) -> SlicePlan:
        """Resolve a budget into per-block widths and cost; see :func:`snapvit_cli.elastic.budget.plan_slice`
        (budgets in measured time: :func:`snapvit_cli.latency.chooser.plan_bundle`)."""
        return plan_slice(
            self.scores[MLP],
            self.scores[HEADS],
            self.cost(resolution),
            flops=flops,
            params=params,
            mlp=mlp,
            heads=heads,
            head_offset=head_offset,
            min_keep=self.min_keep,
            round_to=round_to,
        )

    def state_dict(self, widths: Widths) -> dict[str, torch.Tensor]:
        """The sliced state dict for ``widths``; its tensors never alias the bundle's cached weights."""
        weights = self.weights()
        return unaliased(keep_prefix(weights, self._adapter, widths), weights)

    def read_state_dict(self, widths: Widths) -> dict[str, torch.Tensor]:
        """The same as :meth:`state_dict`, read straight from the file without keeping the dense weights: only the
        kept units' bytes are read, so a one-off cut (``snapvit slice``) needs about the memory of its result."""
        with self._file.reading(), self._file.safe_open(backend="pread") as f:
            return read_prefix(f, self._adapter, widths, prefix=WEIGHT_PREFIX)

    def read_verified(self, widths: Widths) -> tuple[dict[str, torch.Tensor], str]:
        """:meth:`read_state_dict` plus the file's sha256, after checking the whole bundle: the weights against
        ``weights_sha256`` and the file's hash (each in a thread of its own while the kept units are read), finite
        values, and that the file did not change in place meanwhile. What :meth:`save_slice` writes comes from here."""
        with ThreadPoolExecutor(max_workers=2, thread_name_prefix="snapvit-verify") as pool:
            weights_ok, file_sha256 = pool.submit(self.verify_weights), pool.submit(self.sha256)
            state = self.read_state_dict(widths)
            weights_ok.result()
            bundle_sha256 = file_sha256.result()
        self._file.check_unchanged()
        check_finite(state, f"{self.path}: the sliced weights")
        return state, bundle_sha256

    def check_unchanged(self) -> None:
        """Raise if the bundle file was modified in place since it was opened (for writers of derived files)."""
        self._file.check_unchanged()

    def verified_sha256(self) -> str:
        """The bundle file's sha256 after :meth:`verify_weights`, both read through the open handle; raises if
        the file changed in place meanwhile. For writers of anything derived from the bundle."""
        self.verify_weights()
        digest = self.sha256()
        self._file.check_unchanged()
        return digest

    def save_slice(self, out_dir: str | os.PathLike, plan: SlicePlan, *, force: bool = False) -> Path:
        """Write the model for ``plan`` as a sliced-model folder; ``config.json`` records the bundle file's sha256
        (the Hub's LFS id for it), verified with the weights (:meth:`read_verified`). A corrected slice is
        :func:`snapvit_cli.slicing.save_slice`, which composes this format with :mod:`snapvit_cli.correction`."""
        state, bundle_sha256 = self.read_verified(plan.widths)
        config = sliced_config(self.metadata, plan, bundle_sha256=bundle_sha256)
        return save_sliced(out_dir, state, config, force=force, inputs=(self.path,))

    def slice(self, plan: SlicePlan | None = None, **budget: Any) -> nn.Module:
        """A dense, physically smaller timm model for ``plan``, or for a budget given as keywords (not both)."""
        if plan is not None and budget:
            raise TypeError(f"give a plan or a budget, not both (got a plan and {', '.join(sorted(budget))})")
        plan = plan or self.plan(**budget)
        model = build_model(self.skeleton(), plan.widths, self.state_dict(plan.widths))
        model.pretrained_cfg = honest_pretrained_cfg(model, self.source.pretrained_cfg, self.source.license)
        return model

    def dense_model(self) -> nn.Module:
        """The full model with importance-ordered units (same outputs as the source model)."""
        return self.slice(self.plan(mlp=0.0, heads=0.0))

    def skeleton(self) -> nn.Module:
        """A fresh dense architecture on the meta device (shapes only): a copy of the one built when opening, since
        copying takes a fraction of timm's construction (which initialises every weight, even on meta)."""
        return copy.deepcopy(self._adapter.model)


def load_bundle(path: str | os.PathLike) -> ElasticBundle:
    """Open an elastic bundle (validated) for slicing to any budget."""
    return ElasticBundle.open(path)


def readable_metadata(metadata: BundleMetadata, path: Path) -> str:
    """The metadata text to write, after reading it back as :meth:`ElasticBundle.open` will: a bundle that its own
    reader would refuse (metadata too large, too deep, out of bounds) is never written."""
    try:
        text = sorted_json(metadata.to_json())
        _parse_metadata({METADATA_KEY: text})
    except (BundleError, ValueError, TypeError) as exc:
        reason = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise BundleError(f"refusing to write {path}: snapvit could not read its metadata back ({reason})") from None
    return text


def _parse_metadata(header: dict[str, str]) -> BundleMetadata:
    if METADATA_KEY not in header:
        raise BundleError(f"a safetensors file but not a snapvit bundle (no '{METADATA_KEY}' metadata)")
    return BundleMetadata.from_json(parse_json(header[METADATA_KEY], "bundle metadata"))


def _precheck(metadata: BundleMetadata, shapes: dict[str, tuple[int, ...]]) -> None:
    """What the metadata says about size, checked against the file's tensor list before any model is built, so
    that building the skeleton costs no more than the file is large (a small file claiming depth 10^5 stops here)."""
    structure = metadata.structure
    precheck_size(structure, metadata.source.model_args, shapes, WEIGHT_PREFIX)
    n = structure["num_blocks"]
    for kind, width in ((MLP, structure["mlp_hidden"]), (HEADS, structure["num_heads"])):
        for key in (SCORE_KEYS[kind], ORDER_KEYS[kind]):
            if shapes.get(key) != (n, width):
                raise BundleError(f"tensor {key} has shape {list(shapes.get(key, ()))}, expected {[n, width]}")


def _skeleton(source: ModelSource) -> nn.Module:
    try:
        return build_architecture(source, device="meta")
    except Exception as exc:  # noqa: BLE001 - a bad architecture record is a bad bundle
        reason = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise BundleError(f"cannot rebuild architecture {source.architecture!r}: {reason}") from None


def _check_tensors(metadata: BundleMetadata, shapes: dict, skeleton: nn.Module, adapter: ModelAdapter) -> None:
    """The file's tensors are exactly those the metadata implies (plus the extras it lists), in names and shapes;
    and the structure record describes the architecture that was built."""
    if adapter.structure() != metadata.structure:
        raise BundleError("the structure record does not describe the architecture built from source")
    expected = {WEIGHT_PREFIX + k: tuple(v.shape) for k, v in skeleton.state_dict().items()}
    dense = adapter.widths()
    for kind in (MLP, HEADS):
        shape = (adapter.num_blocks, dense.of(kind)[0])
        expected[SCORE_KEYS[kind]] = shape
        expected[ORDER_KEYS[kind]] = shape
    if metadata.correction_stats is not None:
        expected.update(expected_shapes(adapter))
    listed = set(metadata.extras)
    if listed & set(expected) or any(name.startswith(WEIGHT_PREFIX) for name in listed):
        raise BundleError("an extra tensor listed in the metadata shadows a weight, score or order")
    if not listed <= set(shapes):
        raise BundleError(f"extra tensors {sorted(listed - set(shapes))[:3]} listed in the metadata are missing")
    check_same_tensors(expected, shapes, listed)


def _expected_dtypes(metadata: BundleMetadata, skeleton: nn.Module, adapter: ModelAdapter) -> dict[str, str]:
    """The dtype of every tensor the metadata implies: the skeleton's for weights, as :func:`write_bundle` stores
    scores (float64), orders (int64) and correction statistics (in the dtype their record's layout names)."""
    expected = {WEIGHT_PREFIX + k: dtype_name(v.dtype) for k, v in skeleton.state_dict().items()}
    expected.update({key: "F64" for key in SCORE_KEYS.values()})
    expected.update({key: "I64" for key in ORDER_KEYS.values()})
    if metadata.correction_stats is not None:
        stats_dtype = STATS_DTYPES[metadata.correction_stats.storage]
        expected.update({key: stats_dtype for key in expected_shapes(adapter)})
    return expected
