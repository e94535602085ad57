"""The model families snapvit supports: one registry behind `snapvit models`, the docs/models.md table, the refusal
message for unsupported models, and the per-family defaults applied when a model is loaded.

A family is recognised by its timm name (``arch.tag``); what is pruned is decided by the structural adapters
(:mod:`snapvit_cli.adapters`), and a test checks that every alias's architecture is accepted by them with the MLP
layout listed here. This module imports neither torch nor timm.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from fnmatch import fnmatch
from typing import Any

from snapvit_cli.models.aliases import ALIASES

# How each MLP layout is pruned, keyed by the adapter's ``structure()["mlp_type"]``.
MLP_PRUNING = {
    "standard": "yes (fc1/fc2)",
    "swiglu-packed": "yes (packed SwiGLU)",  # neuron j = fc1 rows j and j+D, fc2 column j
    "swiglu": "yes (SwiGLU)",  # neuron j = rows j of fc1_g and fc1_x, fc2 column j
}


@dataclass(frozen=True)
class Family:
    """One model family: which timm names belong to it, how it is pruned, and what loading changes."""

    name: str
    patterns: tuple[str, ...]  # fnmatch patterns on the full timm name (``arch.tag``)
    architecture: str  # the timm class its blocks are pruned through
    notes: str = ""
    mlp_variants: tuple[tuple[str, str], ...] = ()  # (pattern, mlp_type) where the MLP is not "standard"
    model_args: dict[str, Any] = field(default_factory=dict)  # defaults applied at load (explicit args win)
    preprocessing: dict[str, Any] = field(default_factory=dict)  # corrections to timm's pretrained config

    def matches(self, timm_name: str) -> bool:
        return any(fnmatch(timm_name, p) for p in self.patterns)

    def mlp_type(self, timm_name: str) -> str:
        return next((kind for pattern, kind in self.mlp_variants if fnmatch(timm_name, pattern)), "standard")


FAMILIES: tuple[Family, ...] = (
    Family("DINO", ("vit_*.dino",), "VisionTransformer", "no classifier; features = CLS token"),
    Family(
        "DINOv2",
        ("vit_*_dinov2*",),
        "VisionTransformer",
        "518 px, registers (reg4) supported; features = CLS token",
        mlp_variants=(("vit_giant_*", "swiglu-packed"),),
    ),
    Family(
        "DINOv3",
        ("vit_*_dinov3*",),
        "Eva",
        "timm Eva: RoPE, 4 registers, LayerScale; loaded with global_pool='token' (features = CLS after the "
        "final norm, as the reference); timm's 256 px (the paper measured 224: `--resolution 224`)",
        mlp_variants=(("vit_*_plus_*", "swiglu"), ("vit_7b_*", "swiglu")),
        model_args={"global_pool": "token"},
    ),
    Family(
        "SigLIP2",
        ("vit_*_siglip_*",),  # SigLIP (v1) image towers share the layout and preprocessing
        "VisionTransformer",
        "image tower; blocks are pruned, the attention-pool (MAP) head is kept whole (its cost is counted); "
        "features = MAP output; squash resize, no crop (open_clip's preprocessing)",
        preprocessing={"crop_pct": 1.0, "crop_mode": "squash"},  # open_clip's SigLIP preprocess: resize, no crop
    ),
    Family("DeiT", ("deit_*",), "VisionTransformer", "distilled: features = mean of CLS and distillation token"),
    Family("DeiT-III", ("deit3_*",), "VisionTransformer", "LayerScale"),
    Family("AugReg", ("vit_*.augreg*",), "VisionTransformer", "IN-21k pretrained, IN-1k fine-tuned"),
)


def family_of(timm_name: str) -> Family | None:
    """The family of a timm name (``arch`` or ``arch.tag``); ``None`` for anything else."""
    return next((f for f in FAMILIES if f.matches(timm_name)), None)


def family_of_architecture(architecture: str) -> Family | None:
    """The family whose patterns, without their pretrained tag, match an untagged timm architecture name (the
    name a bundle records); ``None`` for architectures no family covers."""
    return next((f for f in FAMILIES if any(fnmatch(architecture, p.split(".")[0]) for p in f.patterns)), None)


def supported_summary() -> str:
    """One line naming the supported families, for messages."""
    return (
        f"{', '.join(f.name for f in FAMILIES)} (timm VisionTransformer and Eva models with standard blocks; "
        f"see `snapvit models`)"
    )


def default_model_args(architecture: str) -> dict[str, Any]:
    """Model arguments snapvit passes by default when it builds ``architecture`` (e.g. DINOv3's CLS pooling)."""
    family = family_of(architecture)
    return dict(family.model_args) if family else {}


def corrected_preprocessing(cfg: dict[str, Any]) -> dict[str, Any]:
    """``cfg`` (a pretrained config) with the family's corrections, e.g. SigLIP2's squash resize."""
    family = family_of(str(cfg.get("architecture", "")))
    return {**cfg, **family.preprocessing} if family else dict(cfg)


@dataclass(frozen=True)
class ModelRow:
    """One row of the supported-models table."""

    family: str
    timm_name: str
    aliases: tuple[str, ...]
    heads: str
    mlp: str
    notes: str


def supported_models() -> list[ModelRow]:
    """One row per timm model that has an alias, grouped by family in registry order."""
    names: dict[str, list[str]] = {}
    for alias, timm_name in ALIASES.items():
        names.setdefault(timm_name, []).append(alias)
    rows = []
    for timm_name, aliases in names.items():
        family = family_of(timm_name)
        if family is None:
            raise RuntimeError(f"alias {aliases[0]} -> {timm_name} belongs to no family")
        rows.append(
            ModelRow(
                family=family.name,
                timm_name=timm_name,
                aliases=tuple(aliases),
                heads="yes",
                mlp=MLP_PRUNING[family.mlp_type(timm_name)],
                notes=family.notes,
            )
        )
    return sorted(rows, key=lambda r: [f.name for f in FAMILIES].index(r.family))


def supported_models_markdown() -> str:
    """The supported-models table of docs/models.md (generated; a test keeps the page in sync)."""
    lines = [
        "| family | timm name | aliases | heads pruned | MLP pruned | notes |",
        "|---|---|---|---|---|---|",
    ]
    previous = None
    for row in supported_models():
        aliases = ", ".join(f"`{a}`" for a in row.aliases)
        notes = row.notes if row.family != previous else ""  # each family's notes once
        previous = row.family
        lines.append(f"| {row.family} | `{row.timm_name}` | {aliases} | {row.heads} | {row.mlp} | {notes} |")
    return "\n".join(lines) + "\n"
