"""The transformers side of the parity tests: tiny random Qwen2.5-VL models, the on-disk layouts
they can be saved in, processor-shaped input batches, and reference logits (eager PyTorch)."""

from __future__ import annotations

import json
import os

import ml_dtypes
import numpy as np
import torch
from safetensors.torch import save_file
from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

IMAGE_ID, VIDEO_ID, START_ID, END_ID = 151655, 151656, 151652, 151653
BOS_ID, EOS_ID, PAD_ID = 151643, 151645, 151643
PATCH_DIM = 3 * 2 * 14 * 14


def tiny_config(
    *,
    tie_word_embeddings=False,
    num_attention_heads=4,
    num_key_value_heads=2,
    vocab_size=151700,
    hidden_size=64,
    num_hidden_layers=2,
    vision_depth=3,
    fullatt_block_indexes=(1,),
    mrope_section=(2, 3, 3),
    tokens_per_second=2,
    window_size=112,
) -> Qwen2_5_VLConfig:
    head_dim = hidden_size // num_attention_heads
    assert sum(mrope_section) * 2 == head_dim, "mrope_section must sum to head_dim / 2"
    cfg = Qwen2_5_VLConfig(
        text_config=dict(
            vocab_size=vocab_size,
            hidden_size=hidden_size,
            intermediate_size=128,
            num_hidden_layers=num_hidden_layers,
            num_attention_heads=num_attention_heads,
            num_key_value_heads=num_key_value_heads,
            max_position_embeddings=1024,
            rms_norm_eps=1e-6,
            bos_token_id=BOS_ID,
            eos_token_id=EOS_ID,
            rope_parameters={
                "rope_type": "default",
                "rope_theta": 1e6,
                "mrope_section": list(mrope_section),
            },
            tie_word_embeddings=tie_word_embeddings,
        ),
        vision_config=dict(
            depth=vision_depth,
            hidden_size=32,
            intermediate_size=48,
            num_heads=2,
            out_hidden_size=hidden_size,
            patch_size=14,
            temporal_patch_size=2,
            spatial_merge_size=2,
            window_size=window_size,
            fullatt_block_indexes=list(fullatt_block_indexes),
            tokens_per_second=tokens_per_second,
        ),
        image_token_id=IMAGE_ID,
        video_token_id=VIDEO_ID,
        vision_start_token_id=START_ID,
        vision_end_token_id=END_ID,
        tie_word_embeddings=tie_word_embeddings,
    )
    cfg._attn_implementation = "eager"
    return cfg


_NORM_SUFFIXES = ("norm.weight", "norm1.weight", "norm2.weight", "ln_q.weight", "layernorm.weight")


def make_model(
    config: Qwen2_5_VLConfig, seed: int = 0, dtype: torch.dtype = torch.float32
) -> Qwen2_5_VLForConditionalGeneration:
    """A random model with randomised norm weights (init is 1) and biases (init is 0)."""
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(_NORM_SUFFIXES):
                p.uniform_(0.5, 1.5)
            elif name.endswith(".bias"):
                p.normal_(0.0, 0.02)
    if config.tie_word_embeddings:
        assert model.lm_head.weight is model.model.language_model.embed_tokens.weight
    return model.to(dtype)


def _legacy_to_v5(key: str) -> str:
    if key.startswith("visual."):
        return "model." + key
    if key.startswith("model.") and not key.startswith(("model.language_model.", "model.visual.")):
        return "model.language_model." + key[len("model.") :]
    return key


