"""Hugging Face checkpoints <-> urt_jax Qwen2.5-VL, both directions from one table.

Reads the legacy key layout of the published checkpoints (``model.layers.*``, ``visual.*``) and
the layout transformers 4.52+ keeps in memory (``model.language_model.*``, ``model.visual.*``),
single-file or sharded; writes the legacy layout (what transformers 5.x ``save_pretrained`` writes
and every loader reads). Tensors are read one at a time and, with a mesh, each device's shard as
its slice of the file; they are written one at a time: the whole model never sits in host memory.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import shutil
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from urt_jax.atomic import write_text
from urt_jax.model.config import ConfigError, Qwen25VLConfig
from urt_jax.model.layers import DTypePolicy
from urt_jax.model.qwen2_5_vl import Qwen25VL
from urt_jax.model.safetensors_io import SafetensorsCheckpoint, save_safetensors
from urt_jax.sharding.mesh import to_host, wait_for_writer, writes_here

log = logging.getLogger(__name__)

# Files a model directory may carry besides weights and config; copied on save.
AUX_FILES = (
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "chat_template.json",
    "chat_template.jinja",
    "preprocessor_config.json",
    "video_preprocessor_config.json",
    "processor_config.json",
)


class CheckpointError(ValueError):
    """A checkpoint whose tensors do not match its config (missing, wrong shape, unexpected)."""


# ------------------------------------------------------------------------------ the table
@dataclasses.dataclass(frozen=True)
class Transform:
    """How a HF tensor maps to an NNX parameter and back."""

    name: str
    to_nnx: Callable[[np.ndarray], np.ndarray]
    to_hf: Callable[[np.ndarray, tuple[int, ...]], np.ndarray]  # (param, hf_shape) -> tensor
    # The slice of the HF tensor that to_nnx turns into a given slice of the parameter; None
    # where no single slice does (the tensor is then read whole).
    hf_index: Callable[[tuple[slice, ...]], tuple[slice, ...] | None]


IDENTITY = Transform("identity", lambda a: a, lambda a, shape: a, lambda index: index)
LINEAR = Transform(  # torch [out, in] <-> [in, out]
    "linear", lambda a: a.T, lambda a, shape: a.T, lambda index: index[::-1]
)
CONV3D = Transform(  # torch Conv3d [D, C, T, p, p] <-> Dense kernel [C*T*p*p, D]
    "conv3d",
    lambda a: a.reshape(a.shape[0], -1).T,
    lambda a, shape: a.T.reshape(shape),
    lambda index: None,
)

_TEXT_LAYER_RULES = [
    ("self_attn.q_proj.weight", "self_attn.q_proj.kernel", LINEAR),
    ("self_attn.q_proj.bias", "self_attn.q_proj.bias", IDENTITY),
    ("self_attn.k_proj.weight", "self_attn.k_proj.kernel", LINEAR),
    ("self_attn.k_proj.bias", "self_attn.k_proj.bias", IDENTITY),
    ("self_attn.v_proj.weight", "self_attn.v_proj.kernel", LINEAR),
    ("self_attn.v_proj.bias", "self_attn.v_proj.bias", IDENTITY),
    ("self_attn.o_proj.weight", "self_attn.o_proj.kernel", LINEAR),
    ("mlp.gate_proj.weight", "mlp.gate_proj.kernel", LINEAR),
    ("mlp.up_proj.weight", "mlp.up_proj.kernel", LINEAR),
    ("mlp.down_proj.weight", "mlp.down_proj.kernel", LINEAR),
    ("input_layernorm.weight", "input_layernorm.weight", IDENTITY),
    ("post_attention_layernorm.weight", "post_attention_layernorm.weight", IDENTITY),
]
_VISION_BLOCK_RULES = [
    ("norm1.weight", "norm1.weight", IDENTITY),
    ("norm2.weight", "norm2.weight", IDENTITY),
    ("attn.qkv.weight", "attn.qkv.kernel", LINEAR),
    ("attn.qkv.bias", "attn.qkv.bias", IDENTITY),
    ("attn.proj.weight", "attn.proj.kernel", LINEAR),
    ("attn.proj.bias", "attn.proj.bias", IDENTITY),
    ("mlp.gate_proj.weight", "mlp.gate_proj.kernel", LINEAR),
    ("mlp.gate_proj.bias", "mlp.gate_proj.bias", IDENTITY),
    ("mlp.up_proj.weight", "mlp.up_proj.kernel", LINEAR),
    ("mlp.up_proj.bias", "mlp.up_proj.bias", IDENTITY),
    ("mlp.down_proj.weight", "mlp.down_proj.kernel", LINEAR),
    ("mlp.down_proj.bias", "mlp.down_proj.bias", IDENTITY),
]
_GLOBAL_RULES = [
    ("model.embed_tokens.weight", "language_model.embed_tokens.embedding", IDENTITY),
    ("model.norm.weight", "language_model.norm.weight", IDENTITY),
    ("visual.patch_embed.proj.weight", "visual.patch_embed.proj.kernel", CONV3D),
    ("visual.merger.ln_q.weight", "visual.merger.ln_q.weight", IDENTITY),
    ("visual.merger.mlp.0.weight", "visual.merger.fc1.kernel", LINEAR),
    ("visual.merger.mlp.0.bias", "visual.merger.fc1.bias", IDENTITY),
    ("visual.merger.mlp.2.weight", "visual.merger.fc2.kernel", LINEAR),
    ("visual.merger.mlp.2.bias", "visual.merger.fc2.bias", IDENTITY),
]


@dataclasses.dataclass(frozen=True)
class Rule:
    hf_key: str  # legacy layout name
    path: tuple[str | int, ...]  # NNX state path
    transform: Transform
    hf_shape: tuple[int, ...]
    layer: int | None = None  # index into the stacked parameter at ``path`` (decoder layers)


def _path(dotted: str) -> tuple[str | int, ...]:
    return tuple(int(p) if p.isdigit() else p for p in dotted.split("."))


def hf_shapes(config: Qwen25VLConfig) -> dict[str, tuple[int, ...]]:
    """The shape of every tensor of the legacy layout, from the config alone."""
    t, v = config.text, config.vision
    d, hd, f = t.hidden_size, t.head_dim, t.intermediate_size
    q, kv = t.num_attention_heads * hd, t.num_key_value_heads * hd
    vd, vf = v.hidden_size, v.intermediate_size
    ctx = vd * v.merge_unit
    shapes = {
        "model.embed_tokens.weight": (t.vocab_size, d),
        "model.norm.weight": (d,),
        "visual.patch_embed.proj.weight": (
            vd,
            v.in_channels,
            v.temporal_patch_size,
            v.patch_size,
            v.patch_size,
        ),
        "visual.merger.ln_q.weight": (vd,),
        "visual.merger.mlp.0.weight": (ctx, ctx),
        "visual.merger.mlp.0.bias": (ctx,),
        "visual.merger.mlp.2.weight": (v.out_hidden_size, ctx),
        "visual.merger.mlp.2.bias": (v.out_hidden_size,),
    }
    if not config.tie_word_embeddings:
        shapes["lm_head.weight"] = (t.vocab_size, d)
    layer = {
        "self_attn.q_proj.weight": (q, d),
        "self_attn.q_proj.bias": (q,),
        "self_attn.k_proj.weight": (kv, d),
        "self_attn.k_proj.bias": (kv,),
        "self_attn.v_proj.weight": (kv, d),
        "self_attn.v_proj.bias": (kv,),
        "self_attn.o_proj.weight": (d, q),
        "mlp.gate_proj.weight": (f, d),
        "mlp.up_proj.weight": (f, d),
        "mlp.down_proj.weight": (d, f),
        "input_layernorm.weight": (d,),
        "post_attention_layernorm.weight": (d,),
    }
    block = {
        "norm1.weight": (vd,),
        "norm2.weight": (vd,),
        "attn.qkv.weight": (3 * vd, vd),
        "attn.qkv.bias": (3 * vd,),
        "attn.proj.weight": (vd, vd),
        "attn.proj.bias": (vd,),
        "mlp.gate_proj.weight": (vf, vd),
        "mlp.gate_proj.bias": (vf,),
        "mlp.up_proj.weight": (vf, vd),
        "mlp.up_proj.bias": (vf,),
        "mlp.down_proj.weight": (vd, vf),
        "mlp.down_proj.bias": (vd,),
    }
    for i in range(t.num_hidden_layers):
        shapes.update({f"model.layers.{i}.{k}": s for k, s in layer.items()})
    for i in range(v.depth):
        shapes.update({f"visual.blocks.{i}.{k}": s for k, s in block.items()})
    return shapes


def conversion_rules(config: Qwen25VLConfig) -> list[Rule]:
    shapes = hf_shapes(config)
    rules = [(h, n, tr, None) for h, n, tr in _GLOBAL_RULES]
    if not config.tie_word_embeddings:
        rules.append(("lm_head.weight", "lm_head.kernel", LINEAR, None))
    for i in range(config.text.num_hidden_layers):  # the decoder layers are stacked
        rules += [
            (f"model.layers.{i}.{h}", f"language_model.layers.{n}", tr, i)
            for h, n, tr in _TEXT_LAYER_RULES
        ]
    for i in range(config.vision.depth):
        rules += [
            (f"visual.blocks.{i}.{h}", f"visual.blocks.{i}.{n}", tr, None)
            for h, n, tr in _VISION_BLOCK_RULES
        ]
    return [Rule(h, _path(n), tr, shapes[h], i) for h, n, tr, i in rules]


def rules_by_parameter(rules: list[Rule]) -> dict[tuple, list[Rule]]:
    """The rules of each NNX parameter, in layer order for a stacked one."""
    grouped: dict[tuple, list[Rule]] = {}
    for rule in rules:
        grouped.setdefault(rule.path, []).append(rule)
    for group in grouped.values():
        group.sort(key=lambda r: -1 if r.layer is None else r.layer)
    return grouped


_LAYOUT_RENAMES = [
    (re.compile(r"^model\.language_model\."), "model."),
    (re.compile(r"^model\.visual\."), "visual."),
]


def legacy_key(key: str) -> str:
    """Maps a 4.52+/5.x in-memory key to the legacy on-disk key (legacy keys pass through)."""
    for pattern, repl in _LAYOUT_RENAMES:
        if pattern.match(key):
            return pattern.sub(repl, key, count=1)
    return key


# ------------------------------------------------------------------------------ loading
def _abstract_model(config: Qwen25VLConfig, policy: DTypePolicy, remat: str, kernels: str):
    return nnx.eval_shape(
        lambda: Qwen25VL(config, dtype=policy, remat=remat, kernels=kernels, rngs=nnx.Rngs(0))
    )


def checkpoint_dtype(ckpt: SafetensorsCheckpoint) -> str:
    for key in ckpt.keys():
        dt = ckpt.dtype(key)
        if jnp.issubdtype(dt, jnp.floating):
            return jnp.dtype(dt).name
    return "float32"


def load_params_from_hf(
    model_dir: str,
    config: Qwen25VLConfig,
    abstract: Qwen25VL,
    mesh: jax.sharding.Mesh | None = None,
) -> nnx.State:
    """Fills the abstract model's parameter state from the safetensors in model_dir."""
    from urt_jax.sharding.rules import param_sharding

    ckpt = SafetensorsCheckpoint.open(model_dir)
    by_legacy: dict[str, str] = {}
    for key in ckpt.keys():
        lk = legacy_key(key)
        if lk in by_legacy:
            raise CheckpointError(
                f"{model_dir}: tensor {lk!r} is stored twice (as {by_legacy[lk]!r} and {key!r})"
            )
        by_legacy[lk] = key
    rules = conversion_rules(config)
    expected = {r.hf_key for r in rules}
    missing = [r.hf_key for r in rules if r.hf_key not in by_legacy]
    if missing:
        shapes = hf_shapes(config)
        listing = ", ".join(f"{k} {shapes[k]}" for k in missing[:5])
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise CheckpointError(
            f"{model_dir}: missing tensor(s) {listing}{more} "
            "(expected by config.json, not found in the safetensors files)"
        )
    ignorable = {"lm_head.weight"} if config.tie_word_embeddings else set()
    unexpected = sorted(k for k in by_legacy if k not in expected and k not in ignorable)
    if unexpected:
        log.warning(
            "%s: ignoring %d tensor(s) not used by Qwen2.5-VL: %s",
            model_dir,
            len(unexpected),
            ", ".join(unexpected[:5]),
        )

    _, abstract_state = nnx.split(abstract)
    flat = dict(nnx.to_flat_state(abstract_state))

    def checked_key(rule: Rule) -> str:
        key = by_legacy[rule.hf_key]
        found = tuple(ckpt.shape(key))
        if found != rule.hf_shape:
            raise CheckpointError(
                f"{model_dir}: tensor {key!r} has shape {found}, expected "
                f"{rule.hf_shape} from config.json"
            )
        return key

    def read(rule: Rule, dtype) -> np.ndarray:
        """The rule's whole tensor in the parameter layout and dtype, on the host."""
        return np.asarray(rule.transform.to_nnx(ckpt.get(checked_key(rule)))).astype(dtype)

    def place(rule: Rule, target, sharding: NamedSharding) -> jax.Array:
        """The rule's tensor on the mesh, each shard read from the file as just its slice;
        target: the abstract parameter (of all layers, when stacked)."""
        shape = target.shape[1:] if rule.layer is not None else target.shape
        dtype = target.dtype
        key, to_nnx = checked_key(rule), rule.transform.to_nnx

        def shard(index: tuple[slice, ...]) -> np.ndarray:
            hf_index = rule.transform.hf_index(index)
            if hf_index is None:
                return np.asarray(to_nnx(ckpt.get(key))[index]).astype(dtype)
            return np.asarray(to_nnx(ckpt.get_slice(key, hf_index))).astype(dtype)

        return jax.make_array_from_callback(shape, sharding, _once_per_index(shard))

    # one parameter at a time; a stacked one from its layers' tensors, each placed in its shards
    # as it is read and then stacked on the devices (never the whole stack in host memory)
    for path, group in rules_by_parameter(rules).items():
        var = flat[path]
        target = var.get_value() if hasattr(var, "get_value") else var.value
        sharding = param_sharding(var, mesh) if mesh is not None else None
        if sharding is None:  # one device: a stacked parameter is stacked on the host
            arrays = [read(rule, target.dtype) for rule in group]
            value = jnp.asarray(arrays[0] if group[0].layer is None else np.stack(arrays))
        elif group[0].layer is None:
            value = place(group[0], target, sharding)
        else:
            layer_sharding = NamedSharding(mesh, PartitionSpec(*sharding.spec[1:]))
            layers = [place(rule, target, layer_sharding) for rule in group]
            value = jax.jit(lambda *a: jnp.stack(a), out_shardings=sharding)(*layers)
        var.set_value(value)
    ckpt.close()
    return abstract_state  # its Variables now hold the loaded arrays


