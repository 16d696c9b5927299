"""Hand-written backward passes for the hot blocks of the text decoder.

Same forward as the plain formulas (and so the same logits as transformers), a backward written
out so that XLA gets row-major matmuls and row-major elementwise work:

- ``swiglu``: autodiff of ``down(silu(x @ Wg) * (x @ Wu))`` made XLA:CPU fuse the SiLU
  derivative into transposes of [tokens, intermediate] activations, an elementwise loop with
  strided reads that took longer than the matmuls around it.
- ``gqa_attention``: queries are regrouped ([B, KV, T*G, D], the G query heads of a KV head
  as rows, token-major) so that every matmul of the forward and backward is a plain batched
  matmul, and the backward is the textbook one (dS = P * (dP - rowsum(dO * O))) instead of the
  chain of transposes autodiff produced through the einsums; causal self-attention is split
  into query blocks (blocks of rows) that skip the keys after them.
- ``apply_rotary``: autodiff of ``x * cos + rotate_half(x) * sin`` fused the rotation's pads and
  slices into the transposes the weight gradients read, with cos recomputed per head inside
  them; written out, the backward is ``dy * cos - rotate_half(dy * sin)``, with cos/sin
  computed once per forward (``urt_jax.model.rope.mrope_cos_sin``).
- ``linear`` (every Dense of the model) and the weight gradients above: ``x^T @ dy`` takes x
  through ``tokens_major``, a transposed copy XLA:CPU cannot fuse x's elementwise producer
  into.

The LM head's log-probabilities of target tokens get the same treatment in urt_jax.train.loss.

All keep the dtype policy: matmuls in the inputs' dtype, softmax statistics in fp32.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

_NEG = jnp.finfo(jnp.float32).min


def masked_softmax(scores: jax.Array, keep: jax.Array) -> jax.Array:
    """Attention weights as eager attention forms them: softmax over the last axis in fp32, the
    entries where ``keep`` (broadcast against ``scores``) is False set to fp32's minimum first.
    fp32 probabilities; callers cast them to the values' dtype."""
    return jax.nn.softmax(jnp.where(keep, scores.astype(jnp.float32), _NEG), axis=-1)


# Layouts and rewrites that only pay on XLA:CPU run under this name scope: a program traced for
# another backend must hold none of them (tests/test_attention_backends.py reads the scope names).
CPU_WORKAROUND = "urt_jax_cpu_only"


# ------------------------------------------------------------------------ weight gradients
def tokens_major(a: jax.Array, cpu_layout: bool) -> jax.Array:
    """a [tokens..., F] as [F, tokens]: the left operand of a weight gradient ``a^T @ dy``.

    On XLA:CPU the transpose is copied from a finished, row-major ``a``: it runs in a branch of a
    conditional, a boundary XLA does not fuse across. Left to itself XLA fuses a's elementwise
    producer (an RMSNorm, SiLU * up, RoPE's backward) into the transposing loop, which then
    reads strided and does not vectorise, several times slower than the copy. Without
    ``cpu_layout`` (a model built for TPU or GPU) the backend transposes as it sees fit."""
    flat = a.reshape(-1, a.shape[-1])
    if not cpu_layout:
        return flat.T
    with jax.named_scope(CPU_WORKAROUND):
        runtime_true = flat[0, 0] == flat[0, 0]  # false only for NaN; both branches the same
        return jax.lax.cond(runtime_true, jnp.transpose, jnp.transpose, flat)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def linear(x: jax.Array, kernel: jax.Array, cpu_layout: bool) -> jax.Array:
    """``x @ kernel`` for x [..., I], kernel [I, O], with the kernel's gradient taken through
    ``tokens_major(x, cpu_layout)``."""
    return jnp.dot(x, kernel)


def _linear_forward(x, kernel, cpu_layout):
    return jnp.dot(x, kernel), (x, kernel)


def _linear_backward(cpu_layout, res, dy):
    x, kernel = res
    d_kernel = jnp.dot(tokens_major(x, cpu_layout), dy.reshape(-1, dy.shape[-1]))
    return jnp.dot(dy, kernel.T), d_kernel


linear.defvjp(_linear_forward, _linear_backward)


