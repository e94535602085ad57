"""Adapter for timm's ``VisionTransformer`` family: DINO, DeiT (incl. distilled), DeiT-III, AugReg, DINOv2.

Per block (``timm.models.vision_transformer.Block``): heads live in ``attn.qkv`` rows laid out
``[q|k|v] × head × head_dim`` and in ``attn.proj`` columns ``head × head_dim``; MLP neurons are rows of ``mlp.fc1`` and
columns of ``mlp.fc2``. LayerScale, q/k norms (over head_dim), register tokens and missing class tokens need no
surgery. timm's ``Attention`` reshapes by ``attn_dim``, so updating ``num_heads`` and ``attn_dim`` is all a smaller
head count needs.
"""

from __future__ import annotations

import torch
from timm.layers import Attention, Mlp
from timm.models.vision_transformer import Block, VisionTransformer
from torch import nn

from snapvit_cli.adapters.base import HEADS, MLP, ModelAdapter, UnitTensor, resized_linear
from snapvit_cli.errors import UnsupportedModelError
from snapvit_cli.flops import CostTerms, dense_unit_params, unit_costs


class ViTAdapter(ModelAdapter):
    family = "vit"

    @classmethod
    def matches(cls, model: nn.Module) -> bool:
        return isinstance(model, VisionTransformer)

    def check(self) -> None:
        model = self.model
        name = type(model).__name__
        if getattr(model, "attn_pool", None) is not None:
            raise UnsupportedModelError(f"{name} with an attention-pool head is not supported by the ViT adapter")
        for i, block in enumerate(model.blocks):
            where = f"{name} block {i}"
            if type(block) is not Block:
                raise UnsupportedModelError(
                    f"{where} is a {type(block).__name__}; only timm's standard Block is supported"
                )
            attn = block.attn
            if type(attn) is not Attention:
                raise UnsupportedModelError(f"{where} uses {type(attn).__name__}; only timm's Attention is supported")
            if not isinstance(attn.norm, nn.Identity) or getattr(attn, "gate", None) is not None:
                raise UnsupportedModelError(
                    f"{where}: attention output norm/gate across heads cannot be pruned exactly"
                )
            if type(block.mlp) is not Mlp or not isinstance(block.mlp.norm, nn.Identity):
                raise UnsupportedModelError(
                    f"{where} uses {type(block.mlp).__name__}; only the standard fc1/fc2 Mlp without hidden norm "
                    f"is supported"
                )
            if not isinstance(block.mlp.fc1, nn.Linear):
                raise UnsupportedModelError(f"{where}: convolutional MLPs are not supported")

    # --- structure -------------------------------------------------------------------------------------------
    @property
    def head_dim(self) -> int:
        return self.model.blocks[0].attn.head_dim

    @property
    def embed_dim(self) -> int:
        return self.model.embed_dim

    def width(self, kind: str, index: int) -> int:
        block = self.model.blocks[index]
        return block.mlp.fc1.out_features if kind == MLP else block.attn.num_heads

    def unit_tensors(self, kind: str, index: int) -> list[UnitTensor]:
        block = self.model.blocks[index]
        if kind == MLP:
            specs = [UnitTensor("mlp.fc1.weight", 0)]
            if block.mlp.fc1.bias is not None:
                specs.append(UnitTensor("mlp.fc1.bias", 0))
            specs.append(UnitTensor("mlp.fc2.weight", 1, consumer=True))
            return specs
        hd = block.attn.head_dim
        specs = [UnitTensor("attn.qkv.weight", 0, groups=3, unit_size=hd)]
        if block.attn.qkv.bias is not None:
            specs.append(UnitTensor("attn.qkv.bias", 0, groups=3, unit_size=hd))
        specs.append(UnitTensor("attn.proj.weight", 1, unit_size=hd, consumer=True))
        return specs

    def score_tensors(self, kind: str, index: int) -> list[UnitTensor]:
        if kind == MLP:
            return [UnitTensor("mlp.fc1.weight", 0)]
        hd = self.model.blocks[index].attn.head_dim
        return [UnitTensor("attn.qkv.weight", 0, groups=3, unit_size=hd, group=2)]

    def resize_block(self, index: int, mlp: int, heads: int) -> None:
        block = self.model.blocks[index]
        block.mlp.fc1 = resized_linear(block.mlp.fc1, out_features=mlp)
        block.mlp.fc2 = resized_linear(block.mlp.fc2, in_features=mlp)
        attn = block.attn
        attn.num_heads = heads
        attn.attn_dim = heads * attn.head_dim
        attn.qkv = resized_linear(attn.qkv, out_features=3 * attn.attn_dim)
        attn.proj = resized_linear(attn.proj, in_features=attn.attn_dim)

    # --- behaviour -------------------------------------------------------------------------------------------
    def features(self, images: torch.Tensor) -> torch.Tensor:
        model = self.model
        return model.forward_head(model.forward_features(images), pre_logits=True)

    def tokens(self, resolution: int | None = None) -> tuple[int, int]:
        """(patches, tokens in each block) at ``resolution`` (default: the model's own image size)."""
        patch_embed = self.model.patch_embed
        grid = patch_embed.grid_size if resolution is None else tuple(resolution // p for p in patch_embed.patch_size)
        patches = grid[0] * grid[1]
        return patches, patches + self.model.num_prefix_tokens

    def cost_terms(self, resolution: int | None = None) -> CostTerms:
        model = self.model
        patches, tokens = self.tokens(resolution)
        conv = model.patch_embed.proj
        patch_macs = patches * conv.weight.numel()
        head_macs = sum(m.weight.numel() for m in self._classifiers())
        mlp_macs, mlp_params = unit_costs(self, MLP, tokens)
        head_unit_macs, head_unit_params = unit_costs(self, HEADS, tokens)
        total_params = sum(p.numel() for p in model.parameters())
        size = resolution or model.patch_embed.img_size[0]
        return CostTerms(
            resolution=size,
            tokens=tokens,
            fixed_macs=patch_macs + head_macs,
            macs_per_neuron=mlp_macs,
            macs_per_head=head_unit_macs,
            fixed_params=total_params - dense_unit_params(self),
            params_per_neuron=mlp_params,
            params_per_head=head_unit_params,
        )

    def _classifiers(self) -> list[nn.Linear]:
        heads = [getattr(self.model, name, None) for name in ("head", "head_dist")]
        return [h for h in heads if isinstance(h, nn.Linear)]

    def structure(self) -> dict:
        model = self.model
        return {
            "family": self.family,
            "num_blocks": self.num_blocks,
            "embed_dim": self.embed_dim,
            "num_heads": self.model.blocks[0].attn.num_heads,
            "head_dim": self.head_dim,
            "mlp_hidden": self.model.blocks[0].mlp.fc1.out_features,
            "mlp_type": "standard",
            "num_prefix_tokens": model.num_prefix_tokens,
            "patch_size": list(model.patch_embed.patch_size),
            "img_size": list(model.patch_embed.img_size),
            "num_classes": model.num_classes,
        }
