"""Model names users type: friendly aliases onto timm names, and the embedded ``demo`` model's recipe.

Pure data (no torch, no timm): the family registry, the published-score importer and the loader all read it.
"""

from __future__ import annotations

from typing import Any

# One table of friendly names -> timm names (with pretrained tag). The paper's CLI ids (docs/method.md §1.1) and the
# torch.hub names of DINO/DINOv2 are included so that commands copied from either keep working.
ALIASES: dict[str, str] = {
    # DINO v1 (torch.hub names and the paper's ids)
    "dino_vits16": "vit_small_patch16_224.dino",
    "dino_vitb16": "vit_base_patch16_224.dino",
    "dino_vits8": "vit_small_patch8_224.dino",
    "dino_vitb8": "vit_base_patch8_224.dino",
    # DINOv2 (torch.hub names)
    "dinov2_vits14": "vit_small_patch14_dinov2.lvd142m",
    "dinov2_vitb14": "vit_base_patch14_dinov2.lvd142m",
    "dinov2_vitl14": "vit_large_patch14_dinov2.lvd142m",
    "dinov2_vitg14": "vit_giant_patch14_dinov2.lvd142m",
    "dinov2_vits14_reg": "vit_small_patch14_reg4_dinov2.lvd142m",
    "dinov2_vitb14_reg": "vit_base_patch14_reg4_dinov2.lvd142m",
    "dinov2_vitl14_reg": "vit_large_patch14_reg4_dinov2.lvd142m",
    "dinov2_vitg14_reg": "vit_giant_patch14_reg4_dinov2.lvd142m",
    # DINOv3 (torch.hub names, which the paper's ids also use)
    "dinov3_vits16": "vit_small_patch16_dinov3.lvd1689m",
    "dinov3_vits16plus": "vit_small_plus_patch16_dinov3.lvd1689m",
    "dinov3_vitb16": "vit_base_patch16_dinov3.lvd1689m",
    "dinov3_vitl16": "vit_large_patch16_dinov3.lvd1689m",
    "dinov3_vith16plus": "vit_huge_plus_patch16_dinov3.lvd1689m",
    "dinov3_vit7b16": "vit_7b_patch16_dinov3.lvd1689m",
    # DeiT (ImageNet-1k) and its distilled variant
    "deit_tiny": "deit_tiny_patch16_224.fb_in1k",
    "deit_small": "deit_small_patch16_224.fb_in1k",
    "deit_base": "deit_base_patch16_224.fb_in1k",
    "deit_tiny_distilled": "deit_tiny_distilled_patch16_224.fb_in1k",
    "deit_small_distilled": "deit_small_distilled_patch16_224.fb_in1k",
    "deit_base_distilled": "deit_base_distilled_patch16_224.fb_in1k",
    "deit-vit-b-16": "deit_base_distilled_patch16_224.fb_in1k",
    # DeiT-III (IN-21k -> IN-1k, as in the paper)
    "deit3_small": "deit3_small_patch16_224.fb_in22k_ft_in1k",
    "deit3_medium": "deit3_medium_patch16_224.fb_in22k_ft_in1k",
    "deit3_base": "deit3_base_patch16_224.fb_in22k_ft_in1k",
    "deit3_large": "deit3_large_patch16_224.fb_in22k_ft_in1k",
    "deit3_huge": "deit3_huge_patch14_224.fb_in22k_ft_in1k",
    "deit-3-vit-s-16": "deit3_small_patch16_224.fb_in22k_ft_in1k",
    "deit-3-vit-b-16": "deit3_base_patch16_224.fb_in22k_ft_in1k",
    "deit-3-vit-l-16": "deit3_large_patch16_224.fb_in22k_ft_in1k",
    "deit-3-vit-h-14": "deit3_huge_patch14_224.fb_in22k_ft_in1k",
    # AugReg (IN-21k -> IN-1k)
    "augreg_vitt16": "vit_tiny_patch16_224.augreg_in21k_ft_in1k",
    "augreg_vits16": "vit_small_patch16_224.augreg_in21k_ft_in1k",
    "augreg_vitb16": "vit_base_patch16_224.augreg_in21k_ft_in1k",
    "augreg_vitl16": "vit_large_patch16_224.augreg_in21k_ft_in1k",
    "augreg-vit-s-16-in21k-ft-in1k": "vit_small_patch16_224.augreg_in21k_ft_in1k",
    "augreg-vit-b-16-in21k-ft-in1k": "vit_base_patch16_224.augreg_in21k_ft_in1k",
    "augreg-vit-l-16-in21k-ft-in1k": "vit_large_patch16_224.augreg_in21k_ft_in1k",
    # SigLIP2 image towers (the paper's ids: the open_clip models' `.visual`, i.e. these timm towers)
    "siglip2_vitb16": "vit_base_patch16_siglip_224.v2_webli",
    "siglip2-vit-b16": "vit_base_patch16_siglip_224.v2_webli",
    "siglip2_vitg16": "vit_giantopt_patch16_siglip_256.v2_webli",
    "siglip2-vit-g16": "vit_giantopt_patch16_siglip_256.v2_webli",
}

# The embedded default used by the README's offline demo: a randomly initialised ViT-Tiny/16 at 64x64 (16 patches),
# built with a fixed seed so every machine gets the same weights. It exercises the whole pipeline in seconds; its
# scores are meaningless as a model, which is why it is named "demo".
DEMO_MODEL = "demo"
DEMO_ARCH = "vit_tiny_patch16_224"
DEMO_ARGS: dict[str, Any] = {"img_size": 64, "num_classes": 10}
DEMO_SEED = 0


def resolve_name(name: str) -> str:
    """Map a friendly alias onto its timm name; timm names and ``hf-hub:`` ids pass through unchanged."""
    return ALIASES.get(name, name)
