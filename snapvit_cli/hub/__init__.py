"""Publishing to the Hugging Face Hub: uploads (``push``), model cards and eval results.

Talking to the Hub (ids, downloads, error messages, offline mode) is :mod:`snapvit_cli.hub_client`, a leaf that the
loaders below this package use too (docs/architecture.md).
"""
