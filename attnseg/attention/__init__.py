"""Attention blocks (one file per paper): used by the models' heads, independent of the engine."""

from .channel_attention import ChannelAttention
from .fla import FullyAttentionalBlock, fla_attention
from .nonlocal_block import NonLocalBlock, attention_memory_bytes

__all__ = ["FullyAttentionalBlock", "fla_attention", "NonLocalBlock", "attention_memory_bytes", "ChannelAttention"]
