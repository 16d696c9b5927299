"""The Qwen2 text decoder of Qwen2.5-VL: GQA attention with q/k/v bias and M-RoPE, SwiGLU MLP."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from urt_jax.model.attention import causal_attention
from urt_jax.model.config import TextConfig
from urt_jax.model.kernels import apply_rotary, masked_softmax
from urt_jax.model.layers import (
    Dense,
    DTypePolicy,
    Embed,
    GatedMLP,
    RMSNorm,
)
from urt_jax.model.remat import call_block
from urt_jax.sharding.rules import constrain


class Attention(nnx.Module):
    def __init__(self, cfg: TextConfig, policy: DTypePolicy, rngs: nnx.Rngs, kernels: str = "cpu"):
        self.kernels = kernels  # "cpu" | "tpu" | "gpu": the attention implementation
        self.num_heads = cfg.num_attention_heads
        self.num_kv_heads = cfg.num_key_value_heads
        self.head_dim = cfg.head_dim
        d, hd = cfg.hidden_size, cfg.head_dim
        kw = dict(policy=policy, rngs=rngs, kernels=kernels)
        self.q_proj = Dense(d, self.num_heads * hd, use_bias=True, axes=("embed", "q_heads"), **kw)
        self.k_proj = Dense(
            d, self.num_kv_heads * hd, use_bias=True, axes=("embed", "kv_heads"), **kw
        )
        self.v_proj = Dense(
            d, self.num_kv_heads * hd, use_bias=True, axes=("embed", "kv_heads"), **kw
        )
        self.o_proj = Dense(self.num_heads * hd, d, use_bias=False, axes=("q_heads", "embed"), **kw)

    def project_qkv(
        self, x: jax.Array, cos: jax.Array, sin: jax.Array
    ) -> tuple[jax.Array, jax.Array, jax.Array]:
        """q [B, T, H, D], k and v [B, T, KV, D], with RoPE applied to q and k."""
        b, t, _ = x.shape
        q = self.q_proj(x).reshape(b, t, self.num_heads, self.head_dim)
        k = self.k_proj(x).reshape(b, t, self.num_kv_heads, self.head_dim)
        v = self.v_proj(x).reshape(b, t, self.num_kv_heads, self.head_dim)
        c, s = cos[:, :, None, :], sin[:, :, None, :]
        return apply_rotary(q, c, s), apply_rotary(k, c, s), v

    def attend(self, q: jax.Array, k: jax.Array, v: jax.Array, valid: jax.Array) -> jax.Array:
        """Causal GQA self-attention (``attention.causal_attention`` with this layer's kernels).
        q [B, T, H, D]; k, v [B, T, KV, D]; valid [B, T] bool, False at padding.

        Query head h uses kv head h // (H / KV), as transformers' repeat_kv.
        """
        b, tq, _, d = q.shape
        o = causal_attention(q, k, v, valid, d**-0.5, self.kernels)
        return self.o_proj(o.reshape(b, tq, self.num_heads * d))

    def attend_cache(
        self, q: jax.Array, cache: KVCache, prompt_mask: jax.Array, new_valid: jax.Array
    ) -> jax.Array:
        """GQA attention of one new token per row, q [R, 1, H, D], over ``cache``: its prompt's
        keys (prompt_mask [B, T] bool) and its row's generated ones (new_valid [N] bool, the
        same slots for every row)."""
        r, tq, _, d = q.shape
        if tq != 1:
            raise ValueError(f"attend_cache decodes one token per row, got {tq}")
        o = shared_prompt_attention(q, cache, prompt_mask, new_valid, d**-0.5)
        return self.o_proj(o.reshape(r, 1, self.num_heads * d))


class KVCache(NamedTuple):
    """One decoder layer's keys and values for sampling G completions of each of B prompts: the
    prompts' once, prompt_k [B, KV, D, T] and prompt_v [B, KV, T, D], which the G rows of a
    prompt share, and each row's generated tokens', k [B*G, KV, D, N] and v [B*G, KV, N, D]
    (rows prompt-major: row i*G + j is sample j of prompt i).

    Shared, the prompt's part is neither stored nor read G times: a decode step streams the
    whole cache, and the prompt is most of it in GRPO (long multimodal prompts, G = 8). Keys
    [D, S] and values [S, D] are laid out for the decode step's matmuls (as [S, KV, D], as the
    projections give them, the whole cache would be transposed at every decoded token). In the
    sampler every array has a leading layer axis (one stacked cache, ``TextModel.prefill``).
    """

    prompt_k: jax.Array
    prompt_v: jax.Array
    k: jax.Array
    v: jax.Array

    @classmethod
    def from_prefill(cls, k: jax.Array, v: jax.Array, num_samples: int, new_slots: int) -> KVCache:
        """The cache of prompts' keys/values [B, T, KV, D], with ``new_slots`` empty slots for
        each of their ``num_samples`` rows."""
        b, _, kv, d = k.shape
        rows = b * num_samples
        return cls(
            k.transpose(0, 2, 3, 1),
            v.transpose(0, 2, 1, 3),
            jnp.zeros((rows, kv, d, new_slots), k.dtype),
            jnp.zeros((rows, kv, new_slots, d), v.dtype),
        )

    def write(self, k: jax.Array, v: jax.Array, index: jax.Array, layer=None) -> KVCache:
        """Generated keys/values [B*G, T, KV, D] written at new slots index..index+T-1; of
        ``layer`` in a stacked cache (every array with a leading layer axis), only the new
        slots written, in place."""
        k = k.transpose(0, 2, 3, 1).astype(self.k.dtype)
        v = v.transpose(0, 2, 1, 3).astype(self.v.dtype)
        if layer is None:
            return self._replace(
                k=jax.lax.dynamic_update_slice_in_dim(self.k, k, index, axis=3),
                v=jax.lax.dynamic_update_slice_in_dim(self.v, v, index, axis=2),
            )
        zero = jnp.zeros((), jnp.int32)
        return self._replace(
            k=jax.lax.dynamic_update_slice(self.k, k[None], (layer, zero, zero, zero, index)),
            v=jax.lax.dynamic_update_slice(self.v, v[None], (layer, zero, zero, index, zero)),
        )

    def layer(self, index: jax.Array) -> KVCache:
        """One layer's cache out of a stacked one."""
        return KVCache(*(jax.lax.dynamic_index_in_dim(a, index, 0, keepdims=False) for a in self))