def _once_per_index(read_shard: Callable[[tuple[slice, ...]], np.ndarray]):
    """read_shard, reading each distinct slice once (devices that replicate a shard share it)."""
    done: dict[tuple, np.ndarray] = {}

    def read(index: tuple[slice, ...]) -> np.ndarray:
        key = tuple((s.start, s.stop, s.step) for s in index)
        if key not in done:
            done[key] = read_shard(index)
        return done[key]

    return read


def from_pretrained(
    model_dir: str | os.PathLike,
    dtype: str | DTypePolicy | None = None,
    mesh: jax.sharding.Mesh | None = None,
    remat: str = "none",
    kernels: str = "auto",
) -> Qwen25VL:
    """Loads a Hugging Face Qwen2.5-VL directory into a urt_jax model.

    dtype: "float32", "bfloat16", "mixed_bfloat16" (fp32 params, bf16 compute) or a DTypePolicy;
    None keeps the checkpoint's dtype (a bf16 checkpoint stays bf16). With a mesh, every tensor is
    read and placed directly into its shards (urt_jax.sharding.rules). ``kernels``: the attention
    implementation, "cpu", "tpu", "gpu" or "auto" (the default backend's; urt_jax.model.attention).
    """
    model_dir = os.fspath(model_dir)
    if not os.path.isdir(model_dir):
        raise FileNotFoundError(f"{model_dir}: not a directory")
    config = Qwen25VLConfig.from_hf_file(model_dir)
    if dtype is None:
        with SafetensorsCheckpoint.open(model_dir) as ckpt:
            dtype = checkpoint_dtype(ckpt)
    policy = DTypePolicy.parse(dtype)
    abstract = _abstract_model(config, policy, remat, kernels)
    graphdef, _ = nnx.split(abstract)
    state = load_params_from_hf(model_dir, config, abstract, mesh)
    model = nnx.merge(graphdef, state)
    model.source_dir = model_dir
    return model


