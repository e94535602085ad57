"""Resolving and loading the dense source model: timm names, friendly aliases, ``hf-hub:`` ids, local checkpoints.

Everything that turns a user's ``--model`` / ``--checkpoint`` into a ``torch.nn.Module`` lives here; the
:class:`~snapvit_cli.models.source.ModelSource` record it returns is what a bundle stores to rebuild the architecture.
"""

from __future__ import annotations

import contextlib
import difflib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.error import URLError

import timm
import torch
from torch import nn

from snapvit_cli.errors import BundleError, ModelLoadError, UnsupportedModelError
from snapvit_cli.fileio import sha256_file
from snapvit_cli.hashing import state_dict_sha256
from snapvit_cli.hub_client import hub_error_message, hub_unreachable, offline_mode, unreachable_message
from snapvit_cli.models.aliases import ALIASES, DEMO_ARCH, DEMO_ARGS, DEMO_MODEL, DEMO_SEED, resolve_name
from snapvit_cli.models.checkpoint import check_fits, read_checkpoint
from snapvit_cli.models.families import corrected_preprocessing, default_model_args, supported_summary
from snapvit_cli.models.source import ModelSource, Provenance

# Pretrained-config keys a bundle keeps: what preprocessing and cost reporting need.
_CFG_KEYS = ("input_size", "interpolation", "mean", "std", "crop_pct", "crop_mode")


def load_model(
    name: str,
    *,
    checkpoint: str | os.PathLike | None = None,
    revision: str | None = None,
    pretrained: bool | None = None,
) -> tuple[nn.Module, ModelSource]:
    """Build the dense model named ``name`` in eval mode and describe where it came from.

    ``name`` is an alias from :data:`ALIASES`, a timm name (``vit_base_patch16_224.dino``), ``hf-hub:org/repo``, or
    ``demo``. With ``checkpoint`` the architecture is built without downloading and the local weights are loaded
    (the classifier width is taken from the checkpoint). ``pretrained=False`` builds random weights (tests, demos).
    """
    if name == DEMO_MODEL:
        return _demo_model()
    timm_name = resolve_name(name)
    arch, _tag = _split_tag(timm_name)
    if not timm_name.startswith("hf-hub:") and not timm.is_model(arch):
        raise ModelLoadError(_unknown_model_message(name))
    use_pretrained = checkpoint is None if pretrained is None else pretrained
    model_args: dict[str, Any] = default_model_args(arch)
    state = None
    if checkpoint is not None:
        state = read_checkpoint(checkpoint)
        model_args["num_classes"] = _num_classes_in(state)
        use_pretrained = False
    if timm_name.startswith("hf-hub:"):
        model_args = {**_hub_model_args(timm_name, revision), **model_args}
    model = _create(timm_name, use_pretrained, revision, model_args)
    if state is not None:
        check_fits(state, model, checkpoint, timm_name)
        model.load_state_dict(state, strict=False)
    model.eval()
    # A pretrained tag can set the classifier width (`.dino` has none); record it, because build_architecture
    # rebuilds from the untagged architecture name and would otherwise get timm's default 1000 classes.
    model_args.setdefault("num_classes", model.num_classes)
    cfg = preprocessing_cfg(model)
    architecture = model.pretrained_cfg.get("architecture") or arch
    source = ModelSource(
        model_id=name,
        timm_name=timm_name if revision is None or "@" in timm_name else f"{timm_name}@{revision}",
        architecture=architecture,
        model_args=model_args,
        pretrained_cfg=cfg,
        weights_sha256=state_dict_sha256(model.state_dict()),
        **_provenance(model, timm_name, checkpoint, use_pretrained, revision).__dict__,
    )
    try:  # the record must pass the reader's schema, or a bundle written from it would not load
        source.to_json()
    except BundleError as exc:
        message = f"{name} is not a supported model: {exc}; snapvit prunes: {supported_summary()}"
        raise UnsupportedModelError(message) from None
    return model, source


def _provenance(
    model: nn.Module, timm_name: str, checkpoint: str | os.PathLike | None, downloaded: bool, revision: str | None
) -> Provenance:
    """Where ``model``'s weights came from: a local file (name and sha256, never its path), the Hub repository
    timm downloaded them from (at the commit the cache holds, when the user named no revision; with the licence
    timm's config states), or random initialisation."""
    if checkpoint is not None:
        return Provenance("checkpoint", checkpoint=Path(checkpoint).name, checkpoint_sha256=sha256_file(checkpoint))
    if not downloaded:
        return Provenance("random")
    hub_id = _hub_repo_id(timm_name)
    if hub_id is None:  # weights from a URL outside the Hub: snapvit cannot name them
        return Provenance("unknown")
    cfg = getattr(model, "pretrained_cfg", None) or {}
    license_id = cfg.get("license") if isinstance(cfg.get("license"), str) else None
    at = revision or (timm_name.partition("@")[2] if timm_name.startswith("hf-hub:") else "") or None
    return Provenance("hub", hf_hub_id=hub_id, revision=at or _cached_commit(hub_id, cfg), license=license_id)


