"""paced_jax: PACED (pass-rate weighted) distillation of language models in JAX / Flax NNX."""

__version__ = "0.1.0"
