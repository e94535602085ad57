"""snapvit: elastic Vision Transformers from pretrained models without retraining (SnapViT, arXiv 2510.17700).

Python API::

    import snapvit_cli
    bundle = snapvit_cli.load_bundle("dino_vitb16.safetensors")   # score once (``snapvit score``) ...
    small = bundle.slice(flops=0.5)                               # ... cut to any budget in-process
    model = snapvit_cli.load("sliced-folder/")                    # or load a saved sliced model
"""

from __future__ import annotations

from snapvit_cli._version import __version__

__all__ = ["__version__", "load", "load_bundle", "load_model", "score_model", "write_bundle"]


def __getattr__(name: str):
    # Imported lazily so that `import snapvit_cli` (and `snapvit --help`) do not pay for torch and timm.
    if name in {"load", "load_bundle"}:
        from snapvit_cli import api

        return getattr(api, name)
    if name == "load_model":
        from snapvit_cli.models.loading import load_model

        return load_model
    if name == "score_model":
        from snapvit_cli.scoring import score_model

        return score_model
    if name == "write_bundle":
        from snapvit_cli.elastic.bundle import write_bundle

        return write_bundle
    raise AttributeError(f"module 'snapvit_cli' has no attribute {name!r}")
