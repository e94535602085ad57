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
        torch.empty(0, device=device)
    except (RuntimeError, AssertionError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise SnapvitError(f"device {name} is not usable on this machine ({reason})", param="device") from None
    return device
