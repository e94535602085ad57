"""The MLP layouts a block may hold, shared by every family adapter (docs/method.md §2.1).

- ``Mlp`` (fc1 → act → fc2): neuron ``j`` is row ``j`` of ``fc1`` and column ``j`` of ``fc2``.
- ``GluMlp`` with packed weights (DINOv2-giant's SwiGLU, ``SwiGLUPacked``): ``fc1`` stacks ``[gate | value]`` (order
  set by ``gate_last``), so neuron ``j`` is rows ``j`` and ``j + D`` of ``fc1`` and column ``j`` of ``fc2``.
- ``SwiGLU`` with split weights (DINOv3 ``+`` models): rows ``j`` of ``fc1_g`` (gate, the reference's ``w1``) and
  ``fc1_x`` (``w2``), column ``j`` of ``fc2`` (``w3``).

A norm over the hidden neurons (timm's ``scale_mlp``) mixes neurons, so no neuron can be removed exactly: refused.
"""

from __future__ import annotations

from timm.layers import GluMlp, Mlp, SwiGLU
from torch import nn

from snapvit_cli.adapters.base import UnitTensor, resized_linear
from snapvit_cli.errors import UnsupportedModelError

MLP_TYPES = {Mlp: "standard", GluMlp: "swiglu-packed", SwiGLU: "swiglu"}


def check_mlp(mlp: nn.Module, where: str) -> None:
    """Refuse an MLP whose neurons cannot be removed exactly."""
    if type(mlp) not in MLP_TYPES:
        raise UnsupportedModelError(
            f"{where} uses {type(mlp).__name__}; supported MLPs are timm's Mlp, GluMlp (packed SwiGLU) and SwiGLU"
        )
    if not isinstance(mlp.norm, nn.Identity):
        raise UnsupportedModelError(f"{where}: a norm over the MLP's hidden neurons cannot be pruned exactly")
    linears = [mlp.fc1_g, mlp.fc1_x] if isinstance(mlp, SwiGLU) else [mlp.fc1]
    if not all(isinstance(m, nn.Linear) for m in [*linears, mlp.fc2]):
        raise UnsupportedModelError(f"{where}: convolutional MLPs are not supported")


def mlp_type(mlp: nn.Module) -> str:
    return MLP_TYPES[type(mlp)]


def mlp_width(mlp: nn.Module) -> int:
    """Hidden neurons: the input width of ``fc2`` in every layout."""
    return mlp.fc2.in_features


def _input_projections(mlp: nn.Module) -> list[tuple[str, nn.Linear, int]]:
    """(name, layer, groups) of the layers that compute the hidden neurons."""
    if isinstance(mlp, SwiGLU):
        return [("fc1_g", mlp.fc1_g, 1), ("fc1_x", mlp.fc1_x, 1)]
    return [("fc1", mlp.fc1, 2 if isinstance(mlp, GluMlp) else 1)]


def mlp_unit_tensors(mlp: nn.Module, prefix: str = "mlp.") -> list[UnitTensor]:
    specs = []
    for name, layer, groups in _input_projections(mlp):
        specs.append(UnitTensor(f"{prefix}{name}.weight", 0, groups=groups))
        if layer.bias is not None:
            specs.append(UnitTensor(f"{prefix}{name}.bias", 0, groups=groups))
    specs.append(UnitTensor(f"{prefix}fc2.weight", 1, consumer=True))
    return specs


def mlp_score_tensors(mlp: nn.Module, prefix: str = "mlp.") -> list[UnitTensor]:
    """``fc1`` rows; for SwiGLU only the gate projection (the reference's ``w1``: silu(w1 x) · w2 x)."""
    if isinstance(mlp, SwiGLU):
        return [UnitTensor(f"{prefix}fc1_g.weight", 0)]
    if isinstance(mlp, GluMlp):
        return [UnitTensor(f"{prefix}fc1.weight", 0, groups=2, group=1 if mlp.gate_last else 0)]
    return [UnitTensor(f"{prefix}fc1.weight", 0)]


def resize_mlp(mlp: nn.Module, width: int) -> None:
    """Give ``mlp`` the module shapes of ``width`` hidden neurons (values are set by loading)."""
    for name, layer, groups in _input_projections(mlp):
        setattr(mlp, name, resized_linear(layer, out_features=groups * width))
    mlp.fc2 = resized_linear(mlp.fc2, in_features=width)
