"""Adapter for timm's ``VisionTransformer``: DINO, DINOv2 (incl. giant's packed SwiGLU), DeiT (incl. distilled),
DeiT-III, AugReg and SigLIP2.

Per block (``timm.models.vision_transformer.Block``): heads live in ``attn.qkv`` rows laid out
``[q|k|v] × head × head_dim`` and in ``attn.proj`` columns ``head × head_dim``; MLP neurons are described in
:mod:`snapvit_cli.adapters.mlp`. LayerScale, q/k norms (over head_dim), register tokens and missing class tokens need
no surgery. timm's ``Attention`` reshapes by ``attn_dim``, so updating ``num_heads`` and ``attn_dim`` is all a smaller
head count needs. SigLIP2's attention-pool (MAP) head is kept whole: only the blocks are pruned.
"""

from __future__ import annotations

import math

import torch
from timm.layers import Attention, AttentionPoolLatent
from timm.models.vision_transformer import Block, VisionTransformer
from torch import nn

from snapvit_cli.adapters.base import HEADS, MLP, ModelAdapter, UnitTensor, resized_linear
from snapvit_cli.adapters.cost import CostTerms, dense_unit_params, unit_costs
from snapvit_cli.adapters.mlp import (
    check_mlp,
    mlp_score_tensors,
    mlp_type,
    mlp_unit_tensors,
    mlp_width,
    resize_mlp,
)
from snapvit_cli.errors import SnapvitError, UnsupportedModelError

# Largest input side, as a multiple of the side the model was built for: position embeddings (learned, resampled by
# timm; or RoPE) are only interpolated up to there, and attention's cost grows with the fourth power of the side.
MAX_RESOLUTION_SCALE = 4
# Most patch tokens per image that snapvit builds or runs: a 64 x 64 grid (DINOv2 at 896 px, DINOv3 at 1024 px;
# DINOv2's own 518 px is 1,369). Bounds what a file's img_size / patch_size can make attention and RoPE compute.
MAX_TOKENS = 4096