def save_model(
    model: Qwen2_5_VLForConditionalGeneration,
    out_dir,
    *,
    layout: str = "legacy",
    max_shard_size: int | None = None,
    config_style: str = "v5",
) -> None:
    """Saves in the legacy key layout (what 5.x save_pretrained writes) or the in-memory 5.x
    layout (model.language_model.*, model.visual.*), single-file or sharded, with a nested (5.x)
    or flat (Hub 4.x) config.json."""
    out_dir = os.fspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    kw = {"max_shard_size": max_shard_size} if max_shard_size else {}
    model.save_pretrained(out_dir, **kw)
    if layout == "v5":
        for name in os.listdir(out_dir):
            if name.endswith(".safetensors") or name.endswith(".index.json"):
                os.remove(os.path.join(out_dir, name))
        state = {k: v.contiguous() for k, v in model.state_dict().items()}
        if model.config.tie_word_embeddings:
            state.pop("lm_head.weight")
        state = {_legacy_to_v5(k): v for k, v in state.items()}
        assert all(
            k.startswith(("model.language_model.", "model.visual.", "lm_head.")) for k in state
        )
        _save_sharded(state, out_dir, max_shard_size)
    elif layout != "legacy":
        raise ValueError(layout)
    if config_style == "flat":
        _write_flat_config(model.config, out_dir)


