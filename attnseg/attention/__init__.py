"""Attention blocks (one file per paper): used by the models' heads, independent of the engine."""

from .fla import FullyAttentionalBlock, fla_attention

__all__ = ["FullyAttentionalBlock", "fla_attention"]
