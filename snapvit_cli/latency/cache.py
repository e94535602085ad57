"""Where latency profiles live: the user's cache directory, one JSON file per key, never inside a bundle.

The directory is ``$SNAPVIT_CACHE_DIR`` if set, else ``$XDG_CACHE_HOME/snapvit``, else ``~/.cache/snapvit``; profiles
go under ``latency/``, named by the sha256 of their key. A profile is used only for exactly the key it was measured
under (device and its model, threads, dtype, batch, resolution, torch version, architecture): after a torch
upgrade, on another GPU or with other thread counts the lookup misses and the profile is measured again. A file
that does not read back as a profile of the key its name promises (edited, truncated, written by another snapvit)
is reported as stale and measured again.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from snapvit_cli.fileio import atomic_path, open_regular
from snapvit_cli.latency.model import LatencyError, LatencyModel, ProfileKey
from snapvit_cli.schema import MAX_JSON_CHARS, parse_json

CACHE_ENV = "SNAPVIT_CACHE_DIR"


def cache_dir() -> Path:
    """The snapvit cache directory (not created here)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "snapvit"


def profile_path(key: ProfileKey) -> Path:
    """The cache file of ``key``."""
    text = json.dumps(key.to_json(), sort_keys=True, separators=(",", ":"))
    return cache_dir() / "latency" / f"{hashlib.sha256(text.encode()).hexdigest()[:32]}.json"


def read_profile(path: str | os.PathLike) -> LatencyModel:
    """Read and validate a profile file."""
    path = Path(path)
    try:
        with open_regular(path) as file:  # a FIFO in the cache would block
            raw = file.read(MAX_JSON_CHARS + 1)
        if len(raw) > MAX_JSON_CHARS:
            raise LatencyError(f"{path} is too large to be a latency profile")
        text = raw.decode("utf-8")
    except OSError as exc:
        raise LatencyError(f"cannot read the latency profile {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise LatencyError(f"{path} is not a latency profile (not UTF-8 text)") from None
    try:
        return LatencyModel.from_json(parse_json(text, str(path)), str(path))
    except LatencyError:
        raise
    except Exception as exc:  # noqa: BLE001 - BundleError from the strict reader, and its kin
        raise LatencyError(f"{path} is not a usable latency profile: {exc}") from None


def stale_reason(profile: LatencyModel, key: ProfileKey) -> str | None:
    """Why ``profile`` does not describe ``key`` (another torch, device, thread count…), or None when it does."""
    ours, theirs = key.to_json(), profile.key.to_json()
    differing = [name for name in ours if ours[name] != theirs.get(name)]
    if not differing:
        return None
    return "; ".join(f"{name} {theirs.get(name)!r}, not {ours[name]!r}" for name in differing)


def write_profile(profile: LatencyModel, path: str | os.PathLike | None = None) -> Path:
    """Write ``profile`` atomically (to its cache file by default, replacing an older one)."""
    path = Path(path) if path is not None else profile_path(profile.key)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(profile.to_json(), indent=2, sort_keys=True, allow_nan=False) + "\n"
    with atomic_path(path, force=True) as tmp:  # a cache: the newer measurement replaces the older one
        tmp.write_text(text, encoding="utf-8")
    return path


@dataclass(frozen=True)
class Lookup:
    """A profile and where it came from: ``cached`` (read back), or measured now (``stale``: why the cached file
    was not used, None when there was none)."""

    profile: LatencyModel
    path: Path
    cached: bool
    stale: str | None = None


def load_or_measure(
    skeleton: nn.Module,
    *,
    min_keep_mlp: float,
    device: str = "cpu",
    dtype: str = "float32",
    batch_size: int = 1,
    resolution: int | None = None,
    repeats: int = 5,
    remeasure: bool = False,
    clock: str = "wall",
    progress: Callable[[int, int], None] | None = None,
) -> Lookup:
    """The cached profile of ``skeleton``'s architecture for this device, dtype, batch and resolution; measured
    and cached when there is none, when the cached one is stale, or with ``remeasure``."""
    from snapvit_cli.devices import resolve_device
    from snapvit_cli.latency.profile import measure_profile, profile_key

    if batch_size < 1:
        raise LatencyError(f"batch_size must be at least 1, got {batch_size}", param="batch_size")
    if repeats < 1:
        raise LatencyError(f"repeats must be at least 1, got {repeats}", param="repeats")
    torch_device = resolve_device(device)
    key = profile_key(skeleton, torch_device, dtype, batch_size, resolution, clock)
    path = profile_path(key)
    stale = None
    if path.is_file() and not remeasure:
        try:
            profile = read_profile(path)
            stale = stale_reason(profile, key)
        except LatencyError as exc:
            stale = str(exc)
        else:
            if stale is None:
                return Lookup(profile, path, cached=True)
    profile = measure_profile(
        skeleton,
        min_keep_mlp=min_keep_mlp,
        device=torch_device,
        dtype=dtype,
        batch_size=batch_size,
        resolution=key.resolution,
        repeats=repeats,
        clock=clock,
        progress=progress,
    )
    return Lookup(profile, write_profile(profile, path), cached=False, stale=stale)
