"""Gradients of the SFT loss through the whole Flax model (its hand-written backward passes for
SwiGLU, attention, RoPE and the LM head included) against transformers' autograd, fp32, every
parameter, on a left-padded batch with an image and a video."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

import urt_jax
from tests import hf_reference as ref
from urt_jax.model.hf import hf_tensors, legacy_key
from urt_jax.model.inputs import prepare_inputs
from urt_jax.train.loss import target_nll

ROWS = [
    [("text", 3), ("image", (8, 12)), ("text", 2), ("video", (3, 4, 4, 0.5)), ("text", 6)],
    [("text", 6), ("image", (4, 6)), ("text", 5)],
]
TARGETS = 5  # the last tokens of every row (left padding: each row ends at the array's end)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    hf = ref.make_model(ref.tiny_config(tie_word_embeddings=False), seed=4, qk_gain=4.0)
    out = tmp_path_factory.mktemp("grad_parity")
    ref.save_model(hf, out)
    return hf, out


def _hf_gradients(hf, batch, target_index) -> dict[str, np.ndarray]:
    t = ref._to_torch(batch)
    hf.model.rope_deltas = None
    hf.zero_grad(set_to_none=True)
    logits = hf(**t, use_cache=False).logits.float()
    logp = torch.log_softmax(logits, dim=-1)
    rows = torch.arange(logp.shape[0])[:, None]
    index = torch.from_numpy(target_index)
    nll = -logp[rows, index - 1, t["input_ids"][rows, index]].sum()
    nll.backward()
    return {
        legacy_key(name): np.zeros(p.shape, np.float32) if p.grad is None else p.grad.numpy().copy()
        for name, p in hf.named_parameters()
    }


def _our_gradients(ours, batch, target_index) -> dict[str, np.ndarray]:
    inputs, _ = prepare_inputs(
        ours.config,
        batch["input_ids"],
        batch["attention_mask"],
        **{k: batch[k] for k in ref.MEDIA_KEYS if k in batch},
    )
    inputs = jax.tree.map(jnp.asarray, inputs)
    graphdef, params, rest = nnx.split(ours, nnx.Param, ...)

    def loss(params):
        model = nnx.merge(graphdef, params, rest)
        hidden = model.hidden_states(inputs)
        return target_nll(
            hidden,
            inputs.input_ids,
            jnp.asarray(target_index),
            model.output_kernel(),
            model.cpu_layout,
        )[0]

    # the gradients in the parameters' places, through the export's conversion table
    grads = hf_tensors(nnx.merge(graphdef, jax.grad(loss)(params), rest))
    return {key: np.asarray(tensor) for key, tensor in grads.items()}


@pytest.mark.parametrize("kernels", ["cpu", "tpu"])
def test_loss_gradients_match_transformers(checkpoint, kernels):
    # built for TPU: splash attention (interpreted here), the decoder layers as a rolled scan,
    # no XLA:CPU workarounds
    hf, out = checkpoint
    ours = urt_jax.from_pretrained(out, dtype="float32", kernels=kernels)
    batch = ref.build_batch(ROWS, padding_side="left", seed=5)
    length = batch["input_ids"].shape[1]
    target_index = np.tile(np.arange(length - TARGETS, length), (len(ROWS), 1))
    expected = _hf_gradients(hf, batch, target_index)
    got = _our_gradients(ours, batch, target_index)
    assert sorted(got) == sorted(expected)
    worst = 0.0
    for key, g in got.items():
        want = expected[key]
        assert g.shape == want.shape, key
        scale = np.abs(want).max()
        assert scale > 0, f"{key}: no gradient reaches it in transformers"
        err = np.abs(g - want).max() / scale
        worst = max(worst, err)
        assert err <= 1e-4, f"{key}: max |grad diff| {err:.3g} of the largest entry"
    print(f"worst relative gradient difference {worst:.3g} over {len(got)} tensors")