# ------------------------------------------------------------------------------------- SwiGLU
@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def swiglu(
    x: jax.Array, w_gate: jax.Array, w_up: jax.Array, w_down: jax.Array, cpu_layout: bool
) -> jax.Array:
    """``(silu(x @ w_gate) * (x @ w_up)) @ w_down`` for x [..., D]; all in x's dtype."""
    return _swiglu_forward(x, w_gate, w_up, w_down, cpu_layout)[0]


def _swiglu_forward(x, w_gate, w_up, w_down, cpu_layout):
    gate, up = jnp.dot(x, w_gate), jnp.dot(x, w_up)
    return jnp.dot(jax.nn.silu(gate) * up, w_down), (x, gate, up, w_gate, w_up, w_down)


def _swiglu_backward(cpu_layout, res, dy):
    x, gate, up, w_gate, w_up, w_down = res
    sig = jax.nn.sigmoid(gate)
    silu = gate * sig
    dh = jnp.dot(dy, w_down.T)
    d_up = dh * silu
    d_gate = dh * up * sig * (1 + gate * (1 - sig))  # d silu(g) / dg = s (1 + g (1 - s))
    dx = jnp.dot(d_gate, w_gate.T) + jnp.dot(d_up, w_up.T)
    x_t, rows = tokens_major(x, cpu_layout), lambda a: a.reshape(-1, a.shape[-1])
    return (
        dx,
        jnp.dot(x_t, rows(d_gate)),
        jnp.dot(x_t, rows(d_up)),
        jnp.dot(tokens_major(silu * up, cpu_layout), rows(dy)),
    )


swiglu.defvjp(_swiglu_forward, _swiglu_backward)


# ------------------------------------------------------------------------------ GQA attention
def causal_blocks(length: int, min_block: int = 64, max_blocks: int = 8) -> int:
    """How many query blocks causal self-attention over ``length`` tokens is split into: the
    most (up to ``max_blocks``) that divide it into blocks of at least ``min_block``."""
    for blocks in range(max_blocks, 1, -1):
        if length % blocks == 0 and length // blocks >= min_block:
            return blocks
    return 1


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def gqa_attention(
    q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array, scale: float, blocks: int = 1
) -> jax.Array:
    """Masked softmax attention. q [B, T, H, D]; k, v [B, S, KV, D]; mask [B, T, S] bool (True
    attends). Query head h reads KV head h // (H / KV), as transformers' repeat_kv. Returns
    [B, T, H, D]. Scores and softmax in fp32, probabilities cast to v's dtype, as eager.

    ``blocks`` > 1 splits the queries into that many equal blocks, block i reading only the
    keys up to its last query: exact for causal self-attention (S == T and ``mask`` never
    attends to a later key), and it skips the masked upper triangle (3/8 of the work at 4
    blocks). A query with no key to attend to (padding) gets the mean of its block's values
    instead of all values: such outputs stay at padding positions and are never read."""
    return _attention_forward(q, k, v, mask, scale, blocks)[0]


