"""The parts of ``urt_jax.data.benchmark_import``: finding and reading a benchmark's published
files (``tables``) and turning one published row into a preference item (``convert``)."""
