"""Choosing the torch device: one rule for scoring, correction and evaluation."""

from __future__ import annotations

from typing import TYPE_CHECKING

from snapvit_cli.errors import SnapvitError

if TYPE_CHECKING:
    import torch

DEVICES = ("auto", "cpu", "cuda", "mps")


def resolve_device(name: str | None = "auto") -> torch.device:
    """``auto`` (or None) → CUDA if available, else MPS, else the CPU; a named device must be usable here."""
    import torch  # here, so that settings can name the devices without importing torch

    mps = getattr(torch.backends, "mps", None)
    mps_ok = mps is not None and mps.is_available()
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "mps" if mps_ok else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise SnapvitError(
            f"device {name!r} is not usable on this machine (not a torch device; use one of {', '.join(DEVICES)})",
            param="device",
        ) from None
    if device.type == "mps" and not mps_ok:
        raise SnapvitError(
            f"device {name} is not available on this machine (PyTorch sees no Apple GPU)", param="device"
        )
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SnapvitError(f"device {name} is not available on this machine (PyTorch sees no CUDA GPU)", param="device")
    try:
        torch.empty(0, device=device)
    except (RuntimeError, AssertionError) as exc:
        # torch's messages run to many lines and sentences (a list of every backend): keep the first sentence
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0].split(". ")[0]
        raise SnapvitError(f"device {name} is not usable on this machine ({reason})", param="device") from None
    return device
