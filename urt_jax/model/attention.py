"""One attention interface, an implementation per backend (``model.kernels``).

- ``cpu``: the blocked kernel of ``urt_jax.model.kernels`` (query blocks that skip the keys after
  them, a hand-written backward shaped for XLA:CPU); the vision tower's segments as one dense
  masked einsum each.
- ``tpu``: Pallas splash attention (``jax.experimental.pallas.ops.tpu.splash_attention``):
  causal with the batch's padding as segment ids (text), full attention within each segment
  (vision), GQA as one multi-query kernel per KV head; under a mesh it runs in ``shard_map``
  over the batch (data, fsdp) and, when both head counts divide, the heads (tensor). Off a TPU
  it runs in Pallas' interpret mode, which is how it is tested on the CPU.
- ``gpu``: ``jax.nn.dot_product_attention``, cuDNN's flash attention for bf16/fp16 (the XLA
  formula for fp32, which cuDNN does not take). Padding is given as sequence lengths: each row's
  tokens are rotated so that its valid tokens come first (left padding becomes right padding),
  then rotated back.

Neither accelerator path forms the [queries, keys] probabilities in memory. All three give the
same outputs at valid positions; what a padding query attends to differs, and is never read.
Softmax statistics are fp32 throughout.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec

from urt_jax.model.kernels import causal_blocks, gqa_attention
from urt_jax.model.layers import masked_softmax_attention

KERNELS = ("auto", "cpu", "tpu", "gpu")
SPLASH_BLOCK = 128  # splash tiles: sequence lengths are padded to a multiple of it


def resolve_kernels(kernels: str) -> str:
    """ "cpu", "tpu" or "gpu": ``kernels`` itself, or for "auto" the default backend's."""
    if kernels not in KERNELS:
        raise ValueError(f"model.kernels must be one of {KERNELS}, found {kernels!r}")
    if kernels != "auto":
        return kernels
    backend = jax.default_backend()
    return {"tpu": "tpu", "gpu": "gpu", "cuda": "gpu", "rocm": "gpu"}.get(backend, "cpu")


def causal_attention(
    q: jax.Array, k: jax.Array, v: jax.Array, valid: jax.Array, scale: float, kernels: str
) -> jax.Array:
    """Causal GQA self-attention over a padded batch. q [B, T, H, D]; k, v [B, T, KV, D]; valid
    [B, T] bool (False at padding, which no valid query attends). Query head h reads KV head
    h // (H / KV), as transformers' repeat_kv. Returns [B, T, H, D]."""
    if kernels == "tpu":
        return _splash(q, k, v, valid, scale, causal=True)
    if kernels == "gpu":
        return _dot_product(q, k, v, valid, scale, causal=True)
    t = q.shape[1]
    mask = jnp.tril(jnp.ones((t, t), bool))[None] & valid[:, None, :]
    return gqa_attention(q, k, v, mask, scale, causal_blocks(t))


def segment_attention(
    q: jax.Array, k: jax.Array, v: jax.Array, valid: jax.Array, scale: float, kernels: str
) -> jax.Array:
    """Full attention within each segment (the vision tower's windows and frames). q, k, v
    [S, L, H, D]; valid [S, L] bool, True on a prefix of each segment. Returns [S, L, H, D]."""
    if kernels == "tpu":
        return _splash(q, k, v, valid, scale, causal=False)
    if kernels == "gpu":
        return _dot_product(q, k, v, valid, scale, causal=False)
    return masked_softmax_attention(q, k, v, valid[:, None, None, :], scale, "sqhd,skhd->shqk")


# ----------------------------------------------------------------------------------- GPU
def _dot_product(q, k, v, valid, scale, causal):
    lengths = jnp.sum(valid, axis=-1, dtype=jnp.int32)
    first = jnp.argmax(valid, axis=-1).astype(jnp.int32)  # 0 for right padding
    t = q.shape[1]
    order = (jnp.arange(t, dtype=jnp.int32)[None] + first[:, None]) % t  # valid tokens first
    back = (jnp.arange(t, dtype=jnp.int32)[None] - first[:, None]) % t

    def rows(x, index):
        return jnp.take_along_axis(x, index[:, :, None, None], axis=1)

    fast = jax.default_backend() == "gpu" and q.dtype in (jnp.bfloat16, jnp.float16)
    out = jax.nn.dot_product_attention(
        rows(q, order),
        rows(k, order),
        rows(v, order),
        scale=scale,
        is_causal=causal,
        query_seq_lengths=lengths,
        key_value_seq_lengths=lengths,
        implementation="cudnn" if fast else "xla",
    )
    return rows(out, back)


