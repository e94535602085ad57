"""Dense source models: the alias and family registries (pure data) and loading from timm, the Hub or a checkpoint."""
