"""mmtjax: memory-based few-shot semantic segmentation (MMT, MM-Net) in JAX/Flax."""

__version__ = '0.1.0'