def _save_sharded(state: dict[str, torch.Tensor], out_dir: str, max_bytes: int | None) -> None:
    names = sorted(state)
    if not max_bytes:
        save_file(state, os.path.join(out_dir, "model.safetensors"), metadata={"format": "pt"})
        return
    shards, used = [[]], 0
    for n in names:
        size = state[n].numel() * state[n].element_size()
        if shards[-1] and used + size > max_bytes:
            shards.append([])
            used = 0
        shards[-1].append(n)
        used += size
    weight_map = {}
    for i, shard in enumerate(shards):
        fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file(
            {n: state[n] for n in shard}, os.path.join(out_dir, fname), metadata={"format": "pt"}
        )
        weight_map.update(dict.fromkeys(shard, fname))
    total = sum(t.numel() * t.element_size() for t in state.values())
    with open(os.path.join(out_dir, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f)


def _write_flat_config(config: Qwen2_5_VLConfig, out_dir: str) -> None:
    t, v = config.text_config, config.vision_config
    flat = {
        "architectures": ["Qwen2_5_VLForConditionalGeneration"],
        "model_type": "qwen2_5_vl",
        "attention_dropout": 0.0,
        "bos_token_id": t.bos_token_id,
        "eos_token_id": t.eos_token_id,
        "hidden_act": t.hidden_act,
        "hidden_size": t.hidden_size,
        "initializer_range": 0.02,
        "intermediate_size": t.intermediate_size,
        "max_position_embeddings": t.max_position_embeddings,
        "max_window_layers": t.num_hidden_layers,
        "num_attention_heads": t.num_attention_heads,
        "num_hidden_layers": t.num_hidden_layers,
        "num_key_value_heads": t.num_key_value_heads,
        "rms_norm_eps": t.rms_norm_eps,
        "rope_theta": t.rope_parameters["rope_theta"],
        "sliding_window": 32768,
        "use_sliding_window": False,
        "tie_word_embeddings": config.tie_word_embeddings,
        "torch_dtype": str(t.dtype or "float32").replace("torch.", ""),
        "use_cache": True,
        "vocab_size": t.vocab_size,
        "rope_scaling": {"type": "mrope", "mrope_section": t.rope_parameters["mrope_section"]},
        "image_token_id": config.image_token_id,
        "video_token_id": config.video_token_id,
        "vision_start_token_id": config.vision_start_token_id,
        "vision_end_token_id": config.vision_end_token_id,
        "vision_config": {
            "model_type": "qwen2_5_vl",
            "depth": v.depth,
            "hidden_act": v.hidden_act,
            "hidden_size": v.hidden_size,
            "intermediate_size": v.intermediate_size,
            "num_heads": v.num_heads,
            "in_chans": v.in_channels,
            "out_hidden_size": v.out_hidden_size,
            "patch_size": v.patch_size,
            "spatial_merge_size": v.spatial_merge_size,
            "spatial_patch_size": v.patch_size,
            "temporal_patch_size": v.temporal_patch_size,
            "window_size": v.window_size,
            "fullatt_block_indexes": list(v.fullatt_block_indexes),
            "tokens_per_second": v.tokens_per_second,
        },
    }
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(flat, f, indent=2)


def build_batch(
    rows, *, padding_side: str = "right", seed: int = 0, vocab_for_text: int = 1000
) -> dict[str, np.ndarray]:
    """Processor-shaped inputs with random text ids and random pixel values.

    rows: per row a list of ("text", n), ("image", (gh, gw)) or ("video", (gt, gh, gw, spg)).
    """
    rng = np.random.default_rng(seed)
    seqs, img_grids, vid_grids, spgs = [], [], [], []
    for row in rows:
        ids: list[int] = []
        for kind, val in row:
            if kind == "text":
                ids += rng.integers(10, vocab_for_text, val).tolist()
            elif kind == "image":
                gh, gw = val
                img_grids.append([1, gh, gw])
                ids += [START_ID] + [IMAGE_ID] * (gh * gw // 4) + [END_ID]
            elif kind == "video":
                gt, gh, gw, spg = val
                vid_grids.append([gt, gh, gw])
                spgs.append(spg)
                ids += [START_ID] + [VIDEO_ID] * (gt * gh * gw // 4) + [END_ID]
            else:
                raise ValueError(kind)
        seqs.append(ids)
    length = max(map(len, seqs))
    input_ids = np.full((len(seqs), length), PAD_ID, np.int64)
    mask = np.zeros((len(seqs), length), np.int64)
    for i, ids in enumerate(seqs):
        sl = slice(length - len(ids), length) if padding_side == "left" else slice(0, len(ids))
        input_ids[i, sl] = ids
        mask[i, sl] = 1
    types = np.zeros_like(input_ids)
    types[input_ids == IMAGE_ID] = 1
    types[input_ids == VIDEO_ID] = 2
    out = {"input_ids": input_ids, "attention_mask": mask, "mm_token_type_ids": types}
    if img_grids:
        g = np.array(img_grids, np.int64)
        out["image_grid_thw"] = g
        out["pixel_values"] = rng.standard_normal((int(g.prod(1).sum()), PATCH_DIM)).astype(
            np.float32
        )
    if vid_grids:
        g = np.array(vid_grids, np.int64)
        out["video_grid_thw"] = g
        out["pixel_values_videos"] = rng.standard_normal((int(g.prod(1).sum()), PATCH_DIM)).astype(
            np.float32
        )
        out["second_per_grid_ts"] = np.array(spgs, np.float32)
    return out


def hf_rope_index(model, batch) -> tuple[np.ndarray, np.ndarray]:
    t = {k: torch.from_numpy(v) for k, v in batch.items()}
    pos, delta = model.model.get_rope_index(
        t["input_ids"],
        mm_token_type_ids=t["mm_token_type_ids"],
        image_grid_thw=t.get("image_grid_thw"),
        video_grid_thw=t.get("video_grid_thw"),
        second_per_grid_ts=t.get("second_per_grid_ts"),
        attention_mask=t["attention_mask"],
    )
    return pos.numpy(), delta.numpy()


def hf_logits(model, batch) -> np.ndarray:
    """Eager PyTorch logits [B, T, V] as float32 numpy.

    With no image or video, transformers 5.24 uses arange positions that ignore padding, so the
    get_rope_index positions (counted over real tokens, the semantics we port) are passed in.
    """
    dtype = next(model.parameters()).dtype
    t = {k: torch.from_numpy(v) for k, v in batch.items()}
    for k in ("pixel_values", "pixel_values_videos"):
        if k in t:
            t[k] = t[k].to(dtype)
    model.model.rope_deltas = None
    if "image_grid_thw" not in t and "video_grid_thw" not in t:
        t["position_ids"] = torch.from_numpy(hf_rope_index(model, batch)[0])
    with torch.no_grad():
        logits = model(**t).logits
    return torch_to_numpy(logits).astype(np.float32)


def hf_vision_features(model, pixel_values: np.ndarray, grid_thw: np.ndarray) -> np.ndarray:
    dtype = next(model.parameters()).dtype
    with torch.no_grad():
        out = model.model.visual(
            torch.from_numpy(pixel_values).to(dtype),
            grid_thw=torch.from_numpy(np.asarray(grid_thw, np.int64)),
        )
    return torch_to_numpy(out.pooler_output).astype(np.float32)


def torch_to_numpy(t: torch.Tensor) -> np.ndarray:
    t = t.detach().cpu()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return t.numpy()