def shared_prompt_attention(
    q: jax.Array, cache: KVCache, prompt_mask: jax.Array, new_valid: jax.Array, scale: float
) -> jax.Array:
    """Eager-equivalent attention (scores scaled, masked, softmax in fp32 over the prompt's and
    the generated keys together) of q [B*G, 1, H, D] over ``cache``, returning [B*G, 1, H, D].

    The prompt's part is one matmul per prompt and KV head with the queries of its G rows and
    the head's query group as rows (G * H / KV of them); the generated part one per row."""
    rows, _, h, d = q.shape
    b, kv, _, t = cache.prompt_k.shape
    g, groups = rows // b, h // kv

    def by_prompt(x):  # [B*G, KV, groups, ...] -> [B, KV, G*groups, ...]
        x = x.reshape(b, g, kv, groups, *x.shape[3:]).transpose(0, 2, 1, 3, 4)
        return x.reshape(b, kv, g * groups, *x.shape[4:])

    def by_row(x):  # the inverse
        x = x.reshape(b, kv, g, groups, *x.shape[3:]).transpose(0, 2, 1, 3, 4)
        return x.reshape(rows, kv, groups, *x.shape[4:])

    q = q.reshape(rows, kv, groups, d)
    scale = jnp.asarray(scale, q.dtype)
    prompt_scores = by_row(jnp.einsum("bkmd,bkds->bkms", by_prompt(q), cache.prompt_k) * scale)
    new_scores = jnp.einsum("rkgd,rkds->rkgs", q, cache.k) * scale
    scores = jnp.concatenate([prompt_scores, new_scores], axis=-1)
    valid = jnp.concatenate(
        [jnp.repeat(prompt_mask, g, axis=0), jnp.broadcast_to(new_valid, (rows, new_valid.size))],
        axis=-1,
    )
    probs = masked_softmax(scores, valid[:, None, None, :]).astype(cache.v.dtype)
    from_prompt = jnp.einsum("bkms,bksd->bkmd", by_prompt(probs[..., :t]), cache.prompt_v)
    from_new = jnp.einsum("rkgs,rksd->rkgd", probs[..., t:], cache.v)
    return (by_row(from_prompt) + from_new).reshape(rows, 1, h, d)


