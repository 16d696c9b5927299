"""Sanity checks of tests/hf_reference.py, the transformers side of the parity tests."""

import json

import ml_dtypes
import numpy as np
import pytest
import torch
from safetensors import safe_open
from transformers import Qwen2_5_VLForConditionalGeneration

from tests import hf_reference as ref

IMAGE_ROW = [("text", 4), ("image", (4, 6)), ("text", 3)]
# Two images of different sizes (the 8x12 one spans two windows and a padded one) and a video
# with 3 temporal patches at 0.5 s per patch, in rows of different lengths.
MIXED_ROWS = [
    [("text", 3), ("image", (8, 12)), ("text", 2), ("video", (3, 4, 4, 0.5)), ("text", 3)],
    [("text", 6), ("image", (4, 6)), ("text", 2)],
]


@pytest.fixture(scope="module")
def untied():
    return ref.make_model(ref.tiny_config(tie_word_embeddings=False), seed=0)


@pytest.fixture(scope="module")
def tied():
    return ref.make_model(ref.tiny_config(tie_word_embeddings=True), seed=1)


_VISION_FIELDS = (
    "depth",
    "hidden_size",
    "intermediate_size",
    "num_heads",
    "in_channels",
    "out_hidden_size",
    "patch_size",
    "temporal_patch_size",
    "spatial_merge_size",
    "window_size",
    "fullatt_block_indexes",
    "tokens_per_second",
)


def _reload(path) -> Qwen2_5_VLForConditionalGeneration:
    return Qwen2_5_VLForConditionalGeneration.from_pretrained(
        path, attn_implementation="eager"
    ).eval()


# ------------------------------------------------------------------------------------ config


def test_tiny_config_fields():
    cfg = ref.tiny_config()
    t, v = cfg.text_config, cfg.vision_config
    assert cfg._attn_implementation == "eager"
    assert (t.hidden_size, t.num_attention_heads, t.num_key_value_heads) == (64, 4, 2)
    assert sum(t.rope_parameters["mrope_section"]) * 2 == t.hidden_size // t.num_attention_heads
    assert t.rope_parameters["rope_theta"] == 1e6 and t.rms_norm_eps == 1e-6
    assert (t.bos_token_id, t.eos_token_id, t.vocab_size) == (151643, 151645, 151700)
    assert v.out_hidden_size == t.hidden_size
    assert (v.hidden_size, v.num_heads, v.intermediate_size, v.depth) == (32, 2, 48, 3)
    assert (v.patch_size, v.temporal_patch_size, v.spatial_merge_size) == (14, 2, 2)
    assert (cfg.image_token_id, cfg.video_token_id) == (151655, 151656)
    assert (cfg.vision_start_token_id, cfg.vision_end_token_id) == (151652, 151653)
    assert ref.tiny_config(tie_word_embeddings=True).tie_word_embeddings


def test_tiny_config_rejects_bad_mrope_section():
    with pytest.raises(ValueError, match="mrope_section"):
        ref.tiny_config(mrope_section=(2, 3, 4))
    ref.tiny_config(hidden_size=96, num_attention_heads=4, mrope_section=(4, 4, 4))  # head_dim 24


# ------------------------------------------------------------------------------------- model


def test_make_model_randomises_norms_and_biases(untied, tied):
    params = dict(untied.named_parameters())
    norms = [n for n in params if n.endswith(ref._NORM_SUFFIXES)]
    biases = [n for n in params if n.endswith(".bias")]
    assert len(norms) == 3 * 2 + 1 + 2 * 2 + 1  # vision blocks, ln_q, decoder layers, final
    assert len(biases) > 20
    for n in norms:
        p = params[n]
        assert 0.5 <= p.min() and p.max() <= 1.5 and p.std() > 0.1, n
    for n in biases:
        assert 0.005 < params[n].std() < 0.05, n
    assert untied.lm_head.weight is not untied.model.language_model.embed_tokens.weight
    assert tied.lm_head.weight is tied.model.language_model.embed_tokens.weight
    again = ref.make_model(ref.tiny_config(), seed=0)
    for n, p in again.named_parameters():
        assert torch.equal(p, params[n]), n


