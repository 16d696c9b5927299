"""Generation: the KV-cache sampler with batched group sampling."""

from urt_jax.generate.sampler import SampleOutput, sample

__all__ = ["SampleOutput", "sample"]
