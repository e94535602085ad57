"""The vocabulary every model family speaks: where each prunable unit lives inside a block's tensors.

A *unit* is one MLP hidden neuron or one attention head. Each family adapter lists, per block, the tensors that hold a
slice of every unit (:class:`UnitTensor`). With that list, permuting, slicing and masking are the same three tensor
operations for every family, applied to plain state dicts — no model instance is needed to cut a bundle.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

MLP = "mlp"
HEADS = "heads"
UNIT_KINDS = (MLP, HEADS)


@dataclass(frozen=True)
class UnitTensor:
    """A tensor (named relative to its block) whose ``axis`` is laid out as ``[groups, units, unit_size]``.

    Examples for a timm ViT block with H heads of size hd: ``attn.qkv.weight`` rows are ``[3 (q|k|v), H, hd]``
    (``axis=0, groups=3, unit_size=hd``); ``attn.proj.weight`` columns are ``[1, H, hd]`` (``axis=1``);
    ``mlp.fc1.weight`` rows are ``[1, D, 1]``. ``consumer`` marks tensors that read the unit's output (``fc2``,
    ``proj``): zeroing a unit's slice there removes the unit exactly, which is how masking works.

    ``group`` is only set by :meth:`ModelAdapter.score_tensors`: the one group whose slice defines the unit's
    reference score (2 = the v rows of a fused qkv; the gate half of a packed SwiGLU ``fc1``); ``None`` = all.
    Permuting, slicing and masking always move every group.
    """

    name: str
    axis: int
    groups: int = 1
    unit_size: int = 1
    consumer: bool = False
    group: int | None = None


@dataclass(frozen=True)
class Widths:
    """Kept MLP hidden neurons and attention heads of every block."""

    mlp: tuple[int, ...]
    heads: tuple[int, ...]

    def __post_init__(self) -> None:
        if len(self.mlp) != len(self.heads):
            raise ValueError("mlp and heads widths must have one entry per block")

    def of(self, kind: str) -> tuple[int, ...]:
        return self.mlp if kind == MLP else self.heads

    def to_json(self) -> dict[str, list[int]]:
        return {"mlp_hidden": list(self.mlp), "num_heads": list(self.heads)}

    @classmethod
    def from_json(cls, data: dict[str, Sequence[int]]) -> Widths:
        return cls(tuple(int(v) for v in data["mlp_hidden"]), tuple(int(v) for v in data["num_heads"]))


def take_units(tensor: torch.Tensor, spec: UnitTensor, index: torch.Tensor | int) -> torch.Tensor:
    """Select units of ``tensor`` along ``spec.axis``: an index tensor (any order) or an int (the first ``n``)."""
    axis = spec.axis % tensor.ndim
    shape = tensor.shape
    n_units = shape[axis] // (spec.groups * spec.unit_size)
    view = tensor.reshape(*shape[:axis], spec.groups, n_units, spec.unit_size, *shape[axis + 1 :])
    if isinstance(index, int):
        picked = view.narrow(axis + 1, 0, index)
        count = index
    else:
        picked = view.index_select(axis + 1, index.to(tensor.device))
        count = index.numel()
    new_len = spec.groups * count * spec.unit_size
    return picked.reshape(*shape[:axis], new_len, *shape[axis + 1 :]).contiguous()


def unit_view(tensor: torch.Tensor, spec: UnitTensor) -> torch.Tensor:
    """``tensor`` as ``[groups, units, unit_size, rest]`` (only group ``spec.group`` when set, kept as a size-1 dim)."""
    axis = spec.axis % tensor.ndim
    n_units = tensor.shape[axis] // (spec.groups * spec.unit_size)
    view = tensor.movedim(axis, 0).reshape(spec.groups, n_units, spec.unit_size, -1)
    return view if spec.group is None else view[spec.group : spec.group + 1]


def unit_rows(tensor: torch.Tensor, spec: UnitTensor) -> torch.Tensor:
    """``[units, n]``: row ``u`` holds every element of unit ``u`` in ``tensor`` (only group ``spec.group`` if set).

    Works on a weight or on its gradient; e.g. the reference score of a unit is ``unit_rows(grad, spec)`` squared
    and averaged over the row (docs/method.md §3.2).
    """
    view = unit_view(tensor, spec)
    return view.transpose(0, 1).reshape(view.shape[1], -1)


def resized_linear(linear: nn.Linear, *, in_features: int | None = None, out_features: int | None = None) -> nn.Linear:
    """An ``nn.Linear`` like ``linear`` (device, dtype, bias) with new sizes; its values are set by loading."""
    return nn.Linear(
        in_features if in_features is not None else linear.in_features,
        out_features if out_features is not None else linear.out_features,
        bias=linear.bias is not None,
        device=linear.weight.device,
        dtype=linear.weight.dtype,
    )


class ModelAdapter:
    """Knows one model family's structure: its blocks, where units live, how to resize a block, its features.

    Subclasses implement :meth:`matches`, :meth:`check`, :meth:`unit_tensors`, :meth:`score_tensors`,
    :meth:`resize_block`, :meth:`features` and :meth:`cost_terms`. Everything else (permuting, slicing, masking,
    FLOPs) is generic.
    """

    family: str = ""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.check()

    @classmethod
    def matches(cls, model: nn.Module) -> bool:
        raise NotImplementedError

    def check(self) -> None:
        """Raise :class:`~snapvit_cli.errors.UnsupportedModelError` if a block cannot be pruned exactly."""
        raise NotImplementedError

    # --- structure -------------------------------------------------------------------------------------------
    def blocks(self) -> Sequence[nn.Module]:
        return list(self.model.blocks)

    @property
    def num_blocks(self) -> int:
        return len(self.blocks())

    def block_prefix(self, index: int) -> str:
        return f"blocks.{index}."

    def unit_tensors(self, kind: str, index: int) -> list[UnitTensor]:
        raise NotImplementedError

    def score_tensors(self, kind: str, index: int) -> list[UnitTensor]:
        """The weights (relative to the block, no biases) whose gradients define the reference score (§3.2).

        MLP: the rows of ``fc1`` (SwiGLU: of the gate projection ``w1`` only); heads: the value rows of the
        attention input projection. Each is a parameter of the block; ``group`` selects the part that counts.
        """
        raise NotImplementedError

    def width(self, kind: str, index: int) -> int:
        raise NotImplementedError

    def widths(self) -> Widths:
        n = range(self.num_blocks)
        return Widths(tuple(self.width(MLP, i) for i in n), tuple(self.width(HEADS, i) for i in n))

    def resize_block(self, index: int, mlp: int, heads: int) -> None:
        """Give block ``index`` new module shapes for ``mlp`` neurons and ``heads`` heads (values set on load)."""
        raise NotImplementedError

    def materialize(self) -> None:
        """Allocate and recompute the non-persistent buffers a meta-device build left empty (e.g. RoPE periods).

        They are not in any state dict, so loading cannot fill them; timm modules that own such buffers recompute
        them in ``init_non_persistent_buffers``. Called by :func:`snapvit_cli.elastic.surgery.build_model` after
        loading.
        """
        device = next(self.model.parameters()).device
        for name, module in self.model.named_modules():
            empty = [key for key, buf in module.named_buffers(recurse=False) if buf.is_meta]
            if not empty:
                continue
            init = getattr(module, "init_non_persistent_buffers", None)
            if init is None:
                raise RuntimeError(f"{name or 'model'} has buffers {empty} that cannot be recomputed after loading")
            for key in empty:
                setattr(module, key, torch.empty_like(getattr(module, key), device=device))
            init()

    # --- behaviour -------------------------------------------------------------------------------------------
    def features(self, images: torch.Tensor) -> torch.Tensor:
        """The pooled embedding with the classifier disabled (docs/method.md §1.4)."""
        raise NotImplementedError

    def check_resolution(self, resolution: int | None) -> int:
        """The input side to use (the model's own for None); a :class:`SnapvitError` if the model cannot take it."""
        raise NotImplementedError

    def cost_terms(self, resolution: int | None = None):
        """A :class:`snapvit_cli.adapters.cost.CostTerms` for this model at ``resolution`` (default: its own)."""
        raise NotImplementedError

    def structure(self) -> dict:
        """JSON description stored in bundles and sliced-model configs."""
        raise NotImplementedError


def linear_of(block: nn.Module, spec: UnitTensor) -> nn.Linear:
    """The Linear that owns consumer tensor ``spec``; correction is defined for input columns of a weight only."""
    path, _, param = spec.name.rpartition(".")
    module = block.get_submodule(path)
    if not isinstance(module, nn.Linear) or param != "weight" or spec.axis not in (1, -1):
        raise ValueError(f"consumer tensor {spec.name} is not the input-column side of a Linear weight")
    return module
