"""What a correction returns: the sliced, corrected weights and the record ``config.json`` keeps of them."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from torch import Tensor

from snapvit_cli.correction.layer import LayerCorrection
from snapvit_cli.correction.settings import CorrectionSettings
from snapvit_cli.correction.solver import Damping

#: Default token weighting of the statistics (:data:`snapvit_cli.correction.settings.TOKEN_MODES`), chosen by
#: measurement on the real ViT-Tiny (``benchmarks/README.md``).
DEFAULT_TOKENS = CorrectionSettings.tokens


@dataclass
class CorrectionResult:
    """The sliced, corrected state dict, and what was done to get it."""

    state: dict[str, Tensor]
    damping: Damping | None
    sequential: bool
    images: int
    layers: list[LayerCorrection]
    seconds: float
    data: dict[str, Any] | None = None  # describe() of the calibration images, when known
    tokens: str = DEFAULT_TOKENS
    heldout_images: int = 0
    guard: bool = True
    #: Distances of the final features to the dense model's on the held-back images, for the plain slice, the
    #: correction and the result: ``cka_distance`` (1 − linear CKA) and ``relative_mse``; the guard wants both lower.
    feature_error: dict[str, dict[str, float]] | None = None
    #: Consumer layers whose correction made the final features worse and that were given the plain weights back.
    reverted: list[str] = field(default_factory=list)
    #: Where the statistics came from: ``images`` (collected now) or ``bundle`` (stored at scoring time, dense
    #: inputs; without images there is no final-feature guard, only the per-layer one).
    statistics: str = "images"

    @property
    def kept_plain(self) -> list[str]:
        """Layers left with their plain weights: by the layer guard (``damping`` None) or the feature guard."""
        return [layer.tensor for layer in self.layers if layer.damping is None or layer.tensor in self.reverted]

    @property
    def notice(self) -> str | None:
        """One line for the user when a guard kept plain weights, else None."""
        kept = self.kept_plain
        if not kept:
            return None
        why = []
        if len(kept) > len(self.reverted):
            why.append(f"{len(kept) - len(self.reverted)} did not lower their own error")
        if self.reverted:
            why.append(f"{len(self.reverted)} moved the final features away from the dense model's")
        return (
            f"correction kept the plain weights of {len(kept)} of {len(self.layers)} layers "
            f"({' and '.join(why)} on held-back calibration images)"
        )

    def to_json(self) -> dict[str, Any]:
        """The settings and per-layer errors, for ``config.json`` (no timings: the same run gives the same file)."""
        return {
            **({"data": self.data} if self.data is not None else {}),
            "method": "least-squares",
            "damping": "auto" if self.damping is None else str(self.damping),
            "tokens": self.tokens,
            "inputs": "sequential" if self.sequential else "dense",
            "images": self.images,
            "heldout_images": self.heldout_images,
            "guard": self.guard,
            "feature_error": self.feature_error,
            "reverted": self.reverted,
            **({"notice": self.notice} if self.notice else {}),
            **({"statistics": self.statistics} if self.statistics != "images" else {}),
            "layers": [asdict(layer) for layer in self.layers],
        }
