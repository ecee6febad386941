"""gwtn_jax: Go Wide, Then Narrow (Zhou et al., ICML 2020) in JAX/Flax.

Train a widened copy of a deep thin network, warm the thin network up by layerwise
imitation of the wide one's intermediate outputs, then fine-tune it. See README.md.
"""

__version__ = '0.1.0'
