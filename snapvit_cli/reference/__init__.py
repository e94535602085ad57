"""The SnapViT paper's published score files: a restricted reader and their import into elastic bundles."""
