"""KV-cache sampling with batched group sampling.

Prompts (left- or right-padded) are moved to left padding on the host, so every row's prompt ends
at the same position and decoding writes one static cache slot per step. The prompt is prefilled
once (images and videos encoded once) and its keys and values are kept once, shared by its G rows
(rows prompt-major: row i*G + j is sample j of prompt i; ``KVCache``), and a
``jax.lax.while_loop`` decodes over a static cache of the generated tokens until every row has
emitted an end token or the budget is spent. M-RoPE decode positions are
"real tokens so far + rope delta" on all three axes, as in transformers.

Returned log-probabilities are those of the chosen tokens under the model's unmodified
distribution (temperature 1, no top-k/top-p): the quantity GRPO needs for its ratios and KL.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from urt_jax.data.batching import pow2_at_least
from urt_jax.model.inputs import ModelInputs, prepare_inputs
from urt_jax.model.kernels import CPU_WORKAROUND
from urt_jax.model.layers import Dense
from urt_jax.model.qwen2_5_vl import Qwen25VL
from urt_jax.model.rope import mrope_cos_sin
from urt_jax.model.text import KVCache
from urt_jax.sharding.mesh import batch_ways, put_whole, to_host

# Prompt lengths a batch is left-padded to, each a program of its own: steps of 1.5x and 4/3x
# (at most two programs an octave) and multiples of the accelerator attention's 128-token tile.
PROMPT_BUCKETS = (64, 128, 256, 384, 512, 768, 1024, 1536, 2048, 3072, 4096, 6144, 8192)


@dataclasses.dataclass
class SampleOutput:
    tokens: np.ndarray  # [B*G, max_new_tokens], pad_id after a row's end
    logprobs: np.ndarray  # [B*G, max_new_tokens], 0 after a row's end
    lengths: np.ndarray  # [B*G] generated tokens including the end token
    prompt_ids: np.ndarray  # [B, P] the prompts as decoded from: left-padded to a bucket
    prompt_mask: np.ndarray  # [B, P]


def prompt_bucket(n: int, buckets: Sequence[int] = PROMPT_BUCKETS) -> int:
    """The length a prompt of ``n`` tokens is padded to: the first bucket that holds it, past
    the last a multiple of the last."""
    for b in buckets:
        if n <= b:
            return b
    return -(-n // buckets[-1]) * buckets[-1]


def _to_left_padding(
    ids: np.ndarray, mask: np.ndarray, length: int, pad_id: int
) -> tuple[np.ndarray, np.ndarray]:
    out_ids = np.full((ids.shape[0], length), pad_id, np.int64)
    out_mask = np.zeros((ids.shape[0], length), np.int64)
    for i in range(ids.shape[0]):
        row = ids[i][mask[i].astype(bool)]
        out_ids[i, length - len(row) :] = row
        out_mask[i, length - len(row) :] = 1
    return out_ids, out_mask


def _filter_logits(logits: jax.Array, top_k: int, top_p: float) -> jax.Array:
    neg = jnp.finfo(logits.dtype).min
    if top_k > 0:
        kth = jax.lax.top_k(logits, top_k)[0][..., -1:]
        logits = jnp.where(logits < kth, neg, logits)
    if top_p < 1.0:
        probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
        bits = jax.lax.bitcast_convert_type(probs, jnp.int32)
        logits = jnp.where(bits < _nucleus_floor(probs, bits, top_p), neg, logits)
    return logits


def _nucleus_floor(probs: jax.Array, bits: jax.Array, top_p: float) -> jax.Array:
    """[R, 1]: the bit pattern of the smallest probability the nucleus keeps. The nucleus is
    the smallest set of most probable tokens whose mass reaches top_p, i.e. every token whose
    probability is at least the largest t with sum(p[p >= t]) >= top_p. t is found by
    bisection over the bits of float32 (non-negative floats order as their bit patterns):
    31 vocabulary-wide masked sums, exact, and no sort (a vocabulary-wide sort per step
    costs far more, on a CPU above all)."""
    rows = probs.shape[0]
    low = jnp.zeros((rows, 1), jnp.int32)  # t = 0 keeps everything: mass 1 >= top_p
    high = jnp.max(bits, axis=-1, keepdims=True) + 1  # keeps nothing: mass 0 < top_p

    def halve(_, bounds):
        low, high = bounds
        mid = low + (high - low) // 2
        mass = jnp.sum(jnp.where(bits >= mid, probs, 0.0), axis=-1, keepdims=True)
        reaches = mass >= top_p
        return jnp.where(reaches, mid, low), jnp.where(reaches, high, mid)

    low, _ = jax.lax.fori_loop(0, 31, halve, (low, high))
    return low


def _choose(
    logits: jax.Array,
    key: jax.Array,
    temperature: float,
    top_k: int,
    top_p: float,
    suppress: tuple[int, ...],
    cpu_sampler: bool,
) -> jax.Array:
    """The token of each row: the argmax at temperature 0, else a draw from the filtered
    distribution, by ``inverse_cdf_sample`` on XLA:CPU (``cpu_sampler``), by Gumbel-max
    (``jax.random.categorical``) elsewhere."""
    if suppress:  # never drawn, never the argmax
        logits = logits.at[:, jnp.asarray(suppress)].set(jnp.finfo(logits.dtype).min)
    if temperature == 0.0:
        return jnp.argmax(logits, axis=-1)
    filtered = _filter_logits(logits / temperature, top_k, top_p)
    if not cpu_sampler:
        return jax.random.categorical(key, filtered, axis=-1)
    with jax.named_scope(CPU_WORKAROUND):
        return inverse_cdf_sample(key, filtered)


def inverse_cdf_sample(key: jax.Array, logits: jax.Array, block: int = 128) -> jax.Array:
    """One draw per row from softmax(logits [R, V]) by inverting its cumulative distribution.

    One uniform per row: ``jax.random.categorical`` (Gumbel-max) draws one per vocabulary entry,
    and at a 32k vocabulary its random bits cost about 7x this on a CPU. The inversion is done
    in two levels, first over the masses of blocks of ``block`` entries and then inside the
    chosen block, so that no cumulative sum runs over the whole vocabulary (a vocabulary-long
    cumsum is a slow reduce-window on XLA:CPU).
    Entries whose probability is 0 (filtered by top-k / top-p) are never drawn.
    """
    logits = logits.astype(jnp.float32)
    rows, vocab = logits.shape
    probs = jnp.exp(logits - jnp.max(logits, axis=-1, keepdims=True))
    blocks = -(-vocab // block)
    probs = jnp.pad(probs, ((0, 0), (0, blocks * block - vocab))).reshape(rows, blocks, block)
    block_mass = jnp.sum(probs, axis=-1)  # [R, blocks]
    block_cdf = jnp.cumsum(block_mass, axis=-1)
    u = jax.random.uniform(key, (rows, 1), jnp.float32) * block_cdf[:, -1:]
    chosen = _first_past(block_cdf, u, block_mass)
    inside = jnp.take_along_axis(probs, chosen[:, None, None], axis=1)[:, 0]  # [R, block]
    previous = jnp.maximum(chosen - 1, 0)[:, None]
    before = jnp.where(chosen[:, None] > 0, jnp.take_along_axis(block_cdf, previous, 1), 0.0)
    index = _first_past(before + jnp.cumsum(inside, axis=-1), u, inside)
    return chosen * block + index


def _first_past(cdf: jax.Array, u: jax.Array, mass: jax.Array) -> jax.Array:
    """Per row, the first entry of ``cdf`` [R, N] above ``u`` [R, 1], never one whose ``mass``
    is 0 (rounding can put u at or past the total: the last entry with mass is taken then)."""
    ids = jnp.arange(cdf.shape[-1])
    last = jnp.max(jnp.where(mass > 0, ids, 0), axis=-1)
    return jnp.minimum(jnp.sum(cdf <= u, axis=-1), last)


def _in_compute_dtype(state, policy):
    """The parameters cast once to the dtype every use casts them to (``DTypePolicy``): the same
    computation, but the weights the sampler reads at every decoded token are compute-dtype
    copies, half the bytes of fp32 master weights under mixed_bfloat16, and no weight is cast
    again at each decoded token."""
    return jax.tree.map(
        lambda a: a.astype(policy.compute_dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a,
        state,
    )


def _transpose_decoder_kernels(model: Qwen25VL) -> None:
    """The LM head's kernel and the text decoder's wide ones (more outputs than inputs: gate and
    up) stored [out, in] (``Dense.transpose_kernel``), on the traced copy of the model inside
    ``_sample_jit``. A decode step multiplies a few rows (prompts x G) by every weight, streaming
    the weights from memory, and XLA:CPU's matmul at a few rows reads a wide [out, in] weight
    faster than an [in, out] one (the others: no faster). A tied LM head (the embedding, [V, D])
    is [out, in] already. The copies cost memory for the call: the LM head, gate and up again."""
    wide = [
        module
        for _, module in nnx.iter_modules(model.language_model.layers)
        if isinstance(module, Dense) and module.kernel.shape[-1] > module.kernel.shape[-2]
    ]
    for module in wide + ([] if model.lm_head is None else [model.lm_head]):
        module.transpose_kernel()


def _prefill(model: Qwen25VL, inputs: ModelInputs, num_samples: int, new_slots: int):
    """Hidden state of the last prompt position and the decoder's stacked cache: the prompts'
    keys and values once, and ``new_slots`` empty slots for each of their ``num_samples``
    rows."""
    x = model.embed(inputs)
    cos, sin = mrope_cos_sin(inputs.position_ids, model.config, x.dtype)
    valid = inputs.attention_mask.astype(bool)
    x, cache = model.language_model.prefill(x, cos, sin, valid, num_samples, new_slots)
    return model.language_model.norm(x[:, -1:]), cache


def _decode_one(
    model: Qwen25VL,
    token: jax.Array,
    position: jax.Array,
    cache: KVCache,
    index,
    prompt_mask: jax.Array,
):
    """One decoding step for tokens [R] at M-RoPE position [R]; writes generated slot ``index``
    of every row. prompt_mask [B, T]: the prompts' real (not padding) positions."""
    x = model.language_model.embed_tokens(token[:, None])
    pos = jnp.broadcast_to(position[None, :, None], (3, token.shape[0], 1))
    cos, sin = mrope_cos_sin(pos, model.config, x.dtype)
    x, cache = model.language_model.decode(x, cos, sin, cache, prompt_mask, index)
    return model.logits(model.language_model.norm(x))[:, 0], cache


