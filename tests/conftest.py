"""Shared fixtures: small random-init timm models of every supported layout, and the real data in ../shared."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import timm
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("SNAPVIT_SHARED_DATA", ROOT.parent / "shared" / "data"))

# A shell starts a background job (`pytest &`, nohup, some CI runners) with SIGINT ignored, and every process it
# starts inherits that: the interrupt tests' subprocesses would then never see the SIGINT they are sent. Python's own
# handler here makes the children start with the default disposition again (exec resets a handler, not an ignore).
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

# Small configs with the same module types as the real models: (timm architecture, overrides).
_SMALL = dict(img_size=32, patch_size=8, embed_dim=48, depth=3, num_heads=4, mlp_ratio=2.0)
SMALL_CONFIGS: dict[str, tuple[str, dict]] = {
    "dino": ("vit_small_patch16_224", {**_SMALL, "num_classes": 0}),
    "augreg-classifier": ("vit_small_patch16_224", {**_SMALL, "num_classes": 7}),
    "deit-distilled": ("deit_tiny_distilled_patch16_224", {**_SMALL, "num_classes": 5}),
    "deit3-layerscale": ("deit3_small_patch16_224", {**_SMALL, "init_values": 0.5, "num_classes": 0}),
    "dinov2-registers": (
        "vit_small_patch14_reg4_dinov2",
        {**_SMALL, "patch_size": 7, "img_size": 28, "init_values": 0.5, "num_classes": 0},
    ),
    "no-cls-avgpool": ("vit_small_patch16_224", {**_SMALL, "class_token": False, "global_pool": "avg"}),
    "qk-norm": ("vit_small_patch16_224", {**_SMALL, "qk_norm": True, "num_classes": 0}),
    # DINOv2-giant: packed SwiGLU (GluMlp, fc1 = [gate | value]); the giant's mlp_ratio would give 128 neurons
    "dinov2-giant-swiglu": (
        "vit_giant_patch14_dinov2",
        {**_SMALL, "patch_size": 7, "img_size": 28, "init_values": 0.5, "num_classes": 0},
    ),
    # DINOv3 (timm Eva): RoPE, 4 registers, LayerScale; loaded with CLS pooling like snapvit does
    "dinov3": ("vit_base_patch16_dinov3", {**_SMALL, "init_values": 0.5, "global_pool": "token"}),
    # DINOv3 with q/v bias parameters and a k-bias buffer; timm's default avg pooling and a classifier (whose
    # default init is scaled by 1e-3, which would hide every change of the blocks)
    "dinov3-qkvb": (
        "vit_base_patch16_dinov3_qkvb",
        {**_SMALL, "init_values": 0.5, "num_classes": 5, "head_init_scale": 1.0},
    ),
    # DINOv3 H+/S+: split SwiGLU (fc1_g, fc1_x) with hidden width aligned to 8
    "dinov3-swiglu": ("vit_huge_plus_patch16_dinov3", {**_SMALL, "init_values": 0.5, "global_pool": "token"}),
    # Eva with separate q/k/v projections (q and v with bias, k without)
    "eva-separate-qkv": (
        "vit_base_patch16_dinov3",
        {**_SMALL, "init_values": 0.5, "global_pool": "token", "qkv_fused": False, "qkv_bias": True},
    ),
    # SigLIP2 image tower: no class token, attention-pool (MAP) head kept whole
    "siglip2": ("vit_base_patch16_siglip_224", {**_SMALL, "num_classes": 0}),
}


def make_small_model(name: str, seed: int = 0) -> torch.nn.Module:
    arch, kwargs = SMALL_CONFIGS[name]
    torch.manual_seed(seed)
    model = timm.create_model(arch, pretrained=False, **kwargs).eval()
    # Non-trivial biases and norms so that permutation mistakes cannot hide behind zero-initialised parameters.
    with torch.no_grad():
        for param_name, param in model.named_parameters():
            if param_name.endswith("bias") or "norm" in param_name:
                param.add_(0.1 * torch.randn_like(param))
    return model


def small_model_source(name: str, model: torch.nn.Module):
    from snapvit_cli.hashing import state_dict_sha256
    from snapvit_cli.models.loading import ModelSource, preprocessing_cfg

    arch, kwargs = SMALL_CONFIGS[name]
    return ModelSource(
        model_id=name,
        timm_name=arch,
        architecture=arch,
        model_args=dict(kwargs),
        pretrained_cfg=preprocessing_cfg(model),
        weights_sha256=state_dict_sha256(model.state_dict()),
        pretrained=False,
    )


def image_batch(model: torch.nn.Module, n: int = 2, seed: int = 1) -> torch.Tensor:
    size = model.patch_embed.img_size
    return torch.randn(n, 3, *size, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(params=sorted(SMALL_CONFIGS))
def small_name(request) -> str:
    return request.param


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real model and data not available at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(autouse=True)
def _no_hub_access(monkeypatch):
    """Tests never reach the network; a test that needs the Hub points HF_ENDPOINT at its own loopback server."""
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")


@pytest.fixture(scope="session")
def built(tmp_path_factory) -> tuple[Path, Path]:
    """A real elastic bundle and the sliced model cut from it (``tests/hub_artifacts.py``), built once; read-only."""
    from tests.hub_artifacts import build_artifacts

    return build_artifacts(tmp_path_factory.mktemp("artifacts"))


@pytest.fixture
def artifacts(built, tmp_path) -> tuple[Path, Path]:
    """Private copies of :func:`built`'s bundle and sliced folder, which a test may change."""
    from tests.hub_artifacts import copy_artifacts

    return copy_artifacts(built, tmp_path / "mine")


def assert_one_line_error(result, message: str) -> None:
    """A CliRunner result that is a handled user error: exit 1, exactly one stderr line, containing ``message``."""
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit), result.exception
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr
