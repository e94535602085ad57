"""The knobs of ``slice --correct`` in one validated record, without torch, so that the CLI takes its defaults here."""

from __future__ import annotations

from dataclasses import dataclass

from snapvit_cli.devices import DEVICES
from snapvit_cli.errors import SnapvitError
from snapvit_cli.seeds import check_seed

#: How the rows of a layer's input are weighted in the correction's statistics (``--correct-tokens``):
#: class token and the other tokens half each, the class token only, or every token alike (the reference).
TOKEN_MODES = ("weighted", "cls", "all")

#: Every 4th calibration image is held back from the fit, to choose the damping and to guard against harm.
DEFAULT_HOLDOUT = 4


@dataclass(frozen=True)
class CorrectionSettings:
    """Least-squares correction of a slice on calibration images (docs/method.md §8).

    ``data`` is a ``--data`` string (image folder, ``.npz``, ``hf:NAME``, ``demo``) or an
    :class:`~snapvit_cli.data.ImageSet` (used as given); of a string's train split, ``samples`` images are drawn
    with ``seed``. ``None`` (the default) uses the statistics stored in the bundle (``score --correction-stats``):
    no images are read, inputs are dense, and ``samples``, ``seed``, ``sequential``, ``batch_size`` and ``device``
    do not apply.
    ``sequential`` feeds each block the corrected outputs of the blocks before it; ``False`` feeds the dense
    model's activations (the reference). ``damping`` is ``auto`` (chosen per layer on held-back calibration
    images) or ``mean:F``, ``max:F`` or ``pNN:F``. ``tokens`` is one of :data:`TOKEN_MODES` (issue 18: ``weighted``
    keeps the class token from being outvoted by the patch tokens).
    """

    data: object = None
    samples: int = 1000
    seed: int = 0
    damping: str = "auto"
    tokens: str = "weighted"
    sequential: bool = True
    batch_size: int = 64
    device: str = "auto"

    def __post_init__(self) -> None:
        check_seed(self.seed)
        for name in ("samples", "batch_size"):
            if getattr(self, name) < 1:
                raise SnapvitError(f"{name} must be at least 1, got {getattr(self, name)}", param=name)
        if self.tokens not in TOKEN_MODES:
            raise SnapvitError(f"tokens must be one of {', '.join(TOKEN_MODES)}, got '{self.tokens}'", param="tokens")
        if self.device not in DEVICES:
            raise SnapvitError(f"device must be one of {', '.join(DEVICES)}, got '{self.device}'", param="device")
        from snapvit_cli.correction.solver import parse_damping  # here: the solver needs torch

        parse_damping(self.damping)