class ViTAdapter(ModelAdapter):
    family = "vit"

    @classmethod
    def matches(cls, model: nn.Module) -> bool:
        return isinstance(model, VisionTransformer)

    def check(self) -> None:
        model = self.model
        name = type(model).__name__
        self._check_pool()
        for i, block in enumerate(model.blocks):
            where = f"{name} block {i}"
            if type(block) is not Block:
                raise UnsupportedModelError(
                    f"{where} is a {type(block).__name__}; only timm's standard (pre-norm, sequential) Block is "
                    f"supported"
                )
            attn = block.attn
            if type(attn) is not Attention:
                raise UnsupportedModelError(f"{where} uses {type(attn).__name__}; only timm's Attention is supported")
            if not isinstance(attn.norm, nn.Identity) or getattr(attn, "gate", None) is not None:
                raise UnsupportedModelError(
                    f"{where}: attention output norm/gate across heads cannot be pruned exactly"
                )
            check_mlp(block.mlp, where)

    def _check_pool(self) -> None:
        pool = getattr(self.model, "attn_pool", None)
        if pool is not None and type(pool) is not AttentionPoolLatent:
            raise UnsupportedModelError(f"{type(self.model).__name__}: pooling head {type(pool).__name__} is unknown")

    # --- structure -------------------------------------------------------------------------------------------
    @property
    def head_dim(self) -> int:
        return self.model.blocks[0].attn.head_dim

    @property
    def embed_dim(self) -> int:
        return self.model.embed_dim

    def width(self, kind: str, index: int) -> int:
        block = self.model.blocks[index]
        return mlp_width(block.mlp) if kind == MLP else block.attn.num_heads

    def unit_tensors(self, kind: str, index: int) -> list[UnitTensor]:
        block = self.model.blocks[index]
        if kind == MLP:
            return mlp_unit_tensors(block.mlp)
        hd = block.attn.head_dim
        specs = [UnitTensor("attn.qkv.weight", 0, groups=3, unit_size=hd)]
        if block.attn.qkv.bias is not None:
            specs.append(UnitTensor("attn.qkv.bias", 0, groups=3, unit_size=hd))
        specs.append(UnitTensor("attn.proj.weight", 1, unit_size=hd, consumer=True))
        return specs

    def score_tensors(self, kind: str, index: int) -> list[UnitTensor]:
        block = self.model.blocks[index]
        if kind == MLP:
            return mlp_score_tensors(block.mlp)
        return [UnitTensor("attn.qkv.weight", 0, groups=3, unit_size=block.attn.head_dim, group=2)]

    def resize_block(self, index: int, mlp: int, heads: int) -> None:
        block = self.model.blocks[index]
        resize_mlp(block.mlp, mlp)
        self._resize_attention(block.attn, heads)

    @staticmethod
    def _resize_attention(attn: Attention, heads: int) -> None:
        attn.num_heads = heads
        attn.attn_dim = heads * attn.head_dim
        attn.qkv = resized_linear(attn.qkv, out_features=3 * attn.attn_dim)
        attn.proj = resized_linear(attn.proj, in_features=attn.attn_dim)

    # --- behaviour -------------------------------------------------------------------------------------------
    def features(self, images: torch.Tensor) -> torch.Tensor:
        """The model's pre-logits: CLS after the final norm, the mean of CLS and distillation token (distilled
        DeiT), the average of patch tokens (``global_pool='avg'``), or the attention-pool output (SigLIP2)."""
        model = self.model
        return model.forward_head(model.forward_features(images), pre_logits=True)

    def check_resolution(self, resolution: int | None) -> int:
        """The input side to use: the model's own for None, else ``resolution`` if the model supports it.

        Supported: a positive multiple of the patch size (timm's patch embedding drops a partial patch, so another
        size would be measured and run as a smaller one) up to ``MAX_RESOLUTION_SCALE`` times the built size.
        This one check serves ``slice``, ``eval`` and the library alike.
        """
        patch_embed = self.model.patch_embed
        native = max(patch_embed.img_size)
        if resolution is None:
            return native
        step = math.lcm(*patch_embed.patch_size)
        largest = MAX_RESOLUTION_SCALE * native // step * step
        if isinstance(resolution, bool) or not isinstance(resolution, int) or not step <= resolution <= largest:
            raise SnapvitError(
                f"resolution {resolution!r} is not supported by this model: use {step} to {largest} px "
                f"in steps of {step} (its patch size; {native} px is the size it was built for)",
                param="resolution",
            )
        if resolution % step:  # within the range, so both neighbouring multiples are too
            lower = resolution // step * step
            raise SnapvitError(
                f"resolution {resolution} is not a multiple of the patch size {step}; use {lower} or {lower + step} px",
                param="resolution",
            )
        tokens = math.prod(resolution // p for p in patch_embed.patch_size)
        if tokens > MAX_TOKENS:
            raise SnapvitError(
                f"resolution {resolution} gives {tokens} patch tokens per image; snapvit runs at most {MAX_TOKENS}",
                param="resolution",
            )
        return resolution

    def tokens(self, resolution: int | None = None) -> tuple[int, int]:
        """(patches, tokens in each block) at ``resolution`` (default: the model's own image size)."""
        patch_embed = self.model.patch_embed
        grid = patch_embed.grid_size if resolution is None else tuple(resolution // p for p in patch_embed.patch_size)
        patches = grid[0] * grid[1]
        return patches, patches + self.model.num_prefix_tokens

    def cost_terms(self, resolution: int | None = None) -> CostTerms:
        model = self.model
        if resolution is not None:
            resolution = self.check_resolution(resolution)
        patches, tokens = self.tokens(resolution)
        conv = model.patch_embed.proj
        patch_macs = patches * conv.weight.numel()
        head_macs = sum(m.weight.numel() for m in self._classifiers())
        pool_macs = self._pool_macs(patches, tokens)
        mlp_macs, mlp_params = unit_costs(self, MLP, tokens)
        head_unit_macs, head_unit_params = unit_costs(self, HEADS, tokens)
        total_params = sum(p.numel() for p in model.parameters())
        size = resolution or model.patch_embed.img_size[0]
        return CostTerms(
            resolution=size,
            tokens=tokens,
            fixed_macs=patch_macs + pool_macs + head_macs,
            macs_per_neuron=mlp_macs,
            macs_per_head=head_unit_macs,
            fixed_params=total_params - dense_unit_params(self),
            params_per_neuron=mlp_params,
            params_per_head=head_unit_params,
        )

    def _pool_tokens(self, patches: int, tokens: int) -> int:
        """Tokens the attention pool reads: timm's ViT drops prefix tokens first unless told otherwise."""
        return tokens if getattr(self.model, "pool_include_prefix", False) else patches

    def _pool_macs(self, patches: int, tokens: int) -> int:
        """MACs of an attention-pool (MAP) head: its latent queries read every pooled token once (kv), then q·kᵀ,
        attn·v and the latent-sized q, proj and MLP layers."""
        pool = getattr(self.model, "attn_pool", None)
        if pool is None:
            return 0
        seen = self._pool_tokens(patches, tokens)
        latent = pool.latent_len
        linear = sum(
            m.weight.numel() * (seen if m is pool.kv else latent) for m in pool.modules() if isinstance(m, nn.Linear)
        )
        return linear + 2 * latent * seen * pool.num_heads * pool.head_dim

    def _classifiers(self) -> list[nn.Linear]:
        heads = [getattr(self.model, name, None) for name in ("head", "head_dist")]
        return [h for h in heads if isinstance(h, nn.Linear)]

    def structure(self) -> dict:
        model = self.model
        return {
            "family": self.family,
            "num_blocks": self.num_blocks,
            "embed_dim": self.embed_dim,
            "num_heads": self.width(HEADS, 0),
            "head_dim": self.head_dim,
            "mlp_hidden": self.width(MLP, 0),
            "mlp_type": mlp_type(model.blocks[0].mlp),
            "num_prefix_tokens": model.num_prefix_tokens,
            "patch_size": list(model.patch_embed.patch_size),
            "img_size": list(model.patch_embed.img_size),
            "num_classes": model.num_classes,
            "global_pool": model.global_pool,
            "attention_pool": getattr(model, "attn_pool", None) is not None,  # kept whole, never pruned
        }
