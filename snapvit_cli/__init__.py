"""snapvit: elastic Vision Transformers from pretrained models without retraining (SnapViT, arXiv 2510.17700)."""

__version__ = "0.1.0"
