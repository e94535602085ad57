"""The elastic bundle: one ``.safetensors`` file from which a model of any budget is cut offline.

Layout (all tensors in one file):

- ``model.<name>``: the dense state dict with every block's MLP neurons and heads permuted into descending
  importance (the model's output is unchanged), so any budget is a prefix of each block;
- ``scores.mlp`` ``[L, D]`` and ``scores.heads`` ``[L, H]``: final importance scores in float64 (published scores
  reach 1e-43, below float32's normal range), in the *original* unit order;
- ``order.mlp`` / ``order.heads``: the permutation applied (permuted unit ``k`` of block ``l`` is original unit
  ``order[l, k]``), so ``scores.gather(1, order)`` is descending per row;
- optional method extras, e.g. ``raw.mlp``, ``ga.mlp_weight``, ``ga.fitness_trace``.

The header metadata holds ``"format": "pt"`` and ``"snapvit"``: a JSON document with the format version, the source
model, the structure, the scoring method with every setting, the min-keep ratios and the snapvit version.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from snapvit_cli._version import __version__
from snapvit_cli.adapters import HEADS, MLP, ModelAdapter, Widths, get_adapter
from snapvit_cli.adapters.cost import CostTerms
from snapvit_cli.elastic.artifacts import BUNDLE_KIND
from snapvit_cli.elastic.artifacts import HEADER_KEY as METADATA_KEY
from snapvit_cli.elastic.budget import DEFAULT_HEAD_OFFSET, DEFAULT_MIN_KEEP, SlicePlan, plan_slice
from snapvit_cli.elastic.sliced import save_sliced, sliced_config
from snapvit_cli.elastic.surgery import build_model, keep_prefix, permute, read_prefix
from snapvit_cli.errors import BundleError, SnapvitError
from snapvit_cli.fileio import atomic_path, check_output, sha256_file
from snapvit_cli.models.loading import ModelSource, build_architecture
from snapvit_cli.scoring.scoreset import ScoreSet

if TYPE_CHECKING:
    from snapvit_cli.correction.apply import Progress as CorrectionProgress
    from snapvit_cli.correction.settings import CorrectionSettings

FORMAT_VERSION = 1
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
    force: bool = False,
) -> Path:
    """Permute ``model`` by ``scores`` and write the bundle atomically (never overwriting without ``force``)."""
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
        tensors[name] = tensor.detach().cpu().contiguous()
    metadata = {
        "format_version": FORMAT_VERSION,
        "kind": BUNDLE_KIND,
        "snapvit_version": __version__,
        "source": source.to_json(),
        "structure": adapter.structure(),
        "min_keep": {**DEFAULT_MIN_KEEP, **(min_keep or {})},
        "scoring": {"method": scores.method, "settings": scores.settings, "timings_s": scores.timings},
        "extras": sorted(scores.extras),
    }
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"format": "pt", METADATA_KEY: json.dumps(metadata)})
    return path


class ElasticBundle:
    """A validated bundle. ``slice(...)`` cuts a model of any budget; weights are memory-mapped once and kept, so
    switching budget at run time costs a prefix copy, not a reload. ``read_state_dict`` serves one-off cuts."""

    def __init__(self, path: Path, metadata: dict[str, Any], scores: dict[str, torch.Tensor], adapter: ModelAdapter):
        self.path = path
        self.metadata = metadata
        self.source = ModelSource.from_json(metadata["source"])
        self.structure: dict[str, Any] = metadata["structure"]
        self.min_keep: dict[str, float] = metadata["min_keep"]
        self.scores = scores  # descending per block, aligned with the permuted weights
        self._adapter = adapter  # on a meta-device skeleton: shapes only
        self._weights: dict[str, torch.Tensor] | None = None

    # --- reading -------------------------------------------------------------------------------------------------
    @classmethod
    def open(cls, path: str | os.PathLike) -> ElasticBundle:
        """Open and validate a bundle: format version, required tensors, shapes against the architecture."""
        path = Path(path)
        if not path.is_file():
            raise BundleError(f"bundle {path} does not exist")
        try:
            with safe_open(str(path), framework="pt") as f:
                header = f.metadata() or {}
                keys = set(f.keys())
                shapes = {k: tuple(f.get_slice(k).get_shape()) for k in keys}
                metadata = _parse_metadata(path, header)
                source = ModelSource.from_json(metadata["source"])
                skeleton = _skeleton(path, source)
                adapter = get_adapter(skeleton)
                _check_tensors(path, keys, shapes, skeleton, adapter)
                raw = {k: f.get_tensor(k) for k in (*SCORE_KEYS.values(), *ORDER_KEYS.values())}
        except SnapvitError:
            raise
        except Exception as exc:  # noqa: BLE001 - safetensors reports corruption with several exception types
            raise BundleError(f"{path} is not a readable safetensors bundle (truncated or corrupt?): {exc}") from None
        scores = {}
        for kind in (MLP, HEADS):
            values, order = raw[SCORE_KEYS[kind]].double(), raw[ORDER_KEYS[kind]].long()
            if not torch.equal(torch.sort(order, dim=1).values, torch.arange(order.shape[1]).expand_as(order)):
                raise BundleError(f"{path}: {ORDER_KEYS[kind]} is not a permutation of each block's units")
            if not torch.isfinite(values).all():
                raise BundleError(f"{path}: {SCORE_KEYS[kind]} contains NaN or infinity")
            scores[kind] = values.gather(1, order)
        return cls(path, metadata, scores, adapter)

    @property
    def num_blocks(self) -> int:
        return self._adapter.num_blocks

    @property
    def dense_widths(self) -> Widths:
        return self._adapter.widths()

    def cost(self, resolution: int | None = None) -> CostTerms:
        return self._adapter.cost_terms(resolution)

    def read_tensor(self, name: str) -> torch.Tensor:
        """One tensor of the file by its stored name (e.g. ``raw.mlp``), read on demand."""
        with safe_open(str(self.path), framework="pt") as f:
            if name not in f.keys():
                raise BundleError(f"{self.path} has no tensor {name!r}")
            return f.get_tensor(name)

    def weights(self) -> dict[str, torch.Tensor]:
        """The permuted dense state dict, memory-mapped on first use and kept (pages are read when first touched;
        the mapping is copy-on-write, so nothing ever writes to the file)."""
        if self._weights is None:
            with safe_open(str(self.path), framework="pt", backend="mmap") as f:
                self._weights = {
                    k[len(WEIGHT_PREFIX) :]: f.get_tensor(k) for k in f.keys() if k.startswith(WEIGHT_PREFIX)
                }
        return self._weights

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
        """Resolve a budget into per-block widths and cost; see :func:`snapvit_cli.elastic.budget.plan_slice`."""
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
        sliced = keep_prefix(weights, self._adapter, widths)
        return {
            k: v.clone() if v.untyped_storage().data_ptr() == weights[k].untyped_storage().data_ptr() else v
            for k, v in sliced.items()
        }

    def read_state_dict(self, widths: Widths) -> dict[str, torch.Tensor]:
        """The same as :meth:`state_dict`, read straight from the file without keeping the dense weights: only the
        kept units' bytes are read, so a one-off cut (``snapvit slice``) needs about the memory of its result."""
        with safe_open(str(self.path), framework="pt", backend="pread") as f:
            return read_prefix(f, self._adapter, widths, prefix=WEIGHT_PREFIX)

    def save_slice(
        self,
        out_dir: str | os.PathLike,
        plan: SlicePlan,
        *,
        force: bool = False,
        correction: CorrectionSettings | None = None,
        progress: CorrectionProgress | None = None,
    ) -> Path:
        """Write the model for ``plan`` as a sliced-model folder, as ``snapvit slice`` does; ``config.json`` records
        the bundle file's sha256 (the Hub's LFS id for it).

        Without ``correction`` the weights come from :meth:`read_state_dict`. With it, the kept columns of each
        consumer layer are re-fit on its calibration images first (:mod:`snapvit_cli.correction`), and
        ``config.json["correction"]`` records the settings, the images and every layer's error.
        """
        config = sliced_config(self.metadata, plan, bundle_sha256=sha256_file(self.path))
        if correction is None:
            return save_sliced(out_dir, self.read_state_dict(plan.widths), config, force=force)
        check_output(out_dir, force)  # fail before the expensive part
        from snapvit_cli.correction.apply import correct_with_settings

        result = correct_with_settings(self, plan, correction, progress=progress)
        return save_sliced(out_dir, result.state, {**config, "correction": result.to_json()}, force=force)

    def slice(self, plan: SlicePlan | None = None, **budget: Any) -> nn.Module:
        """A dense, physically smaller timm model for ``plan`` (or for a budget given as keywords)."""
        plan = plan or self.plan(**budget)
        model = build_model(self.skeleton(), plan.widths, self.state_dict(plan.widths))
        model.pretrained_cfg = {**getattr(model, "pretrained_cfg", {}), **self.source.pretrained_cfg}
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