def _grouped(x: jax.Array, kv: int) -> jax.Array:
    """[B, T, H, D] -> [B, KV, T*G, D]: row t*G + g is query t of the g-th head of its KV head
    (token-major, so a block of queries is a block of rows, and the transpose moves whole
    [G, D] runs)."""
    b, t, h, d = x.shape
    return x.reshape(b, t, kv, h // kv, d).transpose(0, 2, 1, 3, 4).reshape(b, kv, -1, d)


def _ungrouped(x: jax.Array, t: int) -> jax.Array:
    b, kv, tg, d = x.shape
    return x.reshape(b, kv, t, tg // t, d).transpose(0, 2, 1, 3, 4).reshape(b, t, -1, d)


def _spans(t: int, s: int, blocks: int) -> list[tuple[int, int, int]]:
    """(first query, end query, end key) of each query block."""
    if blocks <= 1 or t != s or t % blocks:
        return [(0, t, s)]
    size = t // blocks
    return [(i * size, (i + 1) * size, (i + 1) * size) for i in range(blocks)]


def _attention_forward(q, k, v, mask, scale, blocks):
    t, h, kv = q.shape[1], q.shape[2], k.shape[2]
    groups = h // kv
    kh, vh = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)  # [B, KV, S, D]
    q_all = _grouped(q, kv)
    outs, saved = [], []
    for start, end, keys in _spans(t, k.shape[1], blocks):
        qg = q_all[:, :, start * groups : end * groups]
        scores = jnp.einsum("bkqd,bksd->bkqs", qg, kh[:, :, :keys])
        scores = scores * jnp.asarray(scale, q.dtype)
        keep = jnp.repeat(mask[:, None, start:end, :keys], groups, axis=2)  # [B, 1, c*G, s]
        probs = masked_softmax(scores, keep)
        out = jnp.einsum("bkqs,bksd->bkqd", probs.astype(v.dtype), vh[:, :, :keys])
        outs.append(out)
        saved.append((qg, probs, out, keep))
    out = outs[0] if len(outs) == 1 else jnp.concatenate(outs, axis=2)
    return _ungrouped(out, t), (kh, vh, saved)


def _attention_backward(scale, blocks, res, d_out):
    kh, vh, saved = res
    t, s, kv = d_out.shape[1], kh.shape[2], kh.shape[1]
    groups = d_out.shape[2] // kv
    do_all = _grouped(d_out, kv)
    dq, dk, dv = [], jnp.zeros(kh.shape, jnp.float32), jnp.zeros(vh.shape, jnp.float32)
    for (start, end, keys), (qg, probs, out, keep) in zip(_spans(t, s, blocks), saved, strict=True):
        dog = do_all[:, :, start * groups : end * groups]
        k_, v_ = kh[:, :, :keys], vh[:, :, :keys]
        dv_ = jnp.einsum("bkqs,bkqd->bksd", probs.astype(dog.dtype), dog)
        dp = jnp.einsum("bkqd,bksd->bkqs", dog, v_).astype(jnp.float32)
        row = jnp.sum(dog.astype(jnp.float32) * out.astype(jnp.float32), axis=-1, keepdims=True)
        # masked scores get no gradient (as through jnp.where), also on rows with no key at all
        ds = jnp.where(keep, probs * (dp - row) * scale, 0.0).astype(qg.dtype)
        dq.append(jnp.einsum("bkqs,bksd->bkqd", ds, k_))
        dk_ = jnp.einsum("bkqs,bkqd->bksd", ds, qg)
        dk, dv = dk.at[:, :, :keys].add(dk_), dv.at[:, :, :keys].add(dv_)
    dq = _ungrouped(dq[0] if len(dq) == 1 else jnp.concatenate(dq, axis=2), t)
    dk, dv = dk.astype(kh.dtype), dv.astype(vh.dtype)
    return dq, dk.transpose(0, 2, 1, 3), dv.transpose(0, 2, 1, 3), None


gqa_attention.defvjp(_attention_forward, _attention_backward)


# ------------------------------------------------------------------------------------- RoPE
def rotate_half(x: jax.Array) -> jax.Array:
    half = x.shape[-1] // 2
    return jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)


@jax.custom_vjp
def apply_rotary(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """``x * cos + rotate_half(x) * sin``, cos and sin broadcast against x."""
    return _rotary_forward(x, cos, sin)[0]


def _rotary_forward(x, cos, sin):
    return x * cos + rotate_half(x) * sin, (x, cos, sin)


def _sum_to(g: jax.Array, like: jax.Array) -> jax.Array:
    """``g`` summed over the dimensions ``like`` was broadcast along (same rank)."""
    axes = tuple(i for i, (a, b) in enumerate(zip(g.shape, like.shape, strict=True)) if a != b)
    return jnp.sum(g, axis=axes, keepdims=True).astype(like.dtype) if axes else g.astype(like.dtype)


def _rotary_backward(res, dy):
    # rotate_half is the linear map R(x) = [-x2, x1], whose transpose is -R: so
    # dx = dy * cos - R(dy * sin). Autodiff instead produced pads and slices of the rotation
    # fused with the transpose the weight gradient reads (and cos recomputed per head inside it).
    x, cos, sin = res
    dx = dy * cos - rotate_half(dy * sin)
    return dx.astype(x.dtype), _sum_to(dy * x, cos), _sum_to(dy * rotate_half(x), sin)


apply_rotary.defvjp(_rotary_forward, _rotary_backward)