# ------------------------------------------------------------------------------ saving
class HostTensor:
    """One parameter's tensor in the Hugging Face layout, copied to the host only when read
    (``np.asarray``). A tensor split over several processes is gathered then: every process
    must read the same tensors in the same order."""

    def __init__(self, value: jax.Array, rule: Rule):
        self._value, self._rule = value, rule
        self.shape = rule.hf_shape
        self.dtype = np.dtype(value.dtype)

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        value = self._value if self._rule.layer is None else self._value[self._rule.layer]
        out = np.ascontiguousarray(self._rule.transform.to_hf(to_host(value), self.shape))
        return out if dtype is None else out.astype(dtype)


def hf_tensors(model: Qwen25VL) -> dict[str, HostTensor]:
    """Every parameter as its legacy-layout tensor (legacy key -> HostTensor), none read yet."""
    _, state = nnx.split(model, nnx.Param)
    flat = dict(nnx.to_flat_state(state))
    tensors = {}
    for rule in conversion_rules(model.config):
        var = flat[rule.path]
        tensors[rule.hf_key] = HostTensor(
            var.get_value() if hasattr(var, "get_value") else var.value, rule
        )
    return tensors


def save_pretrained(
    model: Qwen25VL,
    out_dir: str | os.PathLike,
    *,
    source_dir: str | None = None,
    max_shard_bytes: int | None = 5 * 10**9,
    extra_files: dict[str, str] | None = None,
) -> None:
    """Writes config.json + safetensors (legacy layout) loadable by transformers, one tensor on
    the host at a time. On a mesh over several processes every process must call it: each
    tensor is gathered, process 0 writes.

    Tokenizer, processor and generation files are copied from ``source_dir`` (default: the
    directory the model was loaded from) when present there. ``extra_files`` maps file names to
    contents to write as well.
    """
    out_dir = os.fspath(out_dir)
    tensors = hf_tensors(model)
    if writes_here():
        os.makedirs(out_dir, exist_ok=True)
        save_safetensors(tensors, out_dir, max_shard_bytes=max_shard_bytes)
        dtype = _dtype_name({t.dtype.name for t in tensors.values()})
        write_config_and_aux_files(model, out_dir, dtype, source_dir)
        for name, content in (extra_files or {}).items():
            write_text(os.path.join(out_dir, name), content)
    else:  # take part in each gather, in the order save_safetensors reads: sorted by name
        for key in sorted(tensors):
            np.asarray(tensors[key])
    wait_for_writer(f"save_pretrained {out_dir}")


def write_config_and_aux_files(
    model: Qwen25VL, out_dir: str, dtype: str, source_dir: str | None = None
) -> None:
    """config.json (Hub layout, torch_dtype = dtype) and the tokenizer, processor and generation
    files of ``source_dir`` (default: the directory the model was loaded from)."""
    config = dataclasses.replace(model.config, dtype=dtype)
    write_text(
        os.path.join(out_dir, "config.json"),
        json.dumps(config.to_hf_dict(), indent=2, sort_keys=True) + "\n",
    )
    src = source_dir if source_dir is not None else getattr(model, "source_dir", None)
    if src and os.path.abspath(src) != os.path.abspath(out_dir):
        for name in AUX_FILES:
            path = os.path.join(src, name)
            if os.path.isfile(path):
                shutil.copyfile(path, os.path.join(out_dir, name))


def _dtype_name(dtypes: set[str]) -> str:
    for name in ("float32", "bfloat16", "float16"):
        if dtypes == {name}:
            return name
    raise ConfigError(f"parameters have mixed dtypes {sorted(dtypes)}; cannot name a torch_dtype")