class DecoderLayer(nnx.Module):
    def __init__(self, cfg: TextConfig, policy: DTypePolicy, rngs: nnx.Rngs, kernels: str = "cpu"):
        norm = dict(eps=cfg.rms_norm_eps, axis_name="norm", policy=policy)
        self.input_layernorm = RMSNorm(cfg.hidden_size, **norm)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, **norm)
        self.self_attn = Attention(cfg, policy, rngs, kernels)
        self.mlp = GatedMLP(
            cfg.hidden_size,
            cfg.intermediate_size,
            use_bias=False,
            act=cfg.hidden_act,
            axes=("embed", "mlp"),
            policy=policy,
            rngs=rngs,
            kernels=kernels,
        )

    def __call__(self, x, cos, sin, valid):
        return self.step(x, cos, sin, valid)[0]

    def step(self, x, cos, sin, valid):
        """The layer, also returning the keys and values [B, T, KV, D] it attended to."""
        q, k, v = self.self_attn.project_qkv(self.input_layernorm(x), cos, sin)
        x = x + self.self_attn.attend(q, k, v, valid)
        return x + self.mlp(self.post_attention_layernorm(x)), (k, v)

    def decode(self, x, cos, sin, cache: KVCache, prompt_mask, index, layer=None):
        """The layer for one new token a row, x [B*G, 1, D], at generated slot ``index``: its
        keys and values are written to ``cache`` (this layer's, or with ``layer`` set, a
        stacked cache of every layer), and attention reads the prompt's (prompt_mask [B, T])
        and the slots up to ``index``. Returns the output and the updated cache."""
        q, k, v = self.self_attn.project_qkv(self.input_layernorm(x), cos, sin)
        cache = cache.write(k, v, index, layer)
        mine = cache if layer is None else cache.layer(layer)
        new_valid = jnp.arange(mine.v.shape[2]) <= index
        x = x + self.self_attn.attend_cache(q, mine, prompt_mask, new_valid)
        return x + self.mlp(self.post_attention_layernorm(x)), cache


# The decoder's layer parameters are stored stacked, [num_layers, ...] under
# ``language_model.layers`` (logical axis "layers" first), and the layers run as a ``lax.scan``:
# one layer compiled once, and on a mesh one layer's gathered weights and gradients live at a
# time (an unrolled loop let XLA keep every layer's live: the 7B plan's "as compiled" column).
LAYER_AXIS = "layers"
ACTIVATION_AXES = ("batch", "length", "hidden")  # the residual stream between layers
STACKED_PATH = ("language_model", "layers")  # where, from the model's root, the stack lives


def stacked_dims(path: tuple) -> int:
    """1 for a parameter of the stacked decoder layers (its path from the model's root, as
    nnx state paths or jax key paths give it), else 0."""
    names = tuple(getattr(k, "key", getattr(k, "name", k)) for k in path[: len(STACKED_PATH)])
    return int(names == STACKED_PATH)


