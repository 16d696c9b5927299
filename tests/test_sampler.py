"""The KV-cache sampler against transformers' generate, and its sampling behaviour."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

import urt_jax
from tests import hf_reference as ref
from urt_jax.generate import sample
from urt_jax.generate.sampler import (
    _filter_logits,
    _prefill,
    _sample_jit,
    _transpose_decoder_kernels,
    inverse_cdf_sample,
    lower_sample,
)
from urt_jax.model.inputs import prepare_inputs
from urt_jax.model.kernels import CPU_WORKAROUND

N = 10
EOS = ref.EOS_ID


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    hf = ref.make_model(ref.tiny_config(), seed=0)
    return ref.save_and_load_ours(hf, tmp_path_factory.mktemp("gen"))


CASES = {
    "text_only": ([[("text", 9)], [("text", 5)]], "left"),
    "image": ([[("text", 3), ("image", (8, 12)), ("text", 4)]], "left"),
    "video": ([[("text", 2), ("video", (3, 4, 6, 0.75)), ("text", 3)]], "left"),
    "left_padded_batch": (
        [
            [("text", 3), ("image", (8, 12)), ("text", 2), ("video", (2, 4, 4, 0.5)), ("text", 3)],
            [("text", 6), ("image", (4, 6)), ("text", 2)],
        ],
        "left",
    ),
}


def _hf_greedy(hf, batch):
    t = {k: torch.from_numpy(v) for k, v in batch.items()}
    if "image_grid_thw" not in batch and "video_grid_thw" not in batch:
        t.pop("mm_token_type_ids")  # text only: generate computes padded positions itself
    with torch.no_grad():
        out = hf.generate(
            **t,
            max_new_tokens=N,
            min_new_tokens=N,
            do_sample=False,
            pad_token_id=ref.PAD_ID,
            # what our sampler never generates by default (see test_placeholders_are_suppressed)
            suppress_tokens=[hf.config.image_token_id, hf.config.video_token_id],
        )
    return out[:, batch["input_ids"].shape[1] :].numpy()


@pytest.mark.parametrize("case", sorted(CASES))
def test_greedy_equals_transformers_generate(pair, case):
    hf, ours = pair
    rows, side = CASES[case]
    batch = ref.build_batch(rows, padding_side=side, seed=3)
    got = sample(ours, batch, max_new_tokens=N, temperature=0.0, eos_token_ids=[EOS])
    np.testing.assert_array_equal(got.tokens, _hf_greedy(hf, batch))


def test_kernels_transposed_for_decoding_give_the_same_model(pair):
    _, ours = pair
    model = nnx.clone(ours)
    _transpose_decoder_kernels(model)

    def shapes(module):
        return {p: v.get_value().shape for p, v in nnx.to_flat_state(nnx.state(module))}

    before, after = shapes(ours.language_model.layers), shapes(model.language_model.layers)
    moved = {p[:-1] for p in before if p[-1] == "kernel" and after[p] != before[p]}
    assert moved == {("mlp", "gate_proj"), ("mlp", "up_proj")}
    layers = ours.config.text.num_hidden_layers
    for path in moved:  # the stacked [L, in, out] kernels as [L, out, in]
        shape = before[(*path, "kernel")]
        assert after[(*path, "kernel")] == (layers, shape[2], shape[1])
    assert model.lm_head.kernel.shape == ours.lm_head.kernel.shape[::-1]
    assert shapes(model.visual) == shapes(ours.visual)
    batch = ref.build_batch(CASES["image"][0], padding_side="left", seed=3)
    inputs, _ = prepare_inputs(
        ours.config, **{k: v for k, v in batch.items() if k != "mm_token_type_ids"}
    )
    inputs = jax.tree.map(jnp.asarray, inputs)
    hidden, cache = _prefill(model, inputs, num_samples=1, new_slots=1)
    # the sampler's prefill (stacked cache) with transposed kernels against the forward as stored
    np.testing.assert_allclose(
        model.logits(hidden)[:, 0], ours.forward(inputs)[:, -1], rtol=0, atol=1e-5
    )
    assert cache.prompt_k.shape[0] == cache.k.shape[0] == layers


def test_both_kernel_layouts_sample_the_same(pair):
    # on the CPU the sampler decodes with [out, in] copies of some kernels; on other backends
    # with the kernels as stored
    _, ours = pair
    rows, side = CASES["left_padded_batch"]
    batch = ref.build_batch(rows, padding_side=side, seed=3)
    kw = dict(max_new_tokens=N, temperature=1.0, num_samples=2, seed=5)
    out_in = sample(ours, batch, out_in_kernels=True, **kw)
    as_stored = sample(ours, batch, out_in_kernels=False, **kw)
    np.testing.assert_array_equal(out_in.tokens, as_stored.tokens)
    np.testing.assert_allclose(out_in.logprobs, as_stored.logprobs, rtol=0, atol=1e-5)


def test_right_padded_prompts_give_the_same_tokens(pair):
    _, ours = pair
    rows, _ = CASES["left_padded_batch"]
    left = sample(
        ours, ref.build_batch(rows, padding_side="left", seed=3), max_new_tokens=N, temperature=0.0
    )
    right = sample(
        ours, ref.build_batch(rows, padding_side="right", seed=3), max_new_tokens=N, temperature=0.0
    )
    np.testing.assert_array_equal(left.tokens, right.tokens)


def test_logprobs_equal_teacher_forcing(pair):
    _, ours = pair
    rows, _ = CASES["left_padded_batch"]
    batch = ref.build_batch(rows, padding_side="left", seed=4)
    out = sample(
        ours, batch, num_samples=3, max_new_tokens=N, temperature=1.0, seed=5, eos_token_ids=[]
    )
    ids = np.repeat(batch["input_ids"], 3, axis=0)
    mask = np.repeat(batch["attention_mask"], 3, axis=0)
    full = np.concatenate([ids, out.tokens], axis=1)
    full_mask = np.concatenate([mask, np.ones_like(out.tokens)], axis=1)
    vision = {
        k: batch[k]
        for k in (
            "pixel_values",
            "image_grid_thw",
            "pixel_values_videos",
            "video_grid_thw",
            "second_per_grid_ts",
        )
    }
    # each prompt's media three times, in row order
    img_rows = [batch["pixel_values"][:96], batch["pixel_values"][96:]]
    vision["pixel_values"] = np.concatenate([img_rows[0]] * 3 + [img_rows[1]] * 3)
    vision["image_grid_thw"] = np.repeat(batch["image_grid_thw"], 3, axis=0)
    vision["pixel_values_videos"] = np.concatenate([batch["pixel_values_videos"]] * 3)
    vision["video_grid_thw"] = np.repeat(batch["video_grid_thw"], 3, axis=0)
    vision["second_per_grid_ts"] = np.repeat(batch["second_per_grid_ts"], 3)
    inputs, _ = prepare_inputs(ours.config, full, full_mask, **vision)
    logits = ours.forward(jax.tree.map(jnp.asarray, inputs))
    logp = jax.nn.log_softmax(logits, axis=-1)
    t = ids.shape[1]
    want = np.take_along_axis(np.asarray(logp[:, t - 1 : -1]), out.tokens[..., None], -1)[..., 0]
    assert np.abs(out.logprobs - want).max() <= 1e-4


def test_sampling_behaviour(pair):
    _, ours = pair
    batch = ref.build_batch(CASES["image"][0], seed=6)
    greedy = sample(ours, batch, max_new_tokens=N, temperature=0.0)
    top1 = sample(ours, batch, max_new_tokens=N, temperature=1.0, top_k=1, seed=9)
    cold = sample(ours, batch, max_new_tokens=N, temperature=1e-4, seed=9)
    np.testing.assert_array_equal(top1.tokens, greedy.tokens)
    np.testing.assert_array_equal(cold.tokens, greedy.tokens)
    a = sample(ours, batch, num_samples=8, max_new_tokens=N, seed=1)
    b = sample(ours, batch, num_samples=8, max_new_tokens=N, seed=1)
    np.testing.assert_array_equal(a.tokens, b.tokens)
    assert len({tuple(r) for r in a.tokens}) > 1  # the 8 samples of one prompt differ
    nucleus = sample(ours, batch, num_samples=8, max_new_tokens=N, seed=1, top_p=0.5)
    assert nucleus.tokens.shape == (8, N)


def test_placeholders_are_suppressed(pair):
    """With the LM head biased towards the image and video placeholders (their columns made the
    greedy token's, scaled up), the default sampler still never emits them, greedy or sampled;
    with no suppression it does. (The log-probs stay those of the full distribution:
    test_logprobs_equal_teacher_forcing runs with the default suppression.)"""
    _, ours = pair
    batch = ref.build_batch(CASES["image"][0], seed=6)
    biased = nnx.clone(ours)
    cfg = biased.config
    placeholders = [cfg.image_token_id, cfg.video_token_id]
    first = int(sample(biased, batch, max_new_tokens=1, temperature=0.0).tokens[0, 0])
    head = biased.lm_head
    assert head is not None, "the tiny reference config has an untied LM head"
    kernel = head.kernel.get_value()
    head.kernel.set_value(kernel.at[:, jnp.asarray(placeholders)].set(5.0 * kernel[:, [first]]))
    free = sample(biased, batch, max_new_tokens=N, temperature=0.0, suppress_token_ids=())
    assert np.isin(free.tokens, placeholders).any()
    greedy = sample(biased, batch, max_new_tokens=N, temperature=0.0)
    drawn = sample(biased, batch, num_samples=8, max_new_tokens=N, temperature=1.0, seed=2)
    assert not np.isin(greedy.tokens, placeholders).any()
    assert not np.isin(drawn.tokens, placeholders).any()
    other = sample(biased, batch, max_new_tokens=N, temperature=0.0, suppress_token_ids=[first])
    assert first not in other.tokens


@pytest.mark.parametrize("top_p", [0.05, 0.3, 0.9, 0.95, 0.999])
def test_nucleus_keeps_what_transformers_keeps(top_p):
    """The nucleus (top-p) filter keeps exactly the tokens transformers' TopPLogitsWarper keeps,
    on peaked and nearly flat rows of a 32k vocabulary, and after a top-k filter."""
    from transformers.generation.logits_process import TopKLogitsWarper, TopPLogitsWarper

    rng = np.random.default_rng(int(top_p * 1000))
    scales = np.array([0.05, 0.5, 2.0, 8.0], np.float32)[:, None]  # flat ... peaked
    logits = (rng.standard_normal((4, 32_000)).astype(np.float32) * scales).astype(np.float32)
    for top_k in (0, 50):
        ours = np.asarray(_filter_logits(jnp.asarray(logits), top_k=top_k, top_p=top_p))
        theirs = torch.from_numpy(logits.copy())
        if top_k:
            theirs = TopKLogitsWarper(top_k)(None, theirs)
        theirs = TopPLogitsWarper(top_p)(None, theirs).numpy()
        kept, want = ours > np.finfo(np.float32).min, np.isfinite(theirs)
        assert kept.sum(axis=1).min() >= 1
        np.testing.assert_array_equal(kept, want, err_msg=f"top_k={top_k}")
        np.testing.assert_array_equal(ours[kept], logits[kept])


@pytest.mark.parametrize("block", [128, 3])
def test_inverse_cdf_draws_follow_the_distribution(block):
    """Frequencies of 40k draws within 5 standard errors of softmax(logits); top-k-filtered
    entries (probability 0), first and last ones included, are never drawn. Block 3 puts the
    10 entries into 4 blocks (the last one padded), the second of them all filtered."""
    big = -50.0
    logits = jnp.asarray([[big, 0.3, 1.2, big, big, big, 2.0, 0.0, 0.9, big]], jnp.float32)
    filtered = _filter_logits(logits, top_k=5, top_p=1.0)
    n = 40_000
    draws = inverse_cdf_sample(jax.random.key(0), jnp.repeat(filtered, n, axis=0), block)
    freq = np.bincount(np.asarray(draws), minlength=10) / n
    assert freq.shape == (10,)  # no draw past the vocabulary
    p = np.asarray(jax.nn.softmax(filtered[0]))
    assert (freq[p == 0] == 0).all() and (p == 0).sum() == 5
    np.testing.assert_array_less(np.abs(freq - p), 5 * np.sqrt(p * (1 - p) / n) + 1e-12)


def test_rows_stop_at_eos_and_are_padded(pair):
    _, ours = pair
    batch = ref.build_batch(CASES["left_padded_batch"][0], padding_side="left", seed=3)
    greedy = sample(ours, batch, max_new_tokens=N, temperature=0.0)
    stop = int(greedy.tokens[0, 3])  # pretend the 4th token of row 0 is an end token
    out = sample(ours, batch, max_new_tokens=N, temperature=0.0, eos_token_ids=[stop], pad_id=0)
    first = int(np.argmax(greedy.tokens[0] == stop))
    assert out.lengths[0] == first + 1
    np.testing.assert_array_equal(out.tokens[0, : first + 1], greedy.tokens[0, : first + 1])
    assert (out.tokens[0, first + 1 :] == 0).all() and (out.logprobs[0, first + 1 :] == 0).all()


def test_same_bucket_does_not_compile_again(pair):
    _, ours = pair
    batch = ref.build_batch(CASES["image"][0], seed=7)
    sample(ours, batch, num_samples=2, max_new_tokens=N, seed=0)
    compiled = _sample_jit._cache_size()
    other = ref.build_batch([[("text", 5), ("image", (8, 12)), ("text", 1)]], seed=8)
    sample(ours, other, num_samples=2, max_new_tokens=N, seed=3)  # same buckets, new content
    assert _sample_jit._cache_size() == compiled


def test_sharded_model_samples_the_same(pair, tmp_path):
    from jax.sharding import Mesh

    hf, ours = pair
    ref.save_model(hf, tmp_path)
    mesh = Mesh(np.array(jax.devices()[:4]).reshape(2, 1, 2), ("data", "fsdp", "tensor"))
    sharded = urt_jax.from_pretrained(tmp_path, dtype="float32", mesh=mesh)
    batch = ref.build_batch(CASES["left_padded_batch"][0], padding_side="left", seed=3)
    want = sample(ours, batch, num_samples=2, max_new_tokens=N, temperature=0.0)
    got = sample(sharded, batch, num_samples=2, max_new_tokens=N, temperature=0.0)
    np.testing.assert_array_equal(got.tokens, want.tokens)
    np.testing.assert_allclose(got.logprobs, want.logprobs, atol=1e-4)


def test_mixed_precision_decodes_with_weights_cast_once(pair, tmp_path):
    # mixed_bfloat16 (fp32 master weights, bf16 compute) casts every weight at each use; the
    # sampler casts them once, so the per-layer weights its decode loop holds are bf16 copies
    hf, _ = pair
    ref.save_model(hf, tmp_path)
    mixed = urt_jax.from_pretrained(tmp_path, dtype="mixed_bfloat16")
    batch = ref.build_batch(CASES["image"][0], seed=7)
    options = dict(num_samples=2, max_new_tokens=4, eos_token_ids=[], temperature=0.0)
    text = lower_sample(mixed, batch, **options).as_text()
    loop = max((ln for ln in text.splitlines() if "stablehlo.while" in ln), key=len)
    carried = [
        (int(np.prod([int(d) for d in dims.split("x")])), dtype)
        for dims, dtype in re.findall(r"tensor<(\d+(?:x\d+)*)x(f32|bf16)>", loop.split(" : ")[-1])
    ]
    smallest_param = min(np.prod(p.shape) for p in jax.tree.leaves(nnx.state(mixed)))
    assert [n for n, dtype in carried if dtype == "f32" and n >= smallest_param] == []
    assert sum(n for n, dtype in carried if dtype == "bf16") > sum(
        np.prod(p.shape) for p in jax.tree.leaves(nnx.state(mixed.language_model.layers))
    )
    # the same computation as a bf16 model of the same weights
    bf16 = urt_jax.from_pretrained(tmp_path, dtype="bfloat16")
    a, b = sample(mixed, batch, **options), sample(bf16, batch, **options)
    np.testing.assert_array_equal(a.tokens, b.tokens)
    np.testing.assert_array_equal(a.logprobs, b.logprobs)


def test_models_built_for_tpu_and_gpu_sample_the_same_without_cpu_workarounds(pair, tmp_path):
    """Greedy tokens and log-probs of the TPU path (splash attention interpreted) and the GPU
    path equal the CPU path's; their programs hold none of the CPU's layouts or its sampler."""
    hf, ours = pair
    ref.save_model(hf, tmp_path)
    batch = ref.build_batch(CASES["left_padded_batch"][0], padding_side="left", seed=3)
    want = sample(ours, batch, num_samples=2, max_new_tokens=N, temperature=0.0)
    drawn = dict(num_samples=2, max_new_tokens=N, temperature=1.0, top_p=0.9)
    assert CPU_WORKAROUND in lower_sample(ours, batch, **drawn).as_text(debug_info=True)
    for kernels in ("tpu", "gpu"):
        model = urt_jax.from_pretrained(tmp_path, dtype="float32", kernels=kernels)
        program = lower_sample(model, batch, **drawn).as_text(debug_info=True)
        assert CPU_WORKAROUND not in program, kernels
        got = sample(model, batch, num_samples=2, max_new_tokens=N, temperature=0.0)
        np.testing.assert_array_equal(got.tokens, want.tokens)
        np.testing.assert_allclose(got.logprobs, want.logprobs, atol=1e-4)
