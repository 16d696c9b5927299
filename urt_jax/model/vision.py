"""The Qwen2.5-VL vision tower: patch embedding, 2D RoPE, window/full attention blocks, merger.

Input pixel rows stay in the processor's block-major order throughout (see vision_layout.py for
how the window attention of transformers is reproduced without permuting the sequence), so the
merger output is already in the order of the placeholder tokens.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from urt_jax.model.attention import segment_attention
from urt_jax.model.config import VisionConfig
from urt_jax.model.kernels import apply_rotary
from urt_jax.model.layers import Dense, DTypePolicy, GatedMLP, RMSNorm
from urt_jax.model.remat import call_block
from urt_jax.model.rope import vision_cos_sin


class VisionAttention(nnx.Module):
    def __init__(self, cfg: VisionConfig, policy: DTypePolicy, rngs: nnx.Rngs, kernels: str):
        self.kernels = kernels
        self.num_heads = cfg.num_heads
        self.head_dim = cfg.head_dim
        d = cfg.hidden_size
        kw = dict(use_bias=True, policy=policy, rngs=rngs, kernels=kernels)
        self.qkv = Dense(d, 3 * d, axes=("vision_embed", "vision_heads"), **kw)
        self.proj = Dense(d, d, axes=("vision_heads", "vision_embed"), **kw)

    def __call__(
        self, x: jax.Array, cos: jax.Array, sin: jax.Array, segments: jax.Array
    ) -> jax.Array:
        n = x.shape[0]
        qkv = self.qkv(x).reshape(n, 3, self.num_heads, self.head_dim)
        q, k, v = qkv[:, 0], qkv[:, 1], qkv[:, 2]
        # RoPE in fp32 (as transformers), then back to the activation dtype.
        c, s = cos[:, None, :], sin[:, None, :]
        q = apply_rotary(q.astype(jnp.float32), c, s).astype(x.dtype)
        k = apply_rotary(k.astype(jnp.float32), c, s).astype(x.dtype)
        # Gather each segment's patches; index n is an appended zero row used as padding.
        valid = segments < n
        zero = jnp.zeros((1, self.num_heads, self.head_dim), x.dtype)
        qs, ks, vs = (jnp.concatenate([a, zero])[segments] for a in (q, k, v))  # [S, L, H, D]
        o = segment_attention(qs, ks, vs, valid, self.head_dim**-0.5, self.kernels)
        out = jnp.zeros((n + 1, self.num_heads, self.head_dim), o.dtype).at[segments].set(o)
        return self.proj(out[:n].reshape(n, -1))


class VisionBlock(nnx.Module):
    def __init__(self, cfg: VisionConfig, policy: DTypePolicy, rngs: nnx.Rngs, kernels: str):
        norm = dict(eps=cfg.norm_eps, axis_name="vision_norm", policy=policy)
        self.norm1 = RMSNorm(cfg.hidden_size, **norm)
        self.norm2 = RMSNorm(cfg.hidden_size, **norm)
        self.attn = VisionAttention(cfg, policy, rngs, kernels)
        self.mlp = GatedMLP(
            cfg.hidden_size,
            cfg.intermediate_size,
            use_bias=True,
            act=cfg.hidden_act,
            axes=("vision_embed", "vision_mlp"),
            policy=policy,
            rngs=rngs,
            kernels=kernels,
        )

    def __call__(self, x, cos, sin, segments):
        x = x + self.attn(self.norm1(x), cos, sin, segments)
        return x + self.mlp(self.norm2(x))


class PatchEmbed(nnx.Module):
    """Conv3d with kernel = stride = (T, p, p) on pre-cut patches, i.e. a matmul by the
    flattened kernel [C*T*p*p, D] (rows in (C, T, ph, pw) order, as the processor flattens)."""

    def __init__(self, cfg: VisionConfig, policy: DTypePolicy, rngs: nnx.Rngs, kernels: str):
        self.proj = Dense(
            cfg.patch_dim,
            cfg.hidden_size,
            use_bias=False,
            axes=("vision_patch", "vision_embed"),
            policy=policy,
            rngs=rngs,
            kernels=kernels,
        )

    def __call__(self, pixels: jax.Array) -> jax.Array:
        # transformers casts pixels to the weight dtype before the conv.
        return self.proj(pixels.astype(self.proj.kernel.dtype))


class PatchMerger(nnx.Module):
    def __init__(self, cfg: VisionConfig, policy: DTypePolicy, rngs: nnx.Rngs, kernels: str):
        self.unit = cfg.merge_unit
        ctx = cfg.hidden_size * cfg.merge_unit
        self.ln_q = RMSNorm(
            cfg.hidden_size, eps=cfg.norm_eps, axis_name="vision_norm", policy=policy
        )
        kw = dict(use_bias=True, policy=policy, rngs=rngs, kernels=kernels)
        self.fc1 = Dense(ctx, ctx, axes=("vision_merge", "vision_mlp"), **kw)
        self.fc2 = Dense(ctx, cfg.out_hidden_size, axes=("vision_mlp", "embed"), **kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = self.ln_q(x).reshape(x.shape[0] // self.unit, -1)
        return self.fc2(jax.nn.gelu(self.fc1(x), approximate=False))


class VisionTower(nnx.Module):
    def __init__(
        self,
        cfg: VisionConfig,
        policy: DTypePolicy,
        rngs: nnx.Rngs,
        remat: str = "none",
        kernels: str = "cpu",
    ):
        self.cfg = cfg
        self.remat = remat
        self.patch_embed = PatchEmbed(cfg, policy, rngs, kernels)
        self.blocks = nnx.List([VisionBlock(cfg, policy, rngs, kernels) for _ in range(cfg.depth)])
        self.merger = PatchMerger(cfg, policy, rngs, kernels)

    def __call__(
        self,
        pixel_values: jax.Array,
        rot_pos: jax.Array,
        window_index: jax.Array,
        frame_index: jax.Array,
    ) -> jax.Array:
        """Merged features [Np / merge_unit, out_hidden_size] in placeholder-token order."""
        x = self.patch_embed(pixel_values)
        cos, sin = vision_cos_sin(rot_pos, self.cfg.head_dim, self.cfg.rope_theta)
        full = set(self.cfg.fullatt_block_indexes)
        for i, block in enumerate(self.blocks):
            segments = frame_index if i in full else window_index
            x = call_block(block, self.remat, x, cos, sin, segments)
        return self.merger(x)