def test_logits_are_not_tiny(untied):
    logits = ref.hf_logits(untied, ref.build_batch([IMAGE_ROW]))
    assert logits.dtype == np.float32 and np.isfinite(logits).all()
    assert logits.std() > 1e-3


def test_qk_gain_scales_only_queries_and_keys():
    base = dict(ref.make_model(ref.tiny_config(), seed=3).named_parameters())
    sharp = dict(ref.make_model(ref.tiny_config(), seed=3, qk_gain=4.0).named_parameters())
    for n, p in sharp.items():
        if n.endswith(("q_proj.weight", "k_proj.weight")):
            torch.testing.assert_close(p, 4 * base[n])
        elif n.endswith("attn.qkv.weight"):
            d = p.shape[0] // 3
            torch.testing.assert_close(p[: 2 * d], 4 * base[n][: 2 * d])
            assert torch.equal(p[2 * d :], base[n][2 * d :])
        else:
            assert torch.equal(p, base[n]), n


def test_bf16_model_keeps_float32_rope_buffers():
    model = ref.make_model(ref.tiny_config(), dtype=torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
    buffers = dict(model.named_buffers())
    assert buffers["model.language_model.rotary_emb.inv_freq"].dtype == torch.float32
    assert buffers["model.visual.rotary_pos_emb.inv_freq"].dtype == torch.float32


# ------------------------------------------------------------------------------------ saving


def test_legacy_save_writes_hub_key_layout(untied, tied, tmp_path):
    ref.save_model(untied, tmp_path / "untied")
    keys = ref.saved_keys(tmp_path / "untied")
    assert "lm_head.weight" in keys
    assert any(k.startswith("model.layers.0.") for k in keys)
    assert any(k.startswith("visual.blocks.0.") for k in keys)
    assert "model.embed_tokens.weight" in keys and "visual.merger.ln_q.weight" in keys
    assert not any(k.startswith(("model.language_model.", "model.visual.")) for k in keys)

    ref.save_model(tied, tmp_path / "tied", max_shard_size=300_000)
    keys = ref.saved_keys(tmp_path / "tied")
    assert "lm_head.weight" not in keys and "model.embed_tokens.weight" in keys
    assert all(k.startswith(("model.", "visual.")) for k in keys)
    assert (tmp_path / "tied" / "model.safetensors.index.json").exists()


def test_v5_save_writes_in_memory_key_layout(untied, tied, tmp_path):
    ref.save_model(untied, tmp_path / "single", layout="v5")
    keys = ref.saved_keys(tmp_path / "single")
    assert keys == sorted(untied.state_dict())
    assert "model.language_model.layers.0.self_attn.q_proj.bias" in keys
    assert "model.visual.blocks.0.attn.qkv.weight" in keys and "lm_head.weight" in keys
    with safe_open(tmp_path / "single" / "model.safetensors", framework="pt") as f:
        assert f.metadata() == {"format": "pt"}

    out = tmp_path / "sharded"
    ref.save_model(tied, out, layout="v5", max_shard_size=300_000)
    assert not (out / "model.safetensors").exists()
    index = json.loads((out / "model.safetensors.index.json").read_text())
    files = sorted(set(index["weight_map"].values()))
    n = len(files)
    assert n > 2 and files == [f"model-{i:05d}-of-{n:05d}.safetensors" for i in range(1, n + 1)]
    keys = ref.saved_keys(out)
    assert sorted(index["weight_map"]) == keys
    assert "lm_head.weight" not in keys
    assert all(k.startswith(("model.language_model.", "model.visual.")) for k in keys)
    state = tied.state_dict()
    assert index["metadata"]["total_size"] == sum(
        state[k].numel() * state[k].element_size() for k in keys
    )


def test_flat_config_has_hub_shape(tied, tmp_path):
    ref.save_model(tied, tmp_path, config_style="flat")
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert "text_config" not in cfg
    assert cfg["model_type"] == "qwen2_5_vl"
    assert cfg["architectures"] == ["Qwen2_5_VLForConditionalGeneration"]
    assert cfg["rope_scaling"] == {"type": "mrope", "mrope_section": [2, 3, 3]}
    assert cfg["vision_config"]["model_type"] == "qwen2_5_vl"
    assert (cfg["hidden_size"], cfg["num_hidden_layers"], cfg["vocab_size"]) == (64, 2, 151700)
    assert cfg["tie_word_embeddings"] is True and cfg["torch_dtype"] == "float32"
    assert cfg["image_token_id"] == ref.IMAGE_ID and cfg["eos_token_id"] == ref.EOS_ID


_RELOAD_BATCH = ref.build_batch([IMAGE_ROW, [("text", 5)]], seed=2)
_ORIGINAL_LOGITS: dict[bool, np.ndarray] = {}


@pytest.mark.parametrize("config_style", ["v5", "flat"])
@pytest.mark.parametrize("layout", ["legacy", "v5"])
@pytest.mark.parametrize("tie", [False, True], ids=["untied", "tied"])
def test_transformers_reloads_every_layout_exactly(
    untied, tied, tmp_path, layout, config_style, tie
):
    model = tied if tie else untied
    shard = 300_000 if tie else None
    ref.save_model(model, tmp_path, layout=layout, max_shard_size=shard, config_style=config_style)
    reloaded = _reload(tmp_path)
    assert reloaded.config.tie_word_embeddings == tie
    rc, oc = reloaded.config.text_config, model.config.text_config
    assert rc.rope_parameters["mrope_section"] == oc.rope_parameters["mrope_section"]
    assert rc.rope_parameters["rope_theta"] == oc.rope_parameters["rope_theta"]
    for field in _VISION_FIELDS:
        assert getattr(reloaded.config.vision_config, field) == getattr(
            model.config.vision_config, field
        ), field
    if tie not in _ORIGINAL_LOGITS:
        _ORIGINAL_LOGITS[tie] = ref.hf_logits(model, _RELOAD_BATCH)
    np.testing.assert_array_equal(ref.hf_logits(reloaded, _RELOAD_BATCH), _ORIGINAL_LOGITS[tie])


def test_bf16_reload_matches_in_memory_model(tmp_path):
    model = ref.make_model(ref.tiny_config(), seed=5, dtype=torch.bfloat16)
    ref.save_model(model, tmp_path, config_style="flat")
    assert json.loads((tmp_path / "config.json").read_text())["torch_dtype"] == "bfloat16"
    reloaded = _reload(tmp_path)
    assert reloaded.dtype == torch.bfloat16  # 5.x loads in the checkpoint dtype by default
    batch = ref.build_batch([IMAGE_ROW], seed=3)
    np.testing.assert_array_equal(ref.hf_logits(reloaded, batch), ref.hf_logits(model, batch))


def test_save_model_rejects_unknown_options(untied, tmp_path):
    with pytest.raises(ValueError):
        ref.save_model(untied, tmp_path, layout="orbax")
    with pytest.raises(ValueError):
        ref.save_model(untied, tmp_path, config_style="nested")


# ------------------------------------------------------------------------------------ inputs


def test_build_batch_structure():
    rows = MIXED_ROWS + [[("video", (2, 6, 4, 1.0)), ("text", 1)]]
    b = ref.build_batch(rows, padding_side="right", seed=7)
    ids, mask, types = b["input_ids"], b["attention_mask"], b["mm_token_type_ids"]
    lengths = [3 + 26 + 2 + 14 + 3, 6 + 8 + 2, 14 + 1]
    assert ids.shape == mask.shape == types.shape == (3, max(lengths))
    assert all(a.dtype == np.int64 for a in (ids, mask, types))
    assert mask.sum(1).tolist() == lengths
    assert (ids[mask == 0] == ref.PAD_ID).all() and (types[mask == 0] == 0).all()
    for i, n in enumerate(lengths):  # right padding: real tokens first
        assert mask[i, :n].all() and not mask[i, n:].any()

    np.testing.assert_array_equal(b["image_grid_thw"], [[1, 8, 12], [1, 4, 6]])
    np.testing.assert_array_equal(b["video_grid_thw"], [[3, 4, 4], [2, 6, 4]])
    assert b["image_grid_thw"].dtype == b["video_grid_thw"].dtype == np.int64
    assert b["second_per_grid_ts"].dtype == np.float32
    np.testing.assert_array_equal(b["second_per_grid_ts"], [0.5, 1.0])
    for pix, grid, token, kind in (
        ("pixel_values", "image_grid_thw", ref.IMAGE_ID, 1),
        ("pixel_values_videos", "video_grid_thw", ref.VIDEO_ID, 2),
    ):
        patches = int(b[grid].prod(1).sum())
        assert b[pix].shape == (patches, 1176) and b[pix].dtype == np.float32
        assert abs(b[pix].mean()) < 0.05 and abs(b[pix].std() - 1) < 0.05
        assert (ids == token).sum() == patches // 4 == (types == kind).sum()
        assert ((ids == token) == (types == kind)).all()
    starts, ends = (ids == ref.START_ID).sum(1), (ids == ref.END_ID).sum(1)
    assert starts.tolist() == ends.tolist() == [2, 1, 1]
    assert (types[ids == ref.START_ID] == 0).all() and (types[ids == ref.END_ID] == 0).all()
    text = ids[(mask == 1) & (types == 0) & (ids != ref.START_ID) & (ids != ref.END_ID)]
    assert text.size == 3 + 2 + 3 + 6 + 2 + 1 and text.min() >= 10 and text.max() < 1000
    # row 0: text, <start> 24 image pads <end>, text, <start> 12 video pads <end>, text
    assert ids[0, 3] == ref.START_ID and (ids[0, 4:28] == ref.IMAGE_ID).all()
    assert ids[0, 28] == ref.END_ID and (ids[0, 32:44] == ref.VIDEO_ID).all()


def test_build_batch_left_padding_and_determinism():
    right = ref.build_batch(MIXED_ROWS, padding_side="right", seed=4)
    left = ref.build_batch(MIXED_ROWS, padding_side="left", seed=4)
    n = int(left["attention_mask"][1].sum())
    pad = left["input_ids"].shape[1] - n
    assert pad > 0
    assert (left["attention_mask"][1, :pad] == 0).all() and left["attention_mask"][1, pad:].all()
    assert (left["input_ids"][1, :pad] == ref.PAD_ID).all()
    np.testing.assert_array_equal(left["input_ids"][1, pad:], right["input_ids"][1, :n])
    np.testing.assert_array_equal(left["input_ids"][0], right["input_ids"][0])  # longest row
    for k in ("pixel_values", "pixel_values_videos", "image_grid_thw", "second_per_grid_ts"):
        np.testing.assert_array_equal(left[k], right[k])
    again = ref.build_batch(MIXED_ROWS, padding_side="left", seed=4)
    assert all(np.array_equal(left[k], again[k]) for k in left)
    other = ref.build_batch(MIXED_ROWS, padding_side="left", seed=5)
    assert not np.array_equal(left["pixel_values"], other["pixel_values"])


def test_build_batch_omits_absent_modalities():
    text = ref.build_batch([[("text", 5)], [("text", 2)]])
    assert set(text) == {"input_ids", "attention_mask", "mm_token_type_ids"}
    image = ref.build_batch([IMAGE_ROW])
    assert set(image) == set(text) | {"pixel_values", "image_grid_thw"}
    video = ref.build_batch([[("video", (2, 4, 4, 1.0))]])
    assert set(video) == set(text) | {"pixel_values_videos", "video_grid_thw", "second_per_grid_ts"}


def test_build_batch_rejects_odd_grids():
    with pytest.raises(ValueError, match="even"):
        ref.build_batch([[("image", (3, 4))]])
    with pytest.raises(ValueError, match="segment"):
        ref.build_batch([[("audio", 3)]])


# -------------------------------------------------------------------------------- references


def test_rope_index_of_a_video_row(untied):
    row = [("text", 2), ("video", (3, 4, 4, 0.75)), ("text", 1)]
    b = ref.build_batch([row, [("text", 30)]], padding_side="left")
    pos, delta = ref.hf_rope_index(untied, b)
    assert pos.shape == (3, 2, 30) and pos.dtype == np.int64
    assert delta.shape == (2, 1) and delta.dtype == np.int64
    # 2 text ids + <start> -> 0..2. Video grid 3x2x2 merged at cur=3: T = 3 + int(t * 2 * 0.75)
    # = 3, 4, 6; H, W = 3 + (0, 1). Then cur += max(4, 4) / 2 = 5: <end> at 5, text at 6.
    t_ax = np.repeat([3, 4, 6], 4)
    h_ax = np.tile(np.repeat([3, 4], 2), 3)
    w_ax = np.tile([3, 4], 6)
    want = np.stack([np.r_[0, 1, 2, ax, 5, 6] for ax in (t_ax, h_ax, w_ax)])
    pad = 30 - 17
    np.testing.assert_array_equal(pos[:, 0, pad:], want)
    assert (pos[:, 0, :pad] == 0).all()
    np.testing.assert_array_equal(pos[:, 1], np.broadcast_to(np.arange(30), (3, 30)))
    assert delta[:, 0].tolist() == [7 - 17, 0]


def test_hf_logits_mixed_left_padded_batch_matches_unpadded_rows(untied):
    b = ref.build_batch(MIXED_ROWS, padding_side="left", seed=6)
    logits = ref.hf_logits(untied, b)
    assert logits.shape == b["input_ids"].shape + (151700,) and logits.dtype == np.float32
    real = b["attention_mask"].astype(bool)
    assert np.isfinite(logits[real]).all() and logits[real].std() > 1e-2
    # Row by row without padding: same logits (positions are counted over real tokens).
    images = np.cumsum([0] + [int(g.prod()) for g in b["image_grid_thw"]])
    for i, row in enumerate(MIXED_ROWS):
        alone = ref.build_batch([row], seed=6)
        alone["input_ids"] = b["input_ids"][i : i + 1, real[i]]
        alone["pixel_values"] = b["pixel_values"][images[i] : images[i + 1]]
        if "pixel_values_videos" in alone:
            alone["pixel_values_videos"] = b["pixel_values_videos"]
        expected = ref.hf_logits(untied, alone)[0]
        np.testing.assert_allclose(logits[i, real[i]], expected, rtol=0, atol=2e-6)


def test_hf_logits_text_only_uses_positions_over_real_tokens(untied):
    b = ref.build_batch([[("text", 17)], [("text", 9)]], padding_side="left", seed=8)
    pos, delta = ref.hf_rope_index(untied, b)
    np.testing.assert_array_equal(pos[:, 1, 8:], np.broadcast_to(np.arange(9), (3, 9)))
    assert (pos[:, 1, :8] == 0).all() and (delta == 0).all()
    logits = ref.hf_logits(untied, b)
    alone = ref.hf_logits(untied, {k: v[1:, 8:] for k, v in b.items()})
    np.testing.assert_allclose(logits[1, 8:], alone[0], rtol=0, atol=2e-6)
    # Without mm_token_type_ids, 5.24 silently drops 3-D M-RoPE for images: a visible change.
    img = ref.build_batch([IMAGE_ROW], seed=8)
    no_types = {k: v for k, v in img.items() if k != "mm_token_type_ids"}
    with torch.no_grad():
        t = {k: torch.from_numpy(v) for k, v in no_types.items()}
        fallback = untied(**t).logits.numpy()
    assert np.abs(fallback - ref.hf_logits(untied, img)).max() > 1e-3


def test_hf_vision_features_are_the_merged_tower_output(untied):
    b = ref.build_batch([IMAGE_ROW, [("image", (8, 12))]], seed=9)
    feats = ref.hf_vision_features(untied, b["pixel_values"], b["image_grid_thw"])
    assert feats.shape == (24 // 4 + 96 // 4, 64) and feats.dtype == np.float32
    with torch.no_grad():
        parts = untied.model.get_image_features(
            torch.from_numpy(b["pixel_values"]), torch.from_numpy(b["image_grid_thw"])
        ).pooler_output
    np.testing.assert_array_equal(feats, torch.cat(parts).numpy())


def test_torch_to_numpy_bf16_is_bit_exact():
    t = torch.randn(5, 7).to(torch.bfloat16)
    a = ref.torch_to_numpy(t)
    assert a.dtype == ml_dtypes.bfloat16
    np.testing.assert_array_equal(a.astype(np.float32), t.float().numpy())
    b = ref.torch_to_numpy(torch.randn(3, requires_grad=True))
    assert b.dtype == np.float32
