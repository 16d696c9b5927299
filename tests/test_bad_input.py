"""Bad checkpoints, configs and inputs fail early with errors that name what is wrong."""

import json

import numpy as np
import pytest

import urt_jax
from tests import hf_reference as ref
from urt_jax.model.config import ConfigError, Qwen25VLConfig
from urt_jax.model.hf import CheckpointError
from urt_jax.model.inputs import InputError, prepare_inputs
from urt_jax.model.safetensors_io import SafetensorsCheckpoint, save_safetensors


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("hf")
    ref.save_model(ref.make_model(ref.tiny_config(), seed=21), path)
    return path


def _rewrite(src, dst, edit_tensors=None, edit_config=None):
    dst.mkdir()
    with SafetensorsCheckpoint.open(src) as ckpt:
        tensors = {k: np.array(ckpt.get(k)) for k in ckpt.keys()}
    if edit_tensors:
        edit_tensors(tensors)
    save_safetensors(tensors, dst)
    config = json.loads((src / "config.json").read_text())
    if edit_config:
        edit_config(config)
    (dst / "config.json").write_text(json.dumps(config))
    return dst


def test_missing_tensor_is_named(hf_dir, tmp_path):
    bad = _rewrite(
        hf_dir, tmp_path / "bad", edit_tensors=lambda t: t.pop("model.layers.1.mlp.up_proj.weight")
    )
    with pytest.raises(CheckpointError, match=r"missing tensor.*model\.layers\.1\.mlp\.up_proj"):
        urt_jax.from_pretrained(bad)


def test_wrong_shape_is_named(hf_dir, tmp_path):
    def shrink(t):
        t["visual.blocks.0.attn.qkv.bias"] = t["visual.blocks.0.attn.qkv.bias"][:-1]

    bad = _rewrite(hf_dir, tmp_path / "bad", edit_tensors=shrink)
    with pytest.raises(
        CheckpointError, match=r"visual\.blocks\.0\.attn\.qkv\.bias.*\(95,\).*expected \(96,\)"
    ):
        urt_jax.from_pretrained(bad)


def test_unknown_architecture(hf_dir, tmp_path):
    bad = _rewrite(
        hf_dir,
        tmp_path / "bad",
        edit_config=lambda c: c.update(model_type="llava", architectures=["Llava"]),
    )
    with pytest.raises(ConfigError, match=r"model_type.*qwen2_5_vl.*llava"):
        urt_jax.from_pretrained(bad)


def test_mrope_section_must_sum_to_half_head_dim(hf_dir, tmp_path):
    def edit(c):
        c["text_config"]["rope_parameters"]["mrope_section"] = [2, 3, 4]

    bad = _rewrite(hf_dir, tmp_path / "bad", edit_config=edit)
    with pytest.raises(ConfigError, match=r"mrope_section.*head_dim/2 = 8.*\[2, 3, 4\]"):
        urt_jax.from_pretrained(bad)


def test_out_hidden_size_must_equal_hidden_size(hf_dir, tmp_path):
    def edit(c):
        c["vision_config"]["out_hidden_size"] = 48

    bad = _rewrite(hf_dir, tmp_path / "bad", edit_config=edit)
    with pytest.raises(ConfigError, match=r"out_hidden_size.*64.*48"):
        urt_jax.from_pretrained(bad)


def test_missing_config_field_is_named():
    cfg = ref.tiny_config().to_dict()
    del cfg["vision_config"]["tokens_per_second"]
    with pytest.raises(ConfigError, match=r"vision_config\.tokens_per_second"):
        Qwen25VLConfig.from_hf_dict(cfg)


@pytest.fixture(scope="module")
def config(hf_dir):
    return Qwen25VLConfig.from_hf_file(hf_dir)


def test_pixel_rows_must_match_grid(config):
    batch = ref.build_batch([[("text", 3), ("image", (4, 6)), ("text", 2)]])
    batch["pixel_values"] = batch["pixel_values"][:-1]
    with pytest.raises(InputError, match=r"pixel_values has 23 rows.*24 patches"):
        prepare_inputs(config, **_model_keys(batch))


def test_placeholder_count_must_match_grid(config):
    batch = ref.build_batch([[("text", 3), ("image", (4, 6)), ("text", 2)]])
    batch["image_grid_thw"] = np.array([[1, 4, 8]])
    batch["pixel_values"] = np.zeros((32, config.vision.patch_dim), np.float32)
    with pytest.raises(InputError, match=r"6 image placeholder tokens.*needs 8"):
        prepare_inputs(config, **_model_keys(batch))


def test_video_without_pixels_and_odd_grid(config):
    batch = ref.build_batch([[("text", 3), ("video", (2, 4, 4, 0.5)), ("text", 2)]])
    keys = _model_keys(batch)
    keys.pop("pixel_values_videos")
    keys.pop("video_grid_thw")
    keys.pop("second_per_grid_ts")
    with pytest.raises(InputError, match=r"8 video placeholder tokens.*no pixel_values_videos"):
        prepare_inputs(config, **keys)
    batch = ref.build_batch([[("text", 3), ("image", (4, 6)), ("text", 2)]])
    batch["image_grid_thw"] = np.array([[1, 3, 8]])
    with pytest.raises(InputError, match=r"divisible by spatial_merge_size"):
        prepare_inputs(config, **_model_keys(batch))


def _model_keys(batch):
    return {k: v for k, v in batch.items() if k != "mm_token_type_ids"}


def test_orbax_export_with_per_layer_decoder_is_named(hf_dir, tmp_path):
    # the layout urt-jax wrote before the decoder layers were stacked: language_model.layers.{i}
    import jax
    import orbax.checkpoint as ocp
    from flax import nnx

    from urt_jax.model.orbax_io import load_orbax, save_orbax

    model = urt_jax.from_pretrained(hf_dir)
    save_orbax(model, tmp_path / "new")
    up = load_orbax(tmp_path / "new").language_model.layers.mlp.up_proj.kernel[...]
    np.testing.assert_array_equal(up, model.language_model.layers.mlp.up_proj.kernel[...])
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    stacked = params["language_model"]["layers"]
    params["language_model"]["layers"] = {
        str(i): jax.tree.map(lambda a, i=i: np.asarray(a[i]), stacked)
        for i in range(model.config.text.num_hidden_layers)
    }
    old = tmp_path / "old"
    old.mkdir()
    (old / "config.json").write_text((tmp_path / "new" / "config.json").read_text())
    with ocp.StandardCheckpointer() as ckpt:
        ckpt.save(old / "params", params)
    with pytest.raises(
        CheckpointError, match=r"old/params: parameter language_model\.layers\.\w+.*one by one"
    ):
        load_orbax(old)


def test_training_never_starts_over_on_checkpoints_it_cannot_restore(tmp_path):
    import jax.numpy as jnp

    from urt_jax.train.checkpoint import Checkpointer, CheckpointRestoreError

    ckpt = Checkpointer(str(tmp_path), every=1, keep=2, asynchronous=False)
    ckpt.save(3, {"w": jnp.ones((2, 3))}, {"position": 3})
    ckpt.wait()
    assert ckpt.restore_latest({"w": jnp.zeros((2, 3))})[0] == 3
    with pytest.raises(CheckpointRestoreError, match=r"(?s)steps \[3\].*new output_dir"):
        ckpt.restore_latest({"w": jnp.zeros((2, 3)), "b": jnp.zeros(3)})
    ckpt.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["3"]  # left as it was
