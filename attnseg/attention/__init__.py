"""Attention blocks (one file per paper): used by the models' heads, independent of the engine."""

from .channel_attention import ChannelAttention
from .criss_cross import CrissCrossAttention, criss_cross, criss_cross_memory_bytes
from .danet import DANetBlock, PositionAttention
from .fla import FullyAttentionalBlock, fla_attention
from .nonlocal_block import NonLocalBlock, attention_memory_bytes

__all__ = ["FullyAttentionalBlock", "fla_attention", "NonLocalBlock", "attention_memory_bytes", "ChannelAttention",
           "PositionAttention", "DANetBlock", "CrissCrossAttention", "criss_cross", "criss_cross_memory_bytes"]