# ----------------------------------------------------------------------------------- TPU
def _splash_kernel(length: int, groups: int, causal: bool):
    from jax.experimental.pallas.ops.tpu.splash_attention import (
        splash_attention_kernel as splash,
    )
    from jax.experimental.pallas.ops.tpu.splash_attention import (
        splash_attention_mask as masks,
    )

    shape = (length, length)
    head = masks.CausalMask(shape) if causal else masks.FullMask(shape)
    block = SPLASH_BLOCK
    sizes = splash.BlockSizes(
        block_q=block,
        block_kv=block,
        block_kv_compute=block,
        block_q_dkv=block,
        block_kv_dkv=block,
        block_kv_dkv_compute=block,
        block_q_dq=block,
        block_kv_dq=block,
    )
    return splash.make_splash_mqa_single_device(
        masks.MultiHeadMask([head] * groups),
        block_sizes=sizes,
        interpret=jax.default_backend() != "tpu",
    ), splash.SegmentIds


def _splash_local(q, k, v, segments, scale, causal):
    """Splash attention on one device's rows. q [B, T, H, D]; k, v [B, T, KV, D]; segments
    [B, T] int32 (T a multiple of the block)."""
    b, t, h, d = q.shape
    kv = k.shape[2]
    groups = h // kv
    kernel, segment_ids = _splash_kernel(t, groups, causal)
    qg = (q * jnp.asarray(scale, q.dtype)).reshape(b, t, kv, groups, d).transpose(0, 2, 3, 1, 4)
    kh, vh = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)  # [B, KV, T, D]

    def one_row(q_row, k_row, v_row, seg):
        ids = segment_ids(q=seg, kv=seg)
        return jax.vmap(lambda a, b_, c: kernel(a, b_, c, segment_ids=ids))(q_row, k_row, v_row)

    out = jax.vmap(one_row)(qg, kh, vh, segments)  # [B, KV, G, T, D]
    return out.transpose(0, 3, 1, 2, 4).reshape(b, t, h, d).astype(v.dtype)


def _splash(q, k, v, valid, scale, causal):
    """Padding becomes segment 0 (valid tokens 1), so a padding query attends padding keys and
    no valid query sees them; the length is padded to a multiple of the block the same way."""
    t = q.shape[1]
    padded = -(-t // SPLASH_BLOCK) * SPLASH_BLOCK
    segments = valid.astype(jnp.int32)
    if padded != t:
        widths = [(0, 0), (0, padded - t), (0, 0), (0, 0)]
        q, k, v = (jnp.pad(x, widths) for x in (q, k, v))
        segments = jnp.pad(segments, [(0, 0), (0, padded - t)])
    local = functools.partial(_splash_local, scale=scale, causal=causal)
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        out = local(q, k, v, segments)
    else:
        out = _sharded(local, mesh, q, k, v, segments)
    return out[:, :t]


def _sharded(local, mesh, q, k, v, segments):
    """``local`` in shard_map: rows over (data, fsdp) where they divide, heads over tensor where
    both the query and the KV heads divide (else every device holds all heads)."""
    from urt_jax.sharding.rules import logical_to_spec

    batch = logical_to_spec(("batch",), q.shape[:1], mesh)[0]
    tensor = mesh.shape.get("tensor", 1)
    heads = "tensor" if tensor > 1 and q.shape[2] % tensor == 0 == k.shape[2] % tensor else None
    spec = PartitionSpec(batch, None, heads, None)
    return jax.shard_map(
        local,
        mesh=mesh,
        in_specs=(spec, spec, spec, PartitionSpec(batch, None)),
        out_specs=spec,
        check_vma=False,
    )(q, k, v, segments)
