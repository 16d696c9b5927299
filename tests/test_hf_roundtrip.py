"""HF -> urt_jax -> HF round trips: every tensor bit-for-bit, for each source layout."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from jax.sharding import Mesh
from transformers import Qwen2_5_VLForConditionalGeneration

import urt_jax
from tests import hf_reference as ref
from urt_jax.cli import main as cli_main
from urt_jax.model.safetensors_io import SafetensorsCheckpoint


def _reload_and_compare(original, out_dir):
    reloaded, info = Qwen2_5_VLForConditionalGeneration.from_pretrained(
        out_dir, attn_implementation="eager", output_loading_info=True
    )
    assert not info["missing_keys"], info["missing_keys"]
    assert not info["unexpected_keys"], info["unexpected_keys"]
    assert not info["mismatched_keys"], info["mismatched_keys"]
    want = original.state_dict()
    got = reloaded.state_dict()
    assert set(want) == set(got)
    for key, tensor in want.items():
        assert got[key].dtype == tensor.dtype, key
        assert torch.equal(got[key], tensor), f"{key} differs after the round trip"
    return reloaded


def _legacy_keys_only(out_dir):
    keys = SafetensorsCheckpoint.open(out_dir).keys()
    assert all(
        k.startswith(("model.layers.", "model.embed_tokens", "model.norm", "visual.", "lm_head."))
        for k in keys
    ), keys[:5]
    return keys


@pytest.mark.parametrize(
    "layout,config_style,shard,tie",
    [
        ("legacy", "v5", None, False),
        ("legacy", "flat", None, True),
        ("v5", "v5", None, False),
        ("v5", "flat", 200_000, True),  # sharded source with an index.json
        ("legacy", "v5", 300_000, False),
    ],
)
def test_round_trip_bit_exact(tmp_path, layout, config_style, shard, tie):
    hf = ref.make_model(ref.tiny_config(tie_word_embeddings=tie), seed=11)
    src, dst = tmp_path / "src", tmp_path / "dst"
    ref.save_model(hf, src, layout=layout, max_shard_size=shard, config_style=config_style)
    if shard:
        assert (src / "model.safetensors.index.json").exists()
    model = urt_jax.from_pretrained(src)
    urt_jax.save_pretrained(model, dst)
    keys = _legacy_keys_only(dst)
    assert ("lm_head.weight" in keys) == (not tie)
    _reload_and_compare(hf, dst)


def test_bf16_stays_bf16(tmp_path):
    """bf16 through the streaming sharded writer, back into transformers bit-exact, and read
    again as bf16 slices onto a mesh."""
    hf = ref.make_model(ref.tiny_config(), seed=12, dtype=torch.bfloat16)
    ref.save_model(hf, tmp_path / "src")
    model = urt_jax.from_pretrained(tmp_path / "src")
    dst = tmp_path / "dst"
    urt_jax.save_pretrained(model, dst, max_shard_bytes=150_000)
    assert (dst / "model.safetensors.index.json").exists()
    config = json.loads((dst / "config.json").read_text())
    assert config["torch_dtype"] == "bfloat16"
    ckpt = SafetensorsCheckpoint.open(dst)
    assert len(ckpt.files) > 1
    assert {str(ckpt.dtype(k)) for k in ckpt.keys()} == {"bfloat16"}
    _reload_and_compare(hf, dst)

    mesh = Mesh(np.array(jax.devices()[:8]).reshape(2, 2, 2), ("data", "fsdp", "tensor"))
    sharded = urt_jax.from_pretrained(dst, mesh=mesh)
    want = dict(nnx.to_flat_state(nnx.state(model, nnx.Param)))
    for path, var in nnx.to_flat_state(nnx.state(sharded, nnx.Param)):
        got, expected = np.asarray(var.get_value()), np.asarray(want[path].get_value())
        assert got.dtype == expected.dtype == jnp.bfloat16, path
        np.testing.assert_array_equal(got.view(np.uint16), expected.view(np.uint16), str(path))


def test_aux_files_are_carried(tmp_path):
    hf = ref.make_model(ref.tiny_config(), seed=13)
    src = tmp_path / "src"
    ref.save_model(hf, src)
    extras = {
        "generation_config.json": '{"do_sample": false}',
        "tokenizer_config.json": '{"model_max_length": 128}',
        "preprocessor_config.json": '{"min_pixels": 3136}',
        "chat_template.jinja": "{{ messages }}",
    }
    for name, text in extras.items():
        (src / name).write_text(text)
    model = urt_jax.from_pretrained(src)
    urt_jax.save_pretrained(model, tmp_path / "dst")
    for name, text in extras.items():
        assert (tmp_path / "dst" / name).read_text() == text


def test_cli_convert_both_ways(tmp_path, capsys):
    hf = ref.make_model(ref.tiny_config(tie_word_embeddings=True), seed=14)
    src = tmp_path / "hf_src"
    ref.save_model(hf, src, layout="v5", max_shard_size=250_000)
    (src / "generation_config.json").write_text('{"max_new_tokens": 8}')
    assert cli_main(["convert", "hf-to-orbax", str(src), str(tmp_path / "orbax")]) == 0
    assert os.path.isdir(tmp_path / "orbax" / "params")
    assert (
        cli_main(["convert", "orbax-to-hf", str(tmp_path / "orbax"), str(tmp_path / "hf_out")]) == 0
    )
    assert (tmp_path / "hf_out" / "generation_config.json").exists()
    reloaded = _reload_and_compare(hf, tmp_path / "hf_out")
    # and the converted model computes the same logits as the original
    batch = ref.build_batch([[("text", 4), ("image", (4, 6)), ("text", 3)]], seed=2)
    np.testing.assert_array_equal(ref.hf_logits(reloaded, batch), ref.hf_logits(hf, batch))