def _stack_layers(layers: list[DecoderLayer]) -> DecoderLayer:
    """One DecoderLayer whose every parameter is the layers' stacked along a new first axis."""
    graphdef = nnx.graphdef(layers[0])
    states = [nnx.state(layer) for layer in layers]

    def stack(*variables):
        first = variables[0]
        axes = first.get_metadata().get("logical_axes")
        value = jnp.stack([v.get_value() for v in variables])
        return first.replace(value, logical_axes=None if axes is None else (LAYER_AXIS, *axes))

    stacked = jax.tree.map(stack, *states, is_leaf=lambda x: isinstance(x, nnx.Variable))
    return nnx.merge(graphdef, stacked)


class TextModel(nnx.Module):
    def __init__(
        self,
        cfg: TextConfig,
        policy: DTypePolicy,
        rngs: nnx.Rngs,
        remat: str = "none",
        kernels: str = "cpu",
    ):
        self.remat = remat
        self.kernels = kernels
        self.num_layers = cfg.num_hidden_layers
        # layers per iteration of the scan; None: all of them on XLA:CPU, else 1 (see __call__)
        self.scan_unroll: int | None = None
        self.embed_tokens = Embed(cfg.vocab_size, cfg.hidden_size, policy=policy, rngs=rngs)
        self.layers = _stack_layers(
            [DecoderLayer(cfg, policy, rngs, kernels) for _ in range(cfg.num_hidden_layers)]
        )
        self.norm = RMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps, axis_name="norm", policy=policy)

    def __call__(self, x: jax.Array, cos: jax.Array, sin: jax.Array, valid: jax.Array) -> jax.Array:
        """Final-norm hidden states [B, T, D] from input embeddings [B, T, D]; valid [B, T] bool
        is False at padding."""
        graphdef, state = nnx.split(self.layers)

        def one_layer(x, layer_state):
            layer = nnx.merge(graphdef, layer_state)
            x = call_block(layer, self.remat, constrain(x, ACTIVATION_AXES), cos, sin, valid)
            return constrain(x, ACTIVATION_AXES), None

        # Unrolled on XLA:CPU, where the rolled loop's slices of the stack and its stacked
        # residuals are copies; as fast unrolled as separate layers there, and on one host the
        # memory a rolled loop saves does not matter. Rolled
        # for TPU and GPU: one layer's weights and gradients live at a time.
        unroll = self.scan_unroll or (self.num_layers if self.kernels == "cpu" else 1)
        x, _ = jax.lax.scan(one_layer, x, state, unroll=unroll)
        return self.norm(x)

    def prefill(self, x, cos, sin, valid, num_samples: int, new_slots: int):
        """The layers over a prompt batch (hidden states [B, T, D] before the final norm) and
        their stacked cache (``KVCache`` with a leading layer axis): the prompts' keys and
        values, and ``new_slots`` empty slots for each of their ``num_samples`` rows."""
        graphdef, state = nnx.split(self.layers)

        def one_layer(x, layer_state):
            x, (k, v) = nnx.merge(graphdef, layer_state).step(x, cos, sin, valid)
            return x, KVCache.from_prefill(k, v, num_samples, new_slots)

        return jax.lax.scan(one_layer, x, state)

    def decode(self, x, cos, sin, cache: KVCache, prompt_mask, index):
        """One new token a row through the stacked layers (a scan, reading each layer's weights
        out of the stack) with the stacked ``cache`` of ``prefill``, updated in place."""
        graphdef, state = nnx.split(self.layers)

        def one_layer(carry, xs):
            x, cache = carry
            layer_state, layer = xs
            layer_module = nnx.merge(graphdef, layer_state)
            return layer_module.decode(x, cos, sin, cache, prompt_mask, index, layer), None

        layers = jnp.arange(self.num_layers, dtype=jnp.int32)
        (x, cache), _ = jax.lax.scan(one_layer, (x, cache), (state, layers))
        return x, cache
