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
    except RuntimeError:  # torch's message lists every backend it was built to know (over 200 characters)
        raise SnapvitError(
            f"device {name} is not a device: use {', '.join(DEVICES)} (or cuda:N)", param="device"
        ) from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SnapvitError(
            f"device {name} is not usable on this machine (CUDA is not available); use cpu or auto", param="device"
        )
    if device.type == "mps" and not mps_ok:
        raise SnapvitError(
            f"device {name} is not usable on this machine (MPS is not available); use cpu or auto", param="device"
        )
    try:
        torch.empty(0, device=device)
    except (RuntimeError, AssertionError) as exc:
        reason = (str(exc).splitlines() or [type(exc).__name__])[0][:120]
        raise SnapvitError(f"device {name} is not usable on this machine ({reason})", param="device") from None
    return device
