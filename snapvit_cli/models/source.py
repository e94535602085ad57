"""Where a dense model came from and how to rebuild its architecture: the record a bundle and ``config.json`` store.

A record read from a file is data, never constructor arguments: ``model_args`` may hold only the keys listed in
:data:`MODEL_ARGS` for the timm module the architecture lives in, each type-checked and bounded, and the
architecture must be a timm model that a family in :mod:`snapvit_cli.models.families` covers. ``device``,
``checkpoint_path``, ``pretrained``, ``pretrained_cfg_overlay`` or any key not listed is refused with one line.
Imports neither torch nor timm at module level (timm is asked only which module builds an architecture).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from snapvit_cli.errors import BundleError
from snapvit_cli.models.families import family_of_architecture
from snapvit_cli.schema import (
    Fields,
    check_float,
    check_int,
    check_ints,
    check_sha256,
    check_str,
    optional_sha256,
    optional_str,
)

# Bounds of a rebuildable architecture. The largest supported model (DINOv3 ViT-7B) has 40 blocks, width 4096.
MAX_DEPTH = 128
MAX_EMBED_DIM = 16384
MAX_HEADS = 1024
MAX_MLP_RATIO = 64.0
MAX_IMG_SIZE = 4096
MAX_PATCH_SIZE = 1024
MAX_CLASSES = 1_000_000
MAX_REG_TOKENS = 64
# timm's eval transform resizes to size / crop_pct, then crops the centre: crop_pct is a fraction of the image.
# timm's models use 0.875 to 1; below 1/4 every image would be enlarged more than 4x per side before the crop.
MIN_CROP_PCT = 0.25
GLOBAL_POOLS = ("", "token", "avg", "avgmax", "max", "map")


def _size(value: Any, name: str, hi: int) -> int | list[int]:
    """An image or patch size: one integer or a pair."""
    if isinstance(value, list):
        return check_ints(value, name, 1, hi, length=2)
    return check_int(value, name, 1, hi)


def _bool(value: Any, name: str) -> bool:
    if not isinstance(value, bool):
        raise BundleError(f"{name} must be true or false")
    return value


def _optional_bool(value: Any, name: str) -> bool | None:
    return None if value is None else _bool(value, name)


def _in_chans(value: Any, name: str) -> int:
    """Every image snapvit feeds (calibration, eval, export) is RGB: a model of other channels could not be fed."""
    if check_int(value, name, 1, 16) != 3:
        raise BundleError(f"{name} is {value}; snapvit feeds RGB images, so only 3 input channels are supported")
    return value


def _init_values(value: Any, name: str) -> float | None:
    return None if value is None else check_float(value, name, 0.0, 1e3)


Check = Callable[[Any, str], Any]
_COMMON: dict[str, Check] = {
    "img_size": lambda v, n: _size(v, n, MAX_IMG_SIZE),
    "patch_size": lambda v, n: _size(v, n, MAX_PATCH_SIZE),
    "in_chans": _in_chans,
    "embed_dim": lambda v, n: check_int(v, n, 1, MAX_EMBED_DIM),
    "depth": lambda v, n: check_int(v, n, 1, MAX_DEPTH),
    "num_heads": lambda v, n: check_int(v, n, 1, MAX_HEADS),
    "mlp_ratio": lambda v, n: check_float(v, n, 0.0, MAX_MLP_RATIO, open_lo=True),
    "num_classes": lambda v, n: check_int(v, n, 0, MAX_CLASSES),
    "global_pool": lambda v, n: check_str(v, n, choices=GLOBAL_POOLS),
    "class_token": _bool,
    "qkv_bias": _bool,
    "init_values": _init_values,
    "dynamic_img_size": _bool,
}
# Allowed model arguments per timm module: what `load_model` records for every supported family (aliases, hf-hub
# configs, the demo, and the test suite's small configs), and nothing that reaches files, devices or downloads.
_VIT: dict[str, Check] = {
    **_COMMON,
    "reg_tokens": lambda v, n: check_int(v, n, 0, MAX_REG_TOKENS),
    "no_embed_class": _bool,
    "qk_norm": _bool,
    "pre_norm": _bool,
    "final_norm": _bool,
    "fc_norm": _optional_bool,
    "dynamic_img_pad": _bool,
}
MODEL_ARGS: dict[str, dict[str, Check]] = {
    "timm.models.vision_transformer": _VIT,
    "timm.models.deit": _VIT,  # DeiT's distilled variant: a VisionTransformer subclass
    "timm.models.eva": {
        **_COMMON,
        "num_reg_tokens": lambda v, n: check_int(v, n, 0, MAX_REG_TOKENS),
        "qkv_fused": _bool,
        "use_abs_pos_emb": _bool,
        "use_rot_pos_emb": _bool,
        "swiglu_mlp": _bool,
        "scale_mlp": _bool,
        "scale_attn_inner": _bool,
        "head_init_scale": lambda v, n: check_float(v, n, 0.0, 1e3),
    },
}


def architecture_module(architecture: str, where: str) -> str:
    """The timm module that builds ``architecture``; refuses names no family covers or timm does not know."""
    check_str(architecture, where)
    family = family_of_architecture(architecture)
    import timm
    from timm.models import model_entrypoint

    if family is None or not timm.is_model(architecture):
        raise BundleError(f"{where} {architecture!r} is not an architecture of a supported family")
    module = model_entrypoint(architecture).__module__
    if module not in MODEL_ARGS:
        raise BundleError(f"{where} {architecture!r} is built by {module}, which snapvit does not rebuild")
    return module


def check_model_args(architecture: str, args: Any, where: str) -> dict[str, Any]:
    """``args`` validated against the allow-list of ``architecture``'s timm module; a new, sorted dict."""
    fields = Fields(args, where)
    allowed = MODEL_ARGS[architecture_module(architecture, f"{where.rsplit('.', 1)[0]}.architecture")]
    unknown = sorted(set(fields.data) - set(allowed))
    if unknown:
        raise BundleError(f"{where} may not set {', '.join(unknown)} (allowed: {', '.join(sorted(allowed))})")
    out = {key: allowed[key](fields.data[key], f"{where}.{key}") for key in sorted(fields.data)}
    if "embed_dim" in out and "num_heads" in out and out["embed_dim"] % out["num_heads"]:
        raise BundleError(f"{where}: embed_dim {out['embed_dim']} is not a multiple of num_heads {out['num_heads']}")
    return out