def _parse_metadata(path: Path, header: dict[str, str]) -> dict[str, Any]:
    if METADATA_KEY not in header:
        raise BundleError(f"{path} is a safetensors file but not a snapvit bundle (no '{METADATA_KEY}' metadata)")
    try:
        metadata = json.loads(header[METADATA_KEY])
    except json.JSONDecodeError as exc:
        raise BundleError(f"{path}: bundle metadata is not valid JSON ({exc})") from None
    if metadata.get("kind") != BUNDLE_KIND:
        raise BundleError(f"{path} is a snapvit {metadata.get('kind', 'file')}, not an elastic bundle")
    version = metadata.get("format_version")
    if version != FORMAT_VERSION:
        newer = isinstance(version, int) and version > FORMAT_VERSION
        hint = "; upgrade snapvit" if newer else ""
        raise BundleError(
            f"{path} has bundle format version {version!r}; this snapvit reads version {FORMAT_VERSION}{hint}"
        )
    for key in ("source", "structure", "min_keep", "scoring"):
        if key not in metadata:
            raise BundleError(f"{path}: bundle metadata lacks '{key}'")
    return metadata


def _skeleton(path: Path, source: ModelSource) -> nn.Module:
    try:
        return build_architecture(source, device="meta")
    except Exception as exc:  # noqa: BLE001 - a bad architecture record is a bad bundle
        raise BundleError(f"{path}: cannot rebuild architecture {source.architecture!r}: {exc}") from None


def _check_tensors(path: Path, keys: set[str], shapes: dict, skeleton: nn.Module, adapter: ModelAdapter) -> None:
    expected = {WEIGHT_PREFIX + k: tuple(v.shape) for k, v in skeleton.state_dict().items()}
    dense = adapter.widths()
    for kind in (MLP, HEADS):
        shape = (adapter.num_blocks, dense.of(kind)[0])
        expected[SCORE_KEYS[kind]] = shape
        expected[ORDER_KEYS[kind]] = shape
    missing = sorted(set(expected) - keys)
    if missing:
        raise BundleError(f"{path} is missing {len(missing)} tensors, e.g. {missing[:3]}")
    wrong = [(k, shapes[k], s) for k, s in expected.items() if shapes[k] != s]
    if wrong:
        name, got, want = wrong[0]
        raise BundleError(f"{path}: tensor {name} has shape {list(got)} but the metadata implies {list(want)}")
