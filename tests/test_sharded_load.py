"""Loading straight onto a device mesh (8 fake CPU devices), orbax round trip, remat."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import Mesh, PartitionSpec

import urt_jax
from tests import hf_reference as ref
from urt_jax.model.inputs import prepare_inputs
from urt_jax.model.orbax_io import load_orbax, save_orbax
from urt_jax.model.qwen2_5_vl import Qwen25VL
from urt_jax.sharding.rules import logical_to_spec

BATCH_ROWS = [
    [("text", 3), ("image", (8, 12)), ("text", 2), ("video", (2, 4, 4, 0.5))],
    [("text", 5), ("image", (4, 6)), ("text", 2)],
]


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("hf")
    # 4 kv heads so that the kv projections split over tensor=2 as well
    ref.save_model(ref.make_model(ref.tiny_config(num_key_value_heads=4), seed=31), path)
    return path


@pytest.fixture(scope="module")
def mesh():
    devices = np.array(jax.devices()[:8]).reshape(2, 2, 2)
    return Mesh(devices, ("data", "fsdp", "tensor"))


def _logits(model, batch):
    inputs, _ = prepare_inputs(
        model.config, **{k: v for k, v in batch.items() if k != "mm_token_type_ids"}
    )
    fwd = nnx.jit(lambda m, x: m.forward(x))
    return np.asarray(fwd(model, jax.tree.map(jnp.asarray, inputs)))


def test_sharded_load_matches_and_follows_rules(hf_dir, mesh):
    plain = urt_jax.from_pretrained(hf_dir, dtype="float32")
    sharded = urt_jax.from_pretrained(hf_dir, dtype="float32", mesh=mesh)
    q = sharded.language_model.layers.self_attn.q_proj.kernel  # stacked: [layers, embed, heads]
    assert q[...].sharding.spec == PartitionSpec(None, "fsdp", "tensor")
    emb = sharded.language_model.embed_tokens.embedding
    assert emb[...].sharding.spec == PartitionSpec("tensor", "fsdp")
    norm = sharded.language_model.norm.weight
    assert norm[...].sharding.spec == PartitionSpec(None)
    # every parameter's sharding is what the rules table gives for its logical axes
    for _, var in nnx.to_flat_state(nnx.state(sharded, nnx.Param)):
        value = var.get_value()
        want = logical_to_spec(var.get_metadata()["logical_axes"], value.shape, mesh)
        assert value.sharding.spec == want
    batch = ref.build_batch(BATCH_ROWS, padding_side="left", seed=1)
    np.testing.assert_allclose(_logits(sharded, batch), _logits(plain, batch), atol=2e-5)


def test_sharded_load_reads_each_shard_as_its_slice(hf_dir, mesh, monkeypatch):
    """With a mesh, a sharded tensor is never read whole: each distinct shard is read once, as
    its slice of the file, and the parameters equal a one-device load exactly."""
    from urt_jax.model.safetensors_io import SafetensorsCheckpoint

    whole, sliced = [], []
    get, get_slice = SafetensorsCheckpoint.get, SafetensorsCheckpoint.get_slice

    def spy_get(self, name):
        whole.append(name)
        return get(self, name)

    def spy_get_slice(self, name, index):
        out = get_slice(self, name, index)
        sliced.append((name, out.nbytes))
        return out

    monkeypatch.setattr(SafetensorsCheckpoint, "get", spy_get)
    monkeypatch.setattr(SafetensorsCheckpoint, "get_slice", spy_get_slice)
    sharded = urt_jax.from_pretrained(hf_dir, dtype="float32", mesh=mesh)
    monkeypatch.undo()

    q = "model.layers.0.self_attn.q_proj.weight"  # [heads, embed] -> (None, fsdp, tensor)
    assert q not in whole
    q_reads = [n for name, n in sliced if name == q]
    with SafetensorsCheckpoint.open(hf_dir) as ckpt:
        q_bytes = ckpt.get(q).nbytes
    # 8 devices hold 4 distinct quarters (replicated over data): 4 reads, a quarter each
    assert q_reads == [q_bytes // 4] * 4
    assert "model.norm.weight" not in whole  # a replicated tensor is one slice: all of it
    plain = urt_jax.from_pretrained(hf_dir, dtype="float32")
    want = dict(nnx.to_flat_state(nnx.state(plain, nnx.Param)))
    for path, var in nnx.to_flat_state(nnx.state(sharded, nnx.Param)):
        np.testing.assert_array_equal(
            np.asarray(var.get_value()), np.asarray(want[path].get_value())
        )


def test_indivisible_dimension_is_replicated():
    devices = np.array(jax.devices()[:8]).reshape(1, 2, 4)
    mesh = Mesh(devices, ("data", "fsdp", "tensor"))
    # 2 kv heads * 8 = 16 columns divide over tensor=4; 6 columns do not
    assert logical_to_spec(("embed", "kv_heads"), (64, 16), mesh) == PartitionSpec("fsdp", "tensor")
    assert logical_to_spec(("embed", "kv_heads"), (64, 6), mesh) == PartitionSpec("fsdp", None)


def test_orbax_round_trip_onto_mesh(hf_dir, mesh, tmp_path):
    model = urt_jax.from_pretrained(hf_dir)
    save_orbax(model, tmp_path / "orbax")
    restored = load_orbax(tmp_path / "orbax", mesh=mesh)
    want = dict(nnx.to_flat_state(nnx.state(model, nnx.Param)))
    for path, var in nnx.to_flat_state(nnx.state(restored, nnx.Param)):
        np.testing.assert_array_equal(
            np.asarray(var.get_value()), np.asarray(want[path].get_value())
        )
    up = restored.language_model.layers.mlp.up_proj.kernel[...]
    assert up.sharding.spec == PartitionSpec(None, "fsdp", "tensor")


def test_remat_gives_the_same_gradients(hf_dir):
    batch = ref.build_batch(BATCH_ROWS[1:], seed=2)
    inputs, _ = prepare_inputs(
        urt_jax.from_pretrained(hf_dir).config,
        **{k: v for k, v in batch.items() if k != "mm_token_type_ids"},
    )
    inputs = jax.tree.map(jnp.asarray, inputs)

    def grads(remat):
        model = urt_jax.from_pretrained(hf_dir, remat=remat)
        loss = lambda m: jnp.mean(jax.nn.log_softmax(m.forward(inputs))[..., 7])  # noqa: E731
        return nnx.state(nnx.grad(loss)(model))

    plain, remat = grads("none"), grads("full")
    for a, b in zip(jax.tree.leaves(plain), jax.tree.leaves(remat), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6, rtol=1e-5)


def test_random_init_has_no_nan():
    from urt_jax.model.config import Qwen25VLConfig

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    cfg = Qwen25VLConfig.from_yaml(os.path.join(root, "configs", "model", "tiny.yaml"))
    model = Qwen25VL(cfg, rngs=nnx.Rngs(0))
    for leaf in jax.tree.leaves(nnx.state(model, nnx.Param)):
        assert np.isfinite(np.asarray(leaf)).all()