# -- preprocessing --------------------------------------------------------------------------------------------

INTERPOLATIONS = ("bicubic", "bilinear", "nearest")
CROP_MODES = ("center", "squash", "border")


def check_pretrained_cfg(data: Any, where: str) -> dict[str, Any]:
    """The preprocessing record (timm pretrained-config keys a bundle keeps), typed and bounded."""
    f = Fields(data, where)
    out: dict[str, Any] = {}
    if f.has("input_size"):
        out["input_size"] = f.ints("input_size", 1, MAX_IMG_SIZE, length=3)
    if f.has("interpolation"):
        out["interpolation"] = f.str("interpolation", choices=INTERPOLATIONS)
    for key in ("mean", "std"):
        if f.has(key):
            out[key] = f.floats(key, 0.0 if key == "mean" else 1e-6, 1e3, length=3)
    if f.has("crop_pct"):
        out["crop_pct"] = f.float("crop_pct", MIN_CROP_PCT, 1.0)
    if f.has("crop_mode"):
        out["crop_mode"] = f.str("crop_mode", choices=CROP_MODES)
    for key in ("license", "hf_hub_id"):  # written by snapvit <= 0.1: provenance now lives in one record only
        if f.has(key):
            f.str(key)
    f.done()
    return out


# -- provenance -----------------------------------------------------------------------------------------------

ORIGINS = ("hub", "checkpoint", "random", "unknown")
_HUB_ONLY = ("hf_hub_id", "revision", "license")
_CHECKPOINT_ONLY = ("checkpoint", "checkpoint_sha256")


@dataclass(frozen=True)
class Provenance:
    """Where the scored dense weights came from: the one record that a bundle's ``source``, a sliced model's
    ``config.json`` (``base_model``), the loaded model's ``pretrained_cfg`` and the model card all read.

    ``origin`` is explicit: ``hub`` (published weights, ``hf_hub_id`` and the ``revision`` they were read at),
    ``checkpoint`` (a local file: its name, never its path, and its sha256), ``random`` (random initialisation), or
    ``unknown`` (an old record that said neither). A licence is recorded only where it is known: the Hub's, for Hub
    weights; snapvit cannot know the licence of a local file or give one to random weights.
    """

    origin: str
    hf_hub_id: str | None = None
    revision: str | None = None
    checkpoint: str | None = None
    checkpoint_sha256: str | None = None
    license: str | None = None

    def __post_init__(self) -> None:
        check_str(self.origin, "origin", choices=ORIGINS)
        if self.origin == "hub" and not self.hf_hub_id:
            raise BundleError("provenance: Hub weights need their hf_hub_id")
        stray = [k for k in _HUB_ONLY if self.origin != "hub" and getattr(self, k) is not None]
        stray += [k for k in _CHECKPOINT_ONLY if self.origin != "checkpoint" and getattr(self, k) is not None]
        if stray:
            raise BundleError(f"provenance of {self.origin} weights may not set {', '.join(stray)}")
        if self.checkpoint is not None and ("/" in self.checkpoint or "\\" in self.checkpoint):
            raise BundleError("provenance: checkpoint is a file name, not a path")

    @classmethod
    def legacy(
        cls,
        *,
        pretrained: bool = True,
        hf_hub_id: str | None = None,
        revision: str | None = None,
        checkpoint: str | None = None,
        checkpoint_sha256: str | None = None,
        license: str | None = None,
    ) -> Provenance:
        """The record of snapvit <= 0.1's fields (``pretrained`` false for random *and* checkpoint weights, a Hub id
        and licence copied even where they were not true), keeping only what was true."""
        if checkpoint:
            return cls("checkpoint", checkpoint=checkpoint, checkpoint_sha256=checkpoint_sha256)
        if not pretrained:
            return cls("random")
        if hf_hub_id:
            return cls("hub", hf_hub_id=hf_hub_id, revision=revision, license=license)
        return cls("unknown")

    def to_json(self) -> dict[str, Any]:
        """``origin`` and the fields that origin has (absent, not null, for the others)."""
        data = {"origin": self.origin}
        data.update({k: v for k in (*_HUB_ONLY, *_CHECKPOINT_ONLY) if (v := getattr(self, k)) is not None})
        return data

    @classmethod
    def read(cls, f: Fields) -> Provenance:
        """The provenance fields of a stored record (``f`` a bundle's ``source`` or ``config.json``'s
        ``base_model``): the explicit shape (``origin``), or the shape of snapvit <= 0.1 (``pretrained``)."""
        if not f.has("origin"):
            return cls.legacy(
                pretrained=f.bool("pretrained", True),
                hf_hub_id=optional_str(f, "hf_hub_id"),
                revision=optional_str(f, "revision"),
                checkpoint=optional_str(f, "checkpoint"),
                checkpoint_sha256=optional_sha256(f, "checkpoint_sha256"),
                license=optional_str(f, "license"),
            )
        origin = f.str("origin", choices=ORIGINS)
        values = {k: optional_str(f, k) for k in (*_HUB_ONLY, "checkpoint")}
        values["checkpoint_sha256"] = optional_sha256(f, "checkpoint_sha256")
        try:
            return cls(origin, **values)
        except BundleError as exc:
            raise BundleError(f"{f.where}: {exc}") from None