@functools.partial(
    jax.jit,
    static_argnames=(
        "graphdef",
        "num_samples",
        "max_new_tokens",
        "temperature",
        "top_k",
        "top_p",
        "eos_ids",
        "pad_id",
        "suppress",
        "out_in_kernels",
    ),
)
def _sample_jit(
    graphdef,
    state,
    inputs: ModelInputs,
    rope_deltas,
    rng,
    *,
    num_samples: int,
    max_new_tokens: int,
    temperature: float,
    top_k: int,
    top_p: float,
    eos_ids: tuple[int, ...],
    pad_id: int,
    suppress: tuple[int, ...],
    out_in_kernels: bool,
):
    model = nnx.merge(graphdef, state)
    nnx.update(model, _in_compute_dtype(state, model.policy))
    if out_in_kernels:
        with jax.named_scope(CPU_WORKAROUND):
            _transpose_decoder_kernels(model)
    b = inputs.input_ids.shape[0]
    # a slot for every new token, though the last one chosen is never decoded
    hidden, cache = _prefill(model, inputs, num_samples, max_new_tokens)
    first_logits = model.logits(hidden)[:, 0]  # [B, V]
    rows = b * num_samples
    rep = lambda a: jnp.repeat(a, num_samples, axis=0)  # noqa: E731  prompt-major
    prompt_mask = inputs.attention_mask.astype(bool)
    base_pos = rep(inputs.attention_mask.sum(axis=1) + rope_deltas)  # next position of a row
    eos = jnp.asarray(eos_ids, jnp.int32)

    def pick(step, logits, state: _Decoding) -> _Decoding:
        """Chooses each row's token at ``step`` from logits [R, V] and records it."""
        rng, sub = jax.random.split(state.rng)
        with jax.named_scope("choose_token"):  # a name for profiles (benchmarks/decode_profile)
            choice = _choose(
                logits, sub, temperature, top_k, top_p, suppress, model.cpu_layout
            ).astype(jnp.int32)
            logp = jnp.take_along_axis(
                jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1), choice[:, None], axis=-1
            )[:, 0]
        done = state.done
        choice = jnp.where(done, pad_id, choice)
        return state._replace(
            step=step + 1,
            tokens=state.tokens.at[:, step].set(choice),
            logprobs=state.logprobs.at[:, step].set(jnp.where(done, 0.0, logp)),
            lengths=state.lengths + (~done).astype(jnp.int32),
            done=done | jnp.isin(choice, eos),
            choice=choice,
            rng=rng,
        )

    def cond(state: _Decoding):
        return (state.step < max_new_tokens) & ~jnp.all(state.done)

    def body(state: _Decoding) -> _Decoding:
        # decodes the tokens chosen at step - 1 and chooses those at step: the loop carries
        # tokens, not logits (carried, the [R, V] logits cost a copy of them every step)
        prev = state.step - 1
        logits, cache = _decode_one(
            model, state.choice, base_pos + prev, state.cache, prev, prompt_mask
        )
        return pick(state.step, logits, state._replace(cache=cache))

    start = _Decoding(
        step=jnp.int32(0),
        tokens=jnp.full((rows, max_new_tokens), pad_id, jnp.int32),
        logprobs=jnp.zeros((rows, max_new_tokens), jnp.float32),
        lengths=jnp.zeros((rows,), jnp.int32),
        done=jnp.zeros((rows,), bool),
        choice=jnp.zeros((rows,), jnp.int32),
        cache=cache,
        rng=rng,
    )
    out = jax.lax.while_loop(cond, body, pick(0, rep(first_logits), start))
    return out.tokens, out.logprobs, out.lengths