def _cached_commit(hub_id: str, cfg: dict[str, Any]) -> str | None:
    """The commit of ``hub_id`` whose weights timm just read from the local Hub cache, if the cache says."""
    from huggingface_hub import try_to_load_from_cache

    names = [cfg.get("hf_hub_filename"), "model.safetensors", "open_clip_model.safetensors", "pytorch_model.bin"]
    for filename in (n for n in names if isinstance(n, str)):
        try:
            path = try_to_load_from_cache(hub_id, filename)
        except Exception:  # noqa: BLE001 - a cache that cannot be read says nothing
            return None
        if isinstance(path, str) and Path(path).parent.parent.name == "snapshots":
            return Path(path).parent.name
    return None


def meta_architecture(name: str) -> nn.Module:
    """The architecture ``name`` (as :func:`load_model` resolves it) on the meta device: shapes only, nothing read
    or allocated, for estimates (``score --dry-run``). ``hf-hub:`` names need their config from the Hub."""
    if name == DEMO_MODEL:
        return _demo_model()[0]
    timm_name = resolve_name(name)
    arch, _tag = _split_tag(timm_name)
    if not timm_name.startswith("hf-hub:") and not timm.is_model(arch):
        raise ModelLoadError(_unknown_model_message(name))
    with torch.device("meta"):
        return _create(timm_name, False, None, default_model_args(arch)).eval()


def build_architecture(source: ModelSource, *, device: str | torch.device = "cpu") -> nn.Module:
    """Rebuild the dense architecture of ``source`` without weights (no download), e.g. on the meta device.

    ``source.model_args`` has passed :func:`snapvit_cli.models.source.check_model_args` (records validate on
    read and before writing), so only allow-listed, bounded arguments reach timm.
    """
    with torch.device(device):
        return timm.create_model(source.architecture, pretrained=False, **source.model_args).eval()


def preprocessing_cfg(model: nn.Module) -> dict[str, Any]:
    """The preprocessing a bundle records for ``model``: timm's pretrained config with the family's corrections."""
    cfg = _json_cfg(corrected_preprocessing(model.pretrained_cfg))
    img_size = getattr(getattr(model, "patch_embed", None), "img_size", None)
    if img_size is not None and "input_size" in cfg:  # the size the model was built with, e.g. an img_size override
        cfg["input_size"] = [cfg["input_size"][0], *img_size]
    return cfg


def _demo_model() -> tuple[nn.Module, ModelSource]:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(DEMO_SEED)
        model = timm.create_model(DEMO_ARCH, pretrained=False, **DEMO_ARGS).eval()
    cfg = preprocessing_cfg(model)
    source = ModelSource(
        model_id=DEMO_MODEL,
        timm_name=DEMO_ARCH,
        architecture=DEMO_ARCH,
        model_args=dict(DEMO_ARGS),
        pretrained_cfg=cfg,
        weights_sha256=state_dict_sha256(model.state_dict()),
        origin="random",
        extra={"note": f"random init, torch seed {DEMO_SEED}"},
    )
    return model, source


def _split_tag(timm_name: str) -> tuple[str, str | None]:
    if timm_name.startswith("hf-hub:"):
        return timm_name, None
    arch, _, tag = timm_name.partition(".")
    return arch, tag or None


def _create(timm_name: str, pretrained: bool, revision: str | None, model_args: dict) -> nn.Module:
    kwargs = dict(model_args)
    name = timm_name
    if pretrained and revision:
        if name.startswith("hf-hub:"):
            name = f"{name.split('@')[0]}@{revision}"
        else:
            hub_id = timm.models.get_pretrained_cfg(name).hf_hub_id if timm.models.get_pretrained_cfg(name) else None
            if hub_id:
                kwargs["pretrained_cfg_overlay"] = {"hf_hub_id": f"{hub_id}@{revision}"}
    try:
        with _hub_access(timm_name) if pretrained else contextlib.nullcontext():
            return timm.create_model(name, pretrained=pretrained, **kwargs)
    except ModelLoadError:
        raise
    except Exception as exc:
        if isinstance(exc, RuntimeError) and "Unknown model" in str(exc):
            raise ModelLoadError(_unknown_model_message(timm_name)) from None
        _raise_if_download_error(timm_name, exc)
        raise