# -- the record -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelSource:
    """Where a dense model came from, and how to rebuild its architecture offline (stored in bundles).

    Its provenance (:class:`Provenance`) is given by ``origin`` or, for callers written before it existed, by the
    fields ``pretrained``, ``hf_hub_id``, ``checkpoint``...; either way the fields are made to agree with it.
    """

    model_id: str
    timm_name: str
    architecture: str
    model_args: dict[str, Any]
    pretrained_cfg: dict[str, Any]
    weights_sha256: str
    pretrained: bool = True
    hf_hub_id: str | None = None
    revision: str | None = None
    checkpoint: str | None = None
    checkpoint_sha256: str | None = None
    license: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    origin: str = ""  # "" derives it from the fields above (see Provenance.legacy)

    def __post_init__(self) -> None:
        fields = {k: getattr(self, k) for k in (*_HUB_ONLY, *_CHECKPOINT_ONLY)}
        if self.origin:
            provenance = Provenance(self.origin, **{k: v for k, v in fields.items() if v is not None})
        else:
            provenance = Provenance.legacy(pretrained=self.pretrained, **fields)
        for key, value in {**provenance.__dict__, "pretrained": provenance.origin != "random"}.items():
            object.__setattr__(self, key, value)
        cfg = {k: v for k, v in self.pretrained_cfg.items() if k not in ("license", "hf_hub_id")}
        object.__setattr__(self, "pretrained_cfg", cfg)  # preprocessing only: provenance is in one place

    @property
    def provenance(self) -> Provenance:
        return Provenance(**{k: getattr(self, k) for k in ("origin", *_HUB_ONLY, *_CHECKPOINT_ONLY)})

    def to_json(self) -> dict[str, Any]:
        """The JSON record; validated first, so a writer never produces a file its reader refuses."""
        data = {
            "model_id": self.model_id,
            "timm_name": self.timm_name,
            "architecture": self.architecture,
            "model_args": dict(self.model_args),
            "pretrained_cfg": dict(self.pretrained_cfg),
            "weights_sha256": self.weights_sha256,
            **self.provenance.to_json(),
            "extra": dict(self.extra),
        }
        ModelSource.from_json(data)
        return data

    @classmethod
    def from_json(cls, data: Any, where: str = "source") -> ModelSource:
        """Validate a stored record: known keys only, each typed and bounded (see the module docstring)."""
        f = Fields(data, where)
        architecture = f.str("architecture")
        source = cls(
            model_id=f.str("model_id"),
            timm_name=f.str("timm_name"),
            architecture=architecture,
            model_args=check_model_args(architecture, f.obj("model_args").data, f"{where}.model_args"),
            pretrained_cfg=check_pretrained_cfg(f.obj("pretrained_cfg").data, f"{where}.pretrained_cfg"),
            weights_sha256=check_sha256(f.str("weights_sha256"), f"{where}.weights_sha256", empty=True),
            extra=_strings(f.obj("extra").data if f.has("extra") else {}, f"{where}.extra"),
            **Provenance.read(f).__dict__,
        )
        f.done()
        return source


def _strings(data: dict[str, Any], where: str) -> dict[str, str]:
    """Free-form notes (``{"note": "random init, torch seed 0"}``): strings only."""
    return {key: check_str(value, f"{where}.{key}") for key, value in data.items()}
