"""Hand-written backward passes for the two hot blocks of the text decoder.

Same forward as the plain formulas (and so the same logits as transformers), a backward written
out so that XLA gets row-major matmuls and row-major elementwise work:

- ``swiglu``: autodiff of ``down(silu(x @ Wg) * (x @ Wu))`` made XLA:CPU fuse the SiLU
  derivative into transposes of [tokens, intermediate] activations, an elementwise loop with
  strided reads that took longer than the matmuls around it (benchmark shape: 219 -> 161 ms per
  layer for forward and backward; torch 156).
- ``gqa_attention``: queries are regrouped head-major ([B, KV, G*T, D], the G query heads of a
  KV head stacked) so that every matmul of the forward and backward is a plain batched matmul,
  and the backward is the textbook one (dS = P * (dP - rowsum(dO * O))) instead of the chain of
  transposes autodiff produced through the einsums (forward 64 -> 28 ms per layer).

Both keep the dtype policy: matmuls in the inputs' dtype, softmax statistics in fp32.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

_NEG = jnp.finfo(jnp.float32).min


# ------------------------------------------------------------------------------------- SwiGLU
@jax.custom_vjp
def swiglu(x: jax.Array, w_gate: jax.Array, w_up: jax.Array, w_down: jax.Array) -> jax.Array:
    """``(silu(x @ w_gate) * (x @ w_up)) @ w_down`` for x [..., D]; all in x's dtype."""
    return _swiglu_forward(x, w_gate, w_up, w_down)[0]


def _swiglu_forward(x, w_gate, w_up, w_down):
    gate, up = jnp.dot(x, w_gate), jnp.dot(x, w_up)
    return jnp.dot(jax.nn.silu(gate) * up, w_down), (x, gate, up, w_gate, w_up, w_down)


def _swiglu_backward(res, dy):
    x, gate, up, w_gate, w_up, w_down = res
    sig = jax.nn.sigmoid(gate)
    silu = gate * sig
    dh = jnp.dot(dy, w_down.T)
    d_up = dh * silu
    d_gate = dh * up * sig * (1 + gate * (1 - sig))  # d silu(g) / dg = s (1 + g (1 - s))
    tokens = "".join(chr(ord("a") + i) for i in range(x.ndim - 1))
    outer = f"{tokens}i,{tokens}o->io"  # weight gradients: contract every token dimension
    dx = jnp.dot(d_gate, w_gate.T) + jnp.dot(d_up, w_up.T)
    return (
        dx,
        jnp.einsum(outer, x, d_gate),
        jnp.einsum(outer, x, d_up),
        jnp.einsum(outer, silu * up, dy),
    )


swiglu.defvjp(_swiglu_forward, _swiglu_backward)


# ------------------------------------------------------------------------------ GQA attention
@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def gqa_attention(
    q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array, scale: float
) -> jax.Array:
    """Masked softmax attention. q [B, T, H, D]; k, v [B, S, KV, D]; mask [B, T, S] bool (True
    attends). Query head h reads KV head h // (H / KV), as transformers' repeat_kv. Returns
    [B, T, H, D]. Scores and softmax in fp32, probabilities cast to v's dtype, as eager."""
    return _attention_forward(q, k, v, mask, scale)[0]


def _grouped(x: jax.Array, kv: int) -> jax.Array:
    """[B, T, H, D] -> [B, KV, G*T, D]: the G query heads of each KV head stacked along T."""
    b, t, h, d = x.shape
    return x.reshape(b, t, kv, h // kv, d).transpose(0, 2, 3, 1, 4).reshape(b, kv, -1, d)


def _ungrouped(x: jax.Array, t: int) -> jax.Array:
    b, kv, gt, d = x.shape
    return x.reshape(b, kv, gt // t, t, d).transpose(0, 3, 1, 2, 4).reshape(b, t, -1, d)


def _attention_forward(q, k, v, mask, scale):
    b, t, h, d = q.shape
    kv = k.shape[2]
    qg = _grouped(q, kv)
    kh, vh = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)  # [B, KV, S, D]
    scores = jnp.einsum("bkqd,bksd->bkqs", qg, kh) * jnp.asarray(scale, q.dtype)
    keep = jnp.tile(mask[:, None], (1, 1, h // kv, 1))  # [B, 1, G*T, S]
    probs = jax.nn.softmax(jnp.where(keep, scores.astype(jnp.float32), _NEG), axis=-1)
    out = jnp.einsum("bkqs,bksd->bkqd", probs.astype(v.dtype), vh)
    return _ungrouped(out, t), (qg, kh, vh, probs, out, keep)


def _attention_backward(scale, res, d_out):
    qg, kh, vh, probs, out, keep = res
    t = d_out.shape[1]
    dog = _grouped(d_out, kh.shape[1])
    dv = jnp.einsum("bkqs,bkqd->bksd", probs.astype(dog.dtype), dog)
    dp = jnp.einsum("bkqd,bksd->bkqs", dog, vh).astype(jnp.float32)
    row = jnp.sum(dog.astype(jnp.float32) * out.astype(jnp.float32), axis=-1, keepdims=True)
    # masked scores get no gradient (as through jnp.where), also on rows with no key at all
    ds = jnp.where(keep, probs * (dp - row) * scale, 0.0).astype(qg.dtype)
    dq = jnp.einsum("bkqs,bksd->bkqd", ds, kh)
    dk = jnp.einsum("bkqs,bkqd->bksd", ds, qg)
    return _ungrouped(dq, t), dk.transpose(0, 2, 1, 3), dv.transpose(0, 2, 1, 3), None


gqa_attention.defvjp(_attention_forward, _attention_backward)
