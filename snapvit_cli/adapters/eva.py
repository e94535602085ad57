"""Adapter for timm's ``Eva``, the architecture timm uses for DINOv3 (``vit_*_patch16_dinov3[_qkvb]``).

Differences from the plain ViT that matter for surgery (everything else is inherited from :class:`ViTAdapter`):

- attention input: one fused ``attn.qkv`` without bias plus separate ``q_bias`` / ``v_bias`` parameters and a
  ``k_bias`` zero buffer (the ``_qkvb`` models; the others have no qkv bias), or separate ``q_proj`` / ``k_proj`` /
  ``v_proj`` layers. Biases are laid out ``head × head_dim`` like the rows they add to.
- RoPE rotates each head's q and k with the same per-``head_dim`` angles, so removing heads leaves it untouched.
  Mixed RoPE learns frequencies per head and is refused.
- timm's ``EvaAttention`` reshapes its output to the *embedding* width, which fails once heads are removed; sliced
  blocks therefore use :class:`HeadPrunedEvaAttention`, identical except that it reshapes to the kept heads.
- MLP: ``Mlp`` (DINOv3 S/B/L), split ``SwiGLU`` (DINOv3 S+/H+/7B) or packed ``GluMlp``; see
  :mod:`snapvit_cli.adapters.mlp`.
- Features: the model's pre-logits. snapvit loads DINOv3 with ``global_pool='token'``, so that is the CLS token after
  the final norm (the reference's ``x_norm_clstoken``), not timm's default patch average.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.layers import apply_rot_embed_cat, maybe_add_mask, resolve_self_attn_mask
from timm.models.eva import Eva, EvaAttention, EvaBlock
from torch import nn

from snapvit_cli.adapters.base import MLP, UnitTensor, resized_linear
from snapvit_cli.adapters.mlp import check_mlp
from snapvit_cli.adapters.vit import ViTAdapter
from snapvit_cli.errors import UnsupportedModelError


class HeadPrunedEvaAttention(EvaAttention):
    """timm's ``EvaAttention`` (without output norm or gate) that reshapes its output to ``num_heads · head_dim``.

    The computation is timm's, operation for operation, so at full width the outputs are bit-identical.
    """

    def forward(
        self,
        x: torch.Tensor,
        rope: torch.Tensor | None = None,
        attn_mask: torch.Tensor | None = None,
        is_causal: bool = False,
    ) -> torch.Tensor:
        B, N, _ = x.shape
        if self.qkv is not None:
            if self.q_bias is None:
                qkv = self.qkv(x)
            else:
                qkv_bias = torch.cat((self.q_bias, self.k_bias, self.v_bias))
                if self.qkv_bias_separate:
                    qkv = self.qkv(x)
                    qkv += qkv_bias
                else:
                    qkv = F.linear(x, weight=self.qkv.weight, bias=qkv_bias)
            q, k, v = qkv.reshape(B, N, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        else:
            q = self.q_proj(x).reshape(B, N, self.num_heads, -1).transpose(1, 2)
            k = self.k_proj(x).reshape(B, N, self.num_heads, -1).transpose(1, 2)
            v = self.v_proj(x).reshape(B, N, self.num_heads, -1).transpose(1, 2)

        q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:
            npt = self.num_prefix_tokens
            half = self.rotate_half
            q = torch.cat([q[:, :, :npt, :], apply_rot_embed_cat(q[:, :, npt:, :], rope, half=half)], dim=2).type_as(v)
            k = torch.cat([k[:, :, :npt, :], apply_rot_embed_cat(k[:, :, npt:, :], rope, half=half)], dim=2).type_as(v)

        if self.fused_attn:
            x = F.scaled_dot_product_attention(
                q, k, v, attn_mask=attn_mask, dropout_p=self.attn_drop.p if self.training else 0.0, is_causal=is_causal
            )
        else:
            q = q * self.scale
            attn = q @ k.transpose(-2, -1)
            attn = maybe_add_mask(attn, resolve_self_attn_mask(N, attn, attn_mask, is_causal=is_causal))
            attn = self.attn_drop(attn.softmax(dim=-1))
            x = attn @ v

        x = x.transpose(1, 2).reshape(B, N, -1)
        return self.proj_drop(self.proj(x))


class EvaAdapter(ViTAdapter):
    family = "eva"

    @classmethod
    def matches(cls, model: nn.Module) -> bool:
        return isinstance(model, Eva)

    def check(self) -> None:
        model = self.model
        name = type(model).__name__
        self._check_pool()
        if getattr(model, "rope_mixed", False):
            raise UnsupportedModelError(f"{name}: mixed RoPE learns frequencies per head; heads cannot be removed")
        for i, block in enumerate(model.blocks):
            where = f"{name} block {i}"
            if type(block) is not EvaBlock:
                raise UnsupportedModelError(
                    f"{where} is a {type(block).__name__}; only timm's pre-norm EvaBlock is supported"
                )
            attn = block.attn
            if type(attn) not in (EvaAttention, HeadPrunedEvaAttention):
                raise UnsupportedModelError(
                    f"{where} uses {type(attn).__name__}; only timm's EvaAttention is supported"
                )
            if not isinstance(attn.norm, nn.Identity) or attn.gate is not None:
                raise UnsupportedModelError(
                    f"{where}: attention output norm/gate across heads cannot be pruned exactly"
                )
            check_mlp(block.mlp, where)

    def _pool_tokens(self, patches: int, tokens: int) -> int:
        return tokens  # Eva's attention pool reads prefix tokens too

    # --- structure -------------------------------------------------------------------------------------------
    def unit_tensors(self, kind: str, index: int) -> list[UnitTensor]:
        if kind == MLP:
            return super().unit_tensors(kind, index)
        attn = self.model.blocks[index].attn
        hd = attn.head_dim
        if attn.qkv is not None:
            specs = [UnitTensor("attn.qkv.weight", 0, groups=3, unit_size=hd)]
            if attn.q_bias is not None:  # k_bias is a zero buffer outside the state dict
                specs += [UnitTensor("attn.q_bias", 0, unit_size=hd), UnitTensor("attn.v_bias", 0, unit_size=hd)]
        else:
            specs = []
            for name in ("q_proj", "k_proj", "v_proj"):
                specs.append(UnitTensor(f"attn.{name}.weight", 0, unit_size=hd))
                if getattr(attn, name).bias is not None:
                    specs.append(UnitTensor(f"attn.{name}.bias", 0, unit_size=hd))
        specs.append(UnitTensor("attn.proj.weight", 1, unit_size=hd, consumer=True))
        return specs

    def score_tensors(self, kind: str, index: int) -> list[UnitTensor]:
        if kind == MLP:
            return super().score_tensors(kind, index)
        attn = self.model.blocks[index].attn
        if attn.qkv is not None:
            return [UnitTensor("attn.qkv.weight", 0, groups=3, unit_size=attn.head_dim, group=2)]
        return [UnitTensor("attn.v_proj.weight", 0, unit_size=attn.head_dim)]

    @staticmethod
    def _resize_attention(attn: EvaAttention, heads: int) -> None:
        dim = heads * attn.head_dim
        attn.num_heads = heads
        if attn.qkv is not None:
            attn.qkv = resized_linear(attn.qkv, out_features=3 * dim)
            if attn.q_bias is not None:
                like = {"device": attn.q_bias.device, "dtype": attn.q_bias.dtype}
                attn.q_bias = nn.Parameter(torch.empty(dim, **like))
                attn.v_bias = nn.Parameter(torch.empty(dim, **like))
                attn.k_bias = torch.zeros(dim, **like)  # stays a non-persistent buffer
        else:
            for name in ("q_proj", "k_proj", "v_proj"):
                setattr(attn, name, resized_linear(getattr(attn, name), out_features=dim))
        attn.proj = resized_linear(attn.proj, in_features=dim)
        attn.__class__ = HeadPrunedEvaAttention

    def structure(self) -> dict:
        attn = self.model.blocks[0].attn
        layout = "fused qkv" if attn.qkv is not None else "separate q/k/v"
        return {**super().structure(), "qkv_layout": layout, "rope": self.model.rope is not None}
