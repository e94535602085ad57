"""Closed-form cost of a (sliced) model: multiply-accumulates and parameters as functions of the kept widths.

Cost is linear in the kept neurons and heads of each block (docs/method.md §7.3), so a model is summarised by a few
constants (:class:`CostTerms`) and any budget is evaluated without building it. Counted, as
``torch.utils.flop_counter.FlopCounterMode`` counts them: every matmul and convolution (patch embedding, qkv, the
attention core q·kᵀ and attn·v, proj, fc1, fc2, classifier). Norms, activations, softmax and additions are not counted.
GMACs = FLOPs / 2.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from snapvit_cli.adapters.base import HEADS, MLP, ModelAdapter, Widths


@dataclass(frozen=True)
class CostTerms:
    """Cost constants of one model at one input resolution."""

    resolution: int
    tokens: int
    fixed_macs: int
    macs_per_neuron: int
    macs_per_head: int
    fixed_params: int
    params_per_neuron: int
    params_per_head: int

    def macs(self, widths: Widths) -> int:
        return self.fixed_macs + sum(widths.mlp) * self.macs_per_neuron + sum(widths.heads) * self.macs_per_head

    def gmacs(self, widths: Widths) -> float:
        return self.macs(widths) / 1e9

    def params(self, widths: Widths) -> int:
        return self.fixed_params + sum(widths.mlp) * self.params_per_neuron + sum(widths.heads) * self.params_per_head

    def to_json(self) -> dict:
        return asdict(self)


def unit_costs(adapter: ModelAdapter, kind: str, tokens: int) -> tuple[int, int]:
    """(MACs over all tokens, parameters) of one unit of ``kind``, read off the unit tensors of block 0.

    Every weight element of a unit is used once per token; biases cost no MAC. A head also spends
    ``2·tokens²·head_dim`` MACs in its attention core. All blocks of a dense model have the same unit cost.
    """
    state = dict(adapter.blocks()[0].named_parameters())
    width = adapter.width(kind, 0)
    weights = params = 0
    for spec in adapter.unit_tensors(kind, 0):
        per_unit = state[spec.name].numel() // width
        params += per_unit
        if not spec.name.endswith("bias"):
            weights += per_unit
    macs = weights * tokens
    if kind == HEADS:
        macs += 2 * tokens * tokens * adapter.head_dim
    return macs, params


def dense_unit_params(adapter: ModelAdapter) -> int:
    """Parameters held by prunable units in the whole model at its current widths."""
    total = 0
    for i, block in enumerate(adapter.blocks()):
        state = dict(block.named_parameters())
        for kind in (MLP, HEADS):
            total += sum(state[spec.name].numel() for spec in adapter.unit_tensors(kind, i))
    return total
