"""The transformers side of the parity tests.

Tiny random Qwen2.5-VL models, the on-disk layouts they can be saved in, input batches with the
structure of real processor outputs (random token ids and pixels), and reference logits, M-RoPE
positions and vision features computed by transformers' eager PyTorch implementation.

Everything runs offline: no hub, no tokenizer, no image processor.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

import ml_dtypes
import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

# Real Qwen2.5-VL token ids, so that a port cannot pass by hard-coding HF's test ids.
IMAGE_ID, VIDEO_ID, START_ID, END_ID = 151655, 151656, 151652, 151653
VISION_PAD_ID = 151654
BOS_ID, EOS_ID = 151643, 151645
PAD_ID = 151643  # the processor pads with <|endoftext|>
PATCH_DIM = 3 * 2 * 14 * 14  # in_channels * temporal_patch_size * patch_size**2 = 1176

_NORM_SUFFIXES = ("norm.weight", "norm1.weight", "norm2.weight", "ln_q.weight", "layernorm.weight")
_LEGACY_PREFIXES = ("model.embed_tokens.", "model.layers.", "model.norm.", "visual.", "lm_head.")
_V5_PREFIXES = ("model.language_model.", "model.visual.", "lm_head.")

Model = Qwen2_5_VLForConditionalGeneration
Batch = dict[str, np.ndarray]
# The vision inputs of a batch, as the processor names them (what urt_jax's model also takes).
MEDIA_KEYS = (
    "pixel_values",
    "image_grid_thw",
    "pixel_values_videos",
    "video_grid_thw",
    "second_per_grid_ts",
)


# --------------------------------------------------------------------------------------------
# Config and model
# --------------------------------------------------------------------------------------------


def tiny_config(
    *,
    tie_word_embeddings: bool = False,
    num_attention_heads: int = 4,
    num_key_value_heads: int = 2,
    vocab_size: int = 151700,
    hidden_size: int = 64,
    num_hidden_layers: int = 2,
    vision_depth: int = 3,
    fullatt_block_indexes: Sequence[int] = (1,),
    mrope_section: Sequence[int] = (2, 3, 3),
    tokens_per_second: int = 2,
    window_size: int = 112,
) -> Qwen2_5_VLConfig:
    """A tiny Qwen2.5-VL config (5.x nested style) with the real special token ids.

    Vision tower: hidden 32, 2 heads, intermediate 48, patch 14, temporal patch 2, merge 2,
    out_hidden_size = hidden_size. Eager attention, so logits are comparable bit for bit.
    """
    if hidden_size % num_attention_heads:
        raise ValueError(f"hidden_size {hidden_size} not divisible by {num_attention_heads} heads")
    if num_attention_heads % num_key_value_heads:
        raise ValueError("num_attention_heads must be a multiple of num_key_value_heads")
    head_dim = hidden_size // num_attention_heads
    if 2 * sum(mrope_section) != head_dim:
        raise ValueError(f"sum(mrope_section)={sum(mrope_section)} must equal head_dim/2")
    if max(fullatt_block_indexes, default=-1) >= vision_depth:
        raise ValueError("fullatt_block_indexes must be < vision_depth")
    if window_size // 2 // 14 < 1:
        raise ValueError("window_size // spatial_merge_size // patch_size must be >= 1")
    if vocab_size <= VIDEO_ID:
        raise ValueError(f"vocab_size must exceed the special token ids (max {VIDEO_ID})")
    cfg = Qwen2_5_VLConfig(
        text_config=dict(
            vocab_size=vocab_size,
            hidden_size=hidden_size,
            intermediate_size=128,
            num_hidden_layers=num_hidden_layers,
            num_attention_heads=num_attention_heads,
            num_key_value_heads=num_key_value_heads,
            hidden_act="silu",
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
            hidden_act="silu",
            in_channels=3,
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


def make_model(
    config: Qwen2_5_VLConfig,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    *,
    qk_gain: float = 1.0,
) -> Model:
    """A random model in eval mode, deterministic in `seed`.

    Linear and embedding weights keep the HF init (normal, std 0.02: logits std is about 0.17).
    RMSNorm weights (init 1) are drawn from U[0.5, 1.5] and biases (init 0) from N(0, 0.02), so
    that a port that drops a norm weight or a bias does not match by accident.

    With std 0.02 the attention is nearly uniform, which hides position bugs (swapping the H and
    W M-RoPE axes moves the logits by only ~2e-4). `qk_gain` multiplies the query and key weights
    (text q_proj/k_proj, vision qkv q and k rows), sharpening attention by qk_gain**2; 4 makes
    that bug 3.8e-3 (measured on a left-padded image + video batch). The default 1 leaves the HF
    init unchanged.
    """
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(_NORM_SUFFIXES):
                p.uniform_(0.5, 1.5)
            elif name.endswith(".bias"):
                p.normal_(0.0, 0.02)
        if qk_gain != 1.0:
            for name, p in model.named_parameters():
                if name.endswith(("q_proj.weight", "k_proj.weight")):
                    p.mul_(qk_gain)
                elif name.endswith("attn.qkv.weight"):  # rows are [q; k; v]
                    p[: 2 * p.shape[0] // 3].mul_(qk_gain)
    # Cast the parameters only. `Module.to(dtype)` would also cast the RoPE `inv_freq` buffers to
    # bf16, whereas `from_pretrained(dtype=torch.bfloat16)` keeps them in float32 (logits then
    # differ by ~5e-3); the reference must be the model as transformers loads it.
    fp32_buffers = {n: b.clone() for n, b in model.named_buffers() if b.is_floating_point()}
    model = model.to(dtype)
    for name, buf in fp32_buffers.items():
        owner, _, leaf = name.rpartition(".")
        model.get_submodule(owner)._buffers[leaf] = buf
    if config.tie_word_embeddings:
        assert model.lm_head.weight is model.model.language_model.embed_tokens.weight
    else:
        assert model.lm_head.weight is not model.model.language_model.embed_tokens.weight
    return model


# --------------------------------------------------------------------------------------------
# Saving
# --------------------------------------------------------------------------------------------


def save_model(
    model: Model,
    out_dir: str | os.PathLike,
    *,
    layout: str = "legacy",
    max_shard_size: int | str | None = None,
    config_style: str = "v5",
) -> None:
    """Writes a checkpoint directory that `from_pretrained` (HF or ours) can load.

    layout "legacy": `save_pretrained`, which in 5.x writes the Hub key layout (`model.layers.*`,
      `model.embed_tokens.*`, `visual.*`, and no `lm_head.weight` when tied); checked after writing.
    layout "v5": the in-memory 5.x names (`model.language_model.*`, `model.visual.*`,
      `lm_head.weight` unless tied) written with safetensors, sharded into
      `model-0000i-of-0000n.safetensors` + `model.safetensors.index.json` when `max_shard_size`
      (bytes) is given.
    config_style "v5": the nested config.json 5.x writes; "flat": the Hub (4.x) style, text fields
      at the top level with `rope_scaling={"type": "mrope", ...}` and no `text_config`.
    """
    if layout not in ("legacy", "v5"):
        raise ValueError(f"layout must be 'legacy' or 'v5', not {layout!r}")
    if config_style not in ("v5", "flat"):
        raise ValueError(f"config_style must be 'v5' or 'flat', not {config_style!r}")
    if layout == "v5" and max_shard_size is not None and not isinstance(max_shard_size, int):
        raise TypeError("for layout 'v5', max_shard_size is an int number of bytes")
    out_dir = os.fspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    for name in os.listdir(out_dir):  # no stale shards from an earlier save
        if name.endswith((".safetensors", ".safetensors.index.json")):
            os.remove(os.path.join(out_dir, name))

    kw = {} if max_shard_size is None else {"max_shard_size": max_shard_size}
    model.save_pretrained(out_dir, **kw)  # also writes config.json and generation_config.json
    tied = bool(model.config.tie_word_embeddings)
    if layout == "legacy":
        keys = saved_keys(out_dir)
        bad = [k for k in keys if not k.startswith(_LEGACY_PREFIXES)]
        if bad or (tied and "lm_head.weight" in keys):
            raise RuntimeError(f"save_pretrained did not write the legacy layout: {bad[:5]}")
    else:
        for name in os.listdir(out_dir):
            if name.endswith((".safetensors", ".safetensors.index.json")):
                os.remove(os.path.join(out_dir, name))
        state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
        if tied:
            state.pop("lm_head.weight")
        bad = [k for k in state if not k.startswith(_V5_PREFIXES)]
        if bad:
            raise RuntimeError(f"unexpected in-memory parameter names: {bad[:5]}")
        _save_sharded(state, out_dir, max_shard_size)

    if config_style == "flat":
        with open(os.path.join(out_dir, "config.json"), "w") as f:
            json.dump(flat_config_dict(model), f, indent=2, sort_keys=True)


def save_and_load_ours(model: Model, out_dir: str | os.PathLike):
    """Saves ``model`` (legacy layout) and loads it with urt_jax at fp32: (model, ours), the
    pair a parity test compares."""
    import urt_jax

    save_model(model, out_dir)
    return model, urt_jax.from_pretrained(out_dir, dtype="float32")


def saved_keys(out_dir: str | os.PathLike) -> list[str]:
    """The tensor names in every `*.safetensors` file of a checkpoint directory, sorted."""
    out_dir = os.fspath(out_dir)
    keys: list[str] = []
    for name in sorted(os.listdir(out_dir)):
        if name.endswith(".safetensors"):
            with safe_open(os.path.join(out_dir, name), framework="pt") as f:
                keys += list(f.keys())
    return sorted(keys)


def _save_sharded(state: dict[str, torch.Tensor], out_dir: str, max_bytes: int | None) -> None:
    if not max_bytes:
        save_file(state, os.path.join(out_dir, "model.safetensors"), metadata={"format": "pt"})
        return
    shards: list[list[str]] = [[]]
    used = 0
    for n in sorted(state):  # a tensor larger than max_bytes gets a shard of its own
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
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    with open(os.path.join(out_dir, "model.safetensors.index.json"), "w") as f:
        json.dump(index, f, indent=2)


def flat_config_dict(model: Model) -> dict[str, Any]:
    """The config.json of `model` in the flat style of the published Hub checkpoints (4.41.2)."""
    config = model.config
    t, v = config.text_config, config.vision_config
    dtype = str(next(model.parameters()).dtype).replace("torch.", "")
    return {
        "architectures": ["Qwen2_5_VLForConditionalGeneration"],
        "model_type": "qwen2_5_vl",
        "transformers_version": "4.41.2",
        "attention_dropout": float(t.attention_dropout or 0.0),
        "bos_token_id": t.bos_token_id,
        "eos_token_id": t.eos_token_id,
        "hidden_act": t.hidden_act,
        "hidden_size": t.hidden_size,
        "initializer_range": t.initializer_range,
        "intermediate_size": t.intermediate_size,
        "max_position_embeddings": t.max_position_embeddings,
        "max_window_layers": t.num_hidden_layers,
        "num_attention_heads": t.num_attention_heads,
        "num_hidden_layers": t.num_hidden_layers,
        "num_key_value_heads": t.num_key_value_heads,
        "rms_norm_eps": t.rms_norm_eps,
        "rope_theta": t.rope_parameters["rope_theta"],
        "rope_scaling": {
            "type": "mrope",
            "mrope_section": list(t.rope_parameters["mrope_section"]),
        },
        "sliding_window": 32768,
        "use_sliding_window": False,
        "tie_word_embeddings": bool(config.tie_word_embeddings),
        "torch_dtype": dtype,
        "use_cache": True,
        "vocab_size": t.vocab_size,
        "image_token_id": config.image_token_id,
        "video_token_id": config.video_token_id,
        "vision_start_token_id": config.vision_start_token_id,
        "vision_end_token_id": config.vision_end_token_id,
        "vision_token_id": VISION_PAD_ID,
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


# --------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------


def build_batch(
    rows: Sequence[Sequence[tuple[str, Any]]],
    *,
    padding_side: str = "right",
    seed: int = 0,
    vocab_for_text: int = 1000,
) -> Batch:
    """Inputs shaped like the HF processor's output, with random text ids and random pixels.

    Each row is a list of segments:
      ("text", n)                        n random ids in [10, vocab_for_text)
      ("image", (gh, gw))                grid (1, gh, gw): vision_start, gh*gw/4 image pads, end
      ("video", (gt, gh, gw, sec_per_t)) grid (gt, gh, gw): vision_start, gt*gh*gw/4 video pads, end
    Returns int64 input_ids / attention_mask / mm_token_type_ids [B, T] (pad id 151643 on
    `padding_side`; type 0 text incl. vision_start/end, 1 image pad, 2 video pad) and, only when
    present, float32 pixel_values [sum t*h*w, 1176] ~ N(0, 1) (images in batch-row order, then
    segment order), int64 image_grid_thw [n_img, 3], float32 pixel_values_videos, int64
    video_grid_thw [n_vid, 3] and float32 second_per_grid_ts [n_vid].
    """
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', not {padding_side!r}")
    if not 10 < vocab_for_text <= START_ID:
        raise ValueError("vocab_for_text must be in (10, 151652]")
    if not rows:
        raise ValueError("rows is empty")
    rng = np.random.default_rng(seed)
    seqs: list[list[int]] = []
    img_grids: list[list[int]] = []
    vid_grids: list[list[int]] = []
    spgs: list[float] = []
    for row in rows:
        ids: list[int] = []
        for kind, val in row:
            if kind == "text":
                if int(val) < 0:
                    raise ValueError(f"negative text length {val}")
                ids += rng.integers(10, vocab_for_text, int(val)).tolist()
            elif kind == "image":
                gh, gw = (int(x) for x in val)
                _check_grid(1, gh, gw)
                img_grids.append([1, gh, gw])
                ids += [START_ID] + [IMAGE_ID] * (gh * gw // 4) + [END_ID]
            elif kind == "video":
                gt, gh, gw, spg = val
                gt, gh, gw = int(gt), int(gh), int(gw)
                _check_grid(gt, gh, gw)
                vid_grids.append([gt, gh, gw])
                spgs.append(float(spg))
                ids += [START_ID] + [VIDEO_ID] * (gt * gh * gw // 4) + [END_ID]
            else:
                raise ValueError(f"unknown segment kind {kind!r}")
        if not ids:
            raise ValueError("a row has no tokens")
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
    out: Batch = {"input_ids": input_ids, "attention_mask": mask, "mm_token_type_ids": types}
    if img_grids:
        g = np.array(img_grids, np.int64)
        out["pixel_values"] = rng.standard_normal((int(g.prod(1).sum()), PATCH_DIM)).astype(
            np.float32
        )
        out["image_grid_thw"] = g
    if vid_grids:
        g = np.array(vid_grids, np.int64)
        out["pixel_values_videos"] = rng.standard_normal((int(g.prod(1).sum()), PATCH_DIM)).astype(
            np.float32
        )
        out["video_grid_thw"] = g
        out["second_per_grid_ts"] = np.array(spgs, np.float32)
    return out


def _check_grid(t: int, h: int, w: int) -> None:
    if t < 1 or h < 2 or w < 2 or h % 2 or w % 2:
        raise ValueError(f"grid (t={t}, h={h}, w={w}): need t >= 1 and even h, w >= 2")


# --------------------------------------------------------------------------------------------
# References
# --------------------------------------------------------------------------------------------


def _to_torch(batch: Batch) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in batch.items()}


def hf_rope_index(model: Model, batch: Batch) -> tuple[np.ndarray, np.ndarray]:
    """transformers' M-RoPE positions: (position_ids [3, B, T] int64, rope_deltas [B, 1] int64).

    Pad positions are 0; the positions of real tokens are counted over the non-pad tokens.
    """
    t = _to_torch(batch)
    # In 5.x the second positional parameter is mm_token_type_ids (4.x: image_grid_thw), so
    # everything is passed by keyword.
    pos, delta = model.model.get_rope_index(
        input_ids=t["input_ids"],
        mm_token_type_ids=t["mm_token_type_ids"],
        image_grid_thw=t.get("image_grid_thw"),
        video_grid_thw=t.get("video_grid_thw"),
        second_per_grid_ts=t.get("second_per_grid_ts"),
        attention_mask=t.get("attention_mask"),
    )
    return pos.numpy().astype(np.int64), delta.numpy().astype(np.int64).reshape(-1, 1)


def hf_logits(model: Model, batch: Batch) -> np.ndarray:
    """Eager PyTorch logits [B, T, V] as float32 numpy; every key of `batch` is passed.

    With images or videos (and mm_token_type_ids) transformers computes the 3-D positions itself.
    Without, 5.24 falls back to arange positions that ignore padding, so the get_rope_index
    positions (counted over non-pad tokens: the semantics we port) are passed explicitly.
    """
    dtype = next(model.parameters()).dtype
    t = _to_torch(batch)
    for k in ("pixel_values", "pixel_values_videos"):
        if k in t:
            t[k] = t[k].to(dtype)
    model.model.rope_deltas = None  # a cache left by an earlier call or generate()
    if "position_ids" not in t and "image_grid_thw" not in t and "video_grid_thw" not in t:
        t["position_ids"] = torch.from_numpy(hf_rope_index(model, batch)[0])
    with torch.no_grad():
        logits = model(**t, use_cache=False).logits
    return torch_to_numpy(logits).astype(np.float32)


def hf_vision_features(model: Model, pixel_values: np.ndarray, grid_thw: np.ndarray) -> np.ndarray:
    """The merged vision tower output [sum t*h*w / 4, out_hidden_size] as float32 numpy, in
    placeholder-token order (what is scattered into the image/video pad positions)."""
    dtype = next(model.parameters()).dtype
    with torch.no_grad():
        out = model.model.visual(
            torch.from_numpy(np.ascontiguousarray(pixel_values)).to(dtype),
            grid_thw=torch.from_numpy(np.asarray(grid_thw, np.int64)),
        )
    return torch_to_numpy(out.pooler_output).astype(np.float32)


def torch_to_numpy(t: torch.Tensor) -> np.ndarray:
    """A CPU numpy copy; bfloat16 becomes ml_dtypes.bfloat16 (bit-exact, no float32 detour)."""
    t = t.detach().cpu()
    if t.dtype == torch.bfloat16:
        return t.contiguous().view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return t.numpy()
