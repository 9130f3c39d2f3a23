"""Building blocks: backbones and operators. Knows nothing of the engine."""