class _Decoding(NamedTuple):
    """The decode loop's state: at ``step``, the tokens chosen so far (``choice`` the latest,
    not yet decoded), their log-probs, each row's length and whether it has ended, the cache
    and the random key."""

    step: jax.Array  # int32 scalar: the next token's column
    tokens: jax.Array  # [R, N] int32
    logprobs: jax.Array  # [R, N] float32
    lengths: jax.Array  # [R] int32
    done: jax.Array  # [R] bool
    choice: jax.Array  # [R] int32
    cache: KVCache
    rng: jax.Array


def sample(
    model: Qwen25VL,
    batch: dict,
    *,
    num_samples: int = 1,
    max_new_tokens: int = 64,
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_k: int = 0,
    eos_token_ids: Sequence[int] | None = None,
    seed: int = 0,
    pad_id: int | None = None,
    prompt_buckets: Sequence[int] = PROMPT_BUCKETS,
    suppress_token_ids: Sequence[int] | None = None,
    out_in_kernels: bool | None = None,
) -> SampleOutput:
    """Samples ``num_samples`` completions per prompt. ``batch`` holds the HF processor's names
    (input_ids, attention_mask, pixel_values, image_grid_thw, pixel_values_videos,
    video_grid_thw, second_per_grid_ts). temperature 0 is greedy.

    ``suppress_token_ids`` are never generated; None = the image and video placeholder tokens,
    which a completion must not contain: fed back with the prompt's media (GRPO's teacher-forced
    update, a judgement re-read) they would claim vision features that do not exist. The
    returned log-probs are those of the model's full distribution, as teacher forcing gives.

    ``out_in_kernels``: decode with [out, in] copies of the decoder's kernels
    (``_transpose_decoder_kernels``); None = only for a model built for the CPU
    (``model.kernels``), the backend whose matmul this layout speeds up (elsewhere the copies
    would only cost memory)."""
    program = _program(
        model,
        batch,
        num_samples=num_samples,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_p=top_p,
        top_k=top_k,
        eos_token_ids=eos_token_ids,
        seed=seed,
        pad_id=pad_id,
        prompt_buckets=prompt_buckets,
        suppress_token_ids=suppress_token_ids,
        out_in_kernels=out_in_kernels,
    )
    tokens, logprobs, lengths = _sample_jit(*program.args, **program.static)
    # gathered from every process on a multi-host mesh (all processes sample the same rows)
    tokens, logprobs, lengths = (to_host(x) for x in (tokens, logprobs, lengths))
    return SampleOutput(tokens, logprobs, lengths, program.prompt_ids, program.prompt_mask)