@contextlib.contextmanager
def _hub_access(timm_name: str) -> Iterator[None]:
    """Around a download of ``timm_name``'s weights or config: when the Hub does not answer within
    :data:`~snapvit_cli.hub_client.HUB_TIMEOUT_S`, use the cached copy (offline mode) or fail now in one line,
    instead of huggingface_hub's minute of retries."""
    if _hub_repo_id(timm_name) is None:  # weights hosted elsewhere (a URL), not on the Hub
        yield
        return
    reason = hub_unreachable()
    if reason is None:
        yield
        return
    if not _in_local_cache(timm_name):
        raise ModelLoadError(_download_message(timm_name, unreachable_message(reason)))
    with offline_mode():
        yield


def _hub_repo_id(timm_name: str) -> str | None:
    """The Hub repository that holds the weights of ``timm_name``, if they live on the Hub."""
    if timm_name.startswith("hf-hub:"):
        return timm_name.removeprefix("hf-hub:").split("@")[0]
    cfg = timm.models.get_pretrained_cfg(timm_name)
    return getattr(cfg, "hf_hub_id", None)


def _in_local_cache(timm_name: str) -> bool:
    from huggingface_hub import constants, scan_cache_dir

    hub_id = _hub_repo_id(timm_name)
    try:  # the cache folder named now: scan_cache_dir's default is the one set when it was first imported
        return any(repo.repo_id == hub_id for repo in scan_cache_dir(constants.HF_HUB_CACHE).repos)
    except Exception:  # noqa: BLE001 - no cache folder yet
        return False


def _raise_if_download_error(timm_name: str, exc: Exception) -> None:
    """Re-raise a failed download as a one-line :class:`ModelLoadError`, with the Hub module's advice."""
    reason = hub_error_message(exc, _hub_repo_id(timm_name))
    if reason is None and isinstance(exc, ConnectionError | URLError):  # weights hosted outside the Hub
        reason = f"cannot download ({(str(exc).splitlines() or [type(exc).__name__])[0]})"
    if reason is not None:
        raise ModelLoadError(_download_message(timm_name, reason)) from None


def _download_message(timm_name: str, reason: str) -> str:
    return f"cannot download pretrained weights for {timm_name}: {reason}; or pass --checkpoint FILE with local weights"


def _similar_names(name: str, limit: int = 3) -> list[str]:
    """Aliases and timm architectures close to a mistyped ``name`` (also when it is a prefix: ``vit_tinny``)."""
    base = name.split(".")[0].lower()

    def closeness(candidate: str) -> float:
        whole = difflib.SequenceMatcher(None, base, candidate).ratio()
        return max(whole, difflib.SequenceMatcher(None, base, candidate[: len(base)]).ratio())

    candidates = {*ALIASES, *timm.list_models()}
    scored = sorted(((closeness(c), c) for c in candidates), key=lambda s: (-s[0], len(s[1]), s[1]))
    return [candidate for score, candidate in scored[:limit] if score >= 0.8]


def _unknown_model_message(name: str) -> str:
    close = _similar_names(name)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    return f"unknown model '{name}': not a snapvit alias, timm model name or hf-hub: id.{hint} See `snapvit models`."


def _num_classes_in(state: dict[str, torch.Tensor]) -> int:
    head = state.get("head.weight")
    return int(head.shape[0]) if head is not None and head.ndim == 2 else 0


def _json_cfg(cfg: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for key in _CFG_KEYS:
        value = cfg.get(key)
        if value is not None:
            out[key] = list(value) if isinstance(value, tuple) else value
    return out


def _hub_model_args(timm_name: str, revision: str | None) -> dict[str, Any]:
    """The model arguments in an ``hf-hub:`` repo's config, so the architecture can be rebuilt offline later."""
    from timm.models import load_model_config_from_hf

    hub_id = timm_name.removeprefix("hf-hub:")
    if revision:
        hub_id = f"{hub_id.split('@')[0]}@{revision}"
    try:
        with _hub_access(timm_name):
            _cfg, arch, model_args = load_model_config_from_hf(hub_id)
    except ModelLoadError:
        raise
    except Exception as exc:  # noqa: BLE001
        _raise_if_download_error(timm_name, exc)
        raise
    return {**default_model_args(arch), **(model_args or {})}
