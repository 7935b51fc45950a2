"""vca-gen: Visual-Contrast Attention in DiT / SiT class-conditional generators."""

__version__ = "0.1.0"