def lower_sample(model: Qwen25VL, batch: dict, **options) -> jax.stages.Lowered:
    """The program ``sample(model, batch, **options)`` runs, lowered ahead of time: compile it for
    its HLO, cost and memory analysis (the benchmark's decode profile names its thunks by it)."""
    bound = inspect.signature(sample).bind(model, batch, **options)
    bound.apply_defaults()
    program = _program(**bound.arguments)
    return _sample_jit.lower(*program.args, **program.static)


@dataclasses.dataclass(frozen=True)
class _Program:
    args: tuple  # _sample_jit's array arguments
    static: dict  # and its static ones
    prompt_ids: np.ndarray
    prompt_mask: np.ndarray


def _program(
    model: Qwen25VL,
    batch: dict,
    *,
    num_samples: int,
    max_new_tokens: int,
    temperature: float,
    top_p: float,
    top_k: int,
    eos_token_ids: Sequence[int] | None,
    seed: int,
    pad_id: int | None,
    prompt_buckets: Sequence[int],
    suppress_token_ids: Sequence[int] | None,
    out_in_kernels: bool | None,
) -> _Program:
    """``sample``'s arguments turned into those of ``_sample_jit``, placed on the model's mesh."""
    if out_in_kernels is None:
        out_in_kernels = model.cpu_layout
    cfg = model.config
    ids = np.asarray(batch["input_ids"])
    mask = np.asarray(batch.get("attention_mask", np.ones_like(ids)))
    eos = tuple(
        int(e)
        for e in (eos_token_ids if eos_token_ids is not None else _as_list(cfg.text.eos_token_id))
    )
    if pad_id is None:
        pad_id = (
            cfg.text.pad_token_id if cfg.text.pad_token_id is not None else (eos[0] if eos else 0)
        )
    pad = int(pad_id)
    if suppress_token_ids is None:
        suppress_token_ids = (cfg.image_token_id, cfg.video_token_id)
    length = prompt_bucket(int(mask.sum(axis=1).max()), prompt_buckets)
    ids, mask = _to_left_padding(ids, mask, length, pad)
    keys = (
        "pixel_values",
        "image_grid_thw",
        "pixel_values_videos",
        "video_grid_thw",
        "second_per_grid_ts",
    )
    inputs, deltas = prepare_inputs(
        cfg,
        ids,
        mask,
        **{k: batch[k] for k in keys if batch.get(k) is not None},
        round_up=lambda kind, n: pow2_at_least(n, 1),
    )
    graphdef, state = nnx.split(model)
    mesh = _model_mesh(state)
    if mesh is not None:  # prompts split over data x fsdp (heads follow the weights' tensor axis)
        placed, placed_deltas = _place_on_mesh(mesh, inputs, deltas.astype(np.int32))
    else:
        placed, placed_deltas = jax.tree.map(jnp.asarray, inputs), jnp.asarray(deltas, jnp.int32)
    static = dict(
        num_samples=num_samples,
        max_new_tokens=max_new_tokens,
        temperature=float(temperature),
        top_k=int(top_k),
        top_p=float(top_p),
        eos_ids=eos,
        pad_id=pad,
        suppress=tuple(sorted({int(i) for i in suppress_token_ids})),
        out_in_kernels=bool(out_in_kernels),
    )
    args = (graphdef, state, placed, placed_deltas, jax.random.key(seed))
    return _Program(args, static, ids, mask)


def _model_mesh(state):
    for leaf in jax.tree.leaves(state):
        sharding = getattr(leaf, "sharding", None)
        if isinstance(sharding, jax.sharding.NamedSharding) and sharding.mesh.size > 1:
            return sharding.mesh
    return None


def _place_on_mesh(mesh, inputs: ModelInputs, deltas: np.ndarray):
    """Prompts split over data x fsdp when the rows divide evenly, else replicated. Every
    process holds the same prompts (a multi-host mesh): each places its own devices' part."""

    split = inputs.input_ids.shape[0] % batch_ways(mesh) == 0

    def put(array, batch_axis):
        return put_whole(mesh, array, batch_axis if split else None)

    return inputs.map_with_batch_axis(put), put(deltas, 0)


def _as_list(x) -> list[int]:
    if x is None:
        return []
    return list(x) if isinstance(x, (list, tuple)) else [x]
