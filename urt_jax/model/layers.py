"""Building blocks shared by the vision tower and the text decoder, and the dtype policy.

Parameters carry ``logical_axes`` metadata (one name per dimension); urt_jax.sharding maps those
names to mesh axes with a single rules table.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from urt_jax.model.kernels import linear, masked_softmax, swiglu

_DTYPES = {
    "float32": jnp.float32,
    "fp32": jnp.float32,
    "bfloat16": jnp.bfloat16,
    "bf16": jnp.bfloat16,
    "float16": jnp.float16,
    "fp16": jnp.float16,
}
DTYPE_NAMES = tuple(_DTYPES)


def to_dtype(name: str | jnp.dtype) -> jnp.dtype:
    if isinstance(name, str):
        if name not in _DTYPES:
            raise ValueError(f"unknown dtype {name!r}; expected one of {sorted(_DTYPES)}")
        return jnp.dtype(_DTYPES[name])
    return jnp.dtype(name)


@dataclasses.dataclass(frozen=True)
class DTypePolicy:
    """Storage dtype of parameters and dtype of activations/matmuls.

    ``float32``: fp32 everywhere (parity). ``bfloat16``: bf16 params and compute, as transformers
    runs a bf16 checkpoint. ``mixed_bfloat16``: fp32 master params, bf16 compute (training).
    Softmax, RMSNorm statistics and the vision RoPE always run in fp32, as in transformers.
    """

    param_dtype: jnp.dtype = jnp.float32
    compute_dtype: jnp.dtype = jnp.float32

    @classmethod
    def parse(cls, spec: str | DTypePolicy | None, default: str = "float32") -> DTypePolicy:
        if isinstance(spec, DTypePolicy):
            return spec
        spec = spec or default
        if spec in ("mixed_bfloat16", "mixed_bf16"):
            return cls(jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16))
        d = to_dtype(spec)
        return cls(d, d)


ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "silu": jax.nn.silu,
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "relu": jax.nn.relu,
}


def _normal(rngs: nnx.Rngs, shape: tuple[int, ...], dtype: jnp.dtype, std: float) -> jax.Array:
    return (std * jax.random.normal(rngs.params(), shape, jnp.float32)).astype(dtype)


class Dense(nnx.Module):
    """``y = x @ kernel + bias`` with kernel [in, out] (the transpose of torch's Linear.weight),
    or [out, in] once ``transpose_kernel`` has run (the sampler's decode copy); a stacked kernel
    has the layer axis first."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        use_bias: bool,
        axes: tuple[str | None, str | None],
        policy: DTypePolicy,
        rngs: nnx.Rngs,
        std: float = 0.02,
        kernels: str = "cpu",
    ):
        self.policy = policy
        self.cpu_layout = kernels == "cpu"  # kernels.tokens_major's copy in the backward
        self.kernel = nnx.Param(
            _normal(rngs, (in_features, out_features), policy.param_dtype, std), logical_axes=axes
        )
        self.bias = (
            nnx.Param(jnp.zeros((out_features,), policy.param_dtype), logical_axes=(axes[1],))
            if use_bias
            else None
        )
        self.kernel_out_in = False

    def transpose_kernel(self) -> None:
        """Stores the kernel transposed ([in, out] <-> [out, in], logical axes swapped with it);
        the matmul follows, so the outputs stay the same. Used on the sampler's copy of the model
        (``urt_jax.generate.sampler.sample``'s ``out_in_kernels``)."""
        axes = self.kernel.get_metadata().get("logical_axes")
        swapped = None if axes is None else (*axes[:-2], axes[-1], axes[-2])
        self.kernel = nnx.Param(jnp.swapaxes(self.kernel[...], -1, -2), logical_axes=swapped)
        self.kernel_out_in = not self.kernel_out_in

    def __call__(self, x: jax.Array) -> jax.Array:
        dt = self.policy.compute_dtype
        kernel = self.kernel[...].astype(dt)
        if self.kernel_out_in:
            y = jnp.einsum("...i,oi->...o", x.astype(dt), kernel)
        else:
            y = linear(x.astype(dt), kernel, self.cpu_layout)
        if self.bias is not None:
            y = y + self.bias[...].astype(dt)
        return y


class GatedMLP(nnx.Module):
    """``down(act(gate(x)) * up(x))``: the SwiGLU MLP of the decoder and of the vision blocks."""

    def __init__(
        self,
        dim: int,
        hidden: int,
        *,
        use_bias: bool,
        act: str,
        axes: tuple[str, str],
        policy: DTypePolicy,
        rngs: nnx.Rngs,
        kernels: str = "cpu",
    ):
        kw = dict(use_bias=use_bias, policy=policy, rngs=rngs, kernels=kernels)
        self.gate_proj = Dense(dim, hidden, axes=axes, **kw)
        self.up_proj = Dense(dim, hidden, axes=axes, **kw)
        self.down_proj = Dense(hidden, dim, axes=(axes[1], axes[0]), **kw)
        self.act = ACTIVATIONS[act]
        self.fused = act == "silu" and not use_bias  # the text decoder's MLP
        self.policy = policy

    def __call__(self, x: jax.Array) -> jax.Array:
        if self.fused and not self.gate_proj.kernel_out_in:
            # same forward, backward written out (urt_jax.model.kernels)
            dt = self.policy.compute_dtype
            kernels = (self.gate_proj, self.up_proj, self.down_proj)
            weights = (m.kernel[...].astype(dt) for m in kernels)
            return swiglu(x.astype(dt), *weights, self.gate_proj.cpu_layout)
        return self.down_proj(self.act(self.gate_proj(x)) * self.up_proj(x))


class RMSNorm(nnx.Module):
    """transformers' Qwen2RMSNorm: statistics in fp32, cast back to the input dtype, then the
    weight multiply (so in bf16 the multiply itself happens in bf16)."""

    def __init__(self, dim: int, *, eps: float, axis_name: str, policy: DTypePolicy):
        self.eps = eps
        self.policy = policy
        self.weight = nnx.Param(jnp.ones((dim,), policy.param_dtype), logical_axes=(axis_name,))

    def __call__(self, x: jax.Array) -> jax.Array:
        in_dtype = x.dtype
        xf = x.astype(jnp.float32)
        var = jnp.mean(xf * xf, axis=-1, keepdims=True)
        normed = (xf * jax.lax.rsqrt(var + self.eps)).astype(in_dtype)
        return self.weight[...].astype(self.policy.compute_dtype) * normed


class Embed(nnx.Module):
    def __init__(self, vocab_size: int, dim: int, *, policy: DTypePolicy, rngs: nnx.Rngs):
        self.policy = policy
        self.embedding = nnx.Param(
            _normal(rngs, (vocab_size, dim), policy.param_dtype, 0.02),
            logical_axes=("vocab", "embed"),
        )

    def __call__(self, ids: jax.Array) -> jax.Array:
        return jnp.take(self.embedding[...], ids, axis=0).astype(self.policy.compute_dtype)

    def attend(self, x: jax.Array) -> jax.Array:
        """Tied output projection: logits = x @ embedding.T."""
        dt = self.policy.compute_dtype
        return jnp.dot(x.astype(dt), self.embedding[...].astype(dt).T)


def masked_softmax_attention(
    q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array, scale: float, spec: str
) -> jax.Array:
    """Eager-equivalent attention: (q.k)*scale, mask, softmax in fp32, cast, weights.v.

    ``spec`` is the einsum for scores, e.g. 'bqhd,bkhd->bhqk'; the value einsum is derived from it,
    with ``v`` labelled like ``k``. ``mask`` is boolean and broadcast against the scores
    (True = attend).
    """
    lhs, out = spec.split("->")
    qs, ks = lhs.split(",")
    scores = jnp.einsum(spec, q, k) * jnp.asarray(scale, q.dtype)
    probs = masked_softmax(scores, mask).astype(v.dtype)
    # probs carry `out` labels; the result has qs labels.
    return jnp.einsum(f"{out},{ks}->{qs}", probs, v)
