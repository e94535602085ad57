"""snapvit: elastic Vision Transformers from pretrained models without retraining (SnapViT, arXiv 2510.17700).

Python API (every command is one call; docs/python-api.md)::

    import snapvit_cli
    model, source = snapvit_cli.load_model("dino_vitb16")          # `snapvit score` ...
    scores = snapvit_cli.score_model(model, "snapvit", data="photos/")
    snapvit_cli.write_bundle("dino.safetensors", model, source, scores)
    # or with the statistics that make `slice --correct` image-free (`score --correction-stats`):
    # stats = snapvit_cli.collect_correction_statistics(model, "photos/", source.pretrained_cfg)
    # snapvit_cli.write_bundle("dino.safetensors", model, source, scores, correction_stats=stats)
    bundle = snapvit_cli.load_bundle("dino.safetensors")            # `snapvit slice` ...
    small = bundle.slice(flops=0.5)                                 # ... in process, or to a folder:
    bundle.save_slice("dino-half", bundle.plan(flops=0.5))
    model = snapvit_cli.load("dino-half")                           # a sliced folder, a bundle or an hf-hub: id
    report = snapvit_cli.evaluate("dino-half", "hf:cifar10")         # `snapvit eval`
    snapvit_cli.push("dino-half", "me/dino-half")                   # `snapvit push`
    snapvit_cli.export_model(model, "dino-half.onnx", "onnx")       # `snapvit export`
    snapvit_cli.import_scores("dino_vitb16.pt", "dino.safetensors")  # `snapvit import-scores`
    snapvit_cli.describe("dino-half")                               # `snapvit info`

Section marks in docstrings and comments (``§3.2``) refer to ``docs/method.md``: the method as snapvit implements it.
"""

from __future__ import annotations

from snapvit_cli._version import __version__

# name -> module it lives in; imported on first use so that `import snapvit_cli` (and `snapvit --help`) stay
# free of torch and timm.
_API = {
    "load": "snapvit_cli.api",
    "load_bundle": "snapvit_cli.api",
    "load_model": "snapvit_cli.models.loading",
    "score_model": "snapvit_cli.scoring.run",
    "write_bundle": "snapvit_cli.elastic.bundle",
    "collect_correction_statistics": "snapvit_cli.correction.statistics",
    "evaluate": "snapvit_cli.api",
    "push": "snapvit_cli.hub.push",
    "import_scores": "snapvit_cli.api",
    "export_model": "snapvit_cli.export",
    "describe": "snapvit_cli.info",
    "ScoreSettings": "snapvit_cli.scoring.settings",
    "CorrectionSettings": "snapvit_cli.correction.settings",
    "EvalSettings": "snapvit_cli.evaluation.settings",
}

__all__ = ["__version__", *_API]


def __dir__() -> list[str]:
    """The public API too, although its names are imported only on first use."""
    return sorted({*globals(), *_API})


def __getattr__(name: str):
    if name in _API:
        import importlib

        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'snapvit_cli' has no attribute {name!r}")
