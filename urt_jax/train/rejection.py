"""Rejection sampling: K completions per prompt from the cold-started model; the correct ones
become SFT data for the second supervised pass, the prompts answered wrongly become GRPO data.
Both files are written in the released formats (SFT: ``conversations`` + media; GRPO:
``problem`` + ``solution`` + media), with media paths relative to the data root, each with a
dataset YAML beside it that names that root, so the next stage finds the media from the YAML
alone."""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Sequence

from urt_jax.data.readers import write_dataset_yaml, write_jsonl
from urt_jax.data.records import MEDIA_TAG, PreferenceRecord
from urt_jax.generate.prompts import complete
from urt_jax.rewards import accuracy_reward, format_reward


@dataclasses.dataclass(frozen=True)
class RejectionOptions:
    samples_per_prompt: int = 4  # not published; a setting
    max_new_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 0.95
    batch_size: int = 4  # prompts per sampler call
    grpo_prompts: str = "any_wrong"  # "any_wrong" | "all_wrong": which prompts go to GRPO
    require_format: bool = True  # a correct verdict in a malformed reply is not kept for SFT
    seed: int = 0


def split_samples(
    records: Sequence[PreferenceRecord],
    completions: Sequence[Sequence[str]],
    options: RejectionOptions,
) -> tuple[list, list, dict]:
    """(SFT (record, completion) pairs, GRPO records, statistics) from K completions per record."""
    sft, grpo = [], []
    n_correct = n_format = 0
    for record, outs in zip(records, completions, strict=True):
        ok = [
            accuracy_reward(c, record.verdict) == 1.0
            and (format_reward(c) == 1.0 or not options.require_format)
            for c in outs
        ]
        n_correct += sum(ok)
        n_format += sum(format_reward(c) == 1.0 for c in outs)
        sft += [(record, c) for c, good in zip(outs, ok, strict=True) if good]
        wrong = (not all(ok)) if options.grpo_prompts == "any_wrong" else (not any(ok))
        if options.grpo_prompts not in ("any_wrong", "all_wrong"):
            raise ValueError(
                f"grpo_prompts must be 'any_wrong' or 'all_wrong', found {options.grpo_prompts!r}"
            )
        if wrong:
            grpo.append(record)
    total = sum(len(o) for o in completions)
    stats = {
        "prompts": len(records),
        "samples": total,
        "correct_samples": n_correct,
        "accuracy": n_correct / max(total, 1),
        "format_rate": n_format / max(total, 1),
        "sft_samples": len(sft),
        "grpo_prompts": len(grpo),
        "prompts_with_a_correct_sample": sum(
            any(accuracy_reward(c, r.verdict) == 1.0 for c in o)
            for r, o in zip(records, completions, strict=True)
        ),
    }
    return sft, grpo, stats


def generate_completions(
    model, tokenizer, records: Sequence[PreferenceRecord], to_example, options: RejectionOptions
) -> list[list[str]]:
    return complete(
        model,
        tokenizer,
        records,
        to_example,
        num_samples=options.samples_per_prompt,
        max_new_tokens=options.max_new_tokens,
        temperature=options.temperature,
        top_p=options.top_p,
        batch_size=options.batch_size,
        seed=options.seed,
    )


def _media_paths(record: PreferenceRecord) -> list[str]:
    """The files of a record's media (video frames one by one)."""
    return [
        p
        for m in record.media
        for p in (m.frames if m.frames is not None else (m.path,))
        if isinstance(p, str)
    ]


def media_root(records: Sequence[PreferenceRecord], data_root: str) -> str:
    """The absolute folder the written media paths are relative to: ``data_root`` when it holds
    every medium, else the deepest folder that does (records read through a dataset YAML may
    have their media in image folders outside ``data_root``)."""
    root = os.path.realpath(data_root)
    paths = [os.path.realpath(p) for r in records for p in _media_paths(r)]
    if all(os.path.commonpath([p, root]) == root for p in paths):
        return root
    return os.path.commonpath([os.path.dirname(p) for p in paths])


def _media_fields(record: PreferenceRecord, root: str) -> dict:
    if any(m.data is not None for m in record.media):
        raise ValueError(
            f"{record.source or record.id}: media held as bytes (e.g. from TFDS) "
            "cannot be written to a JSON data file"
        )

    def rel(p: str) -> str:
        return os.path.relpath(os.path.realpath(p), root)

    images = [rel(m.path) for m in record.media if m.kind == "image"]
    videos = [
        [rel(f) for f in m.frames] if m.frames is not None else rel(m.path)
        for m in record.media
        if m.kind == "video"
    ]
    fields = {}
    if images:
        fields["images"] = images
    if len(videos) == 1:
        fields["video"] = videos[0]
    elif videos:
        fields["videos"] = videos
    fps = next((m.fps for m in record.media if m.fps), None)
    if fps:
        fields["fps"] = fps
    return fields


def _tags(record: PreferenceRecord) -> str:
    return "".join(f"<{m.kind}>" for m in record.media)


def sft_user_text(record: PreferenceRecord, templates) -> str:
    """The SFT file's user text: renders to exactly the prompt the record was sampled with. A
    text with tags is kept as it is; otherwise the tags go first with nothing between them,
    which puts the media first, as the sampling prompt does."""
    text = templates.render(record)
    if record.user_text is not None and MEDIA_TAG.search(text):
        return text
    return _tags(record) + text


def grpo_problem(record: PreferenceRecord, templates) -> str:
    """The GRPO file's problem: the text without tags (the release's GRPO loader puts the media
    first itself). A text whose tags sit anywhere but in a leading run is kept with its tags,
    since removing them would change the prompt."""
    text = templates.render(record)
    if record.user_text is None:
        return text
    rest = re.sub(r"^(?:<image>|<video>)+", "", text)
    return text if MEDIA_TAG.search(rest) else rest


def write_released_formats(
    sft: Sequence[tuple[PreferenceRecord, str]],
    grpo: Sequence[PreferenceRecord],
    templates,
    data_root: str,
    sft_path: str,
    grpo_path: str,
    write_yaml: bool = True,
) -> None:
    """The SFT pairs and GRPO prompts as JSONL in the released formats (atomic writes), and with
    ``write_yaml`` a dataset YAML beside each (``sft.jsonl`` -> ``sft.yaml``) naming the file and,
    as its image_folder, the absolute folder the media paths are relative to (``media_root``:
    the data root, resolved). A record's system prompt is written as the first turn (SFT) or the
    ``system`` field (GRPO)."""
    root = media_root([r for r, _ in sft] + list(grpo), data_root)

    def system_turn(record: PreferenceRecord) -> list[dict]:
        return [{"from": "system", "value": record.system}] if record.system is not None else []

    write_jsonl(
        sft_path,
        [
            {
                "id": r.id,
                "conversations": [
                    *system_turn(r),
                    {"from": "human", "value": sft_user_text(r, templates)},
                    {"from": "gpt", "value": completion},
                ],
                **_media_fields(r, root),
            }
            for r, completion in sft
        ],
    )
    write_jsonl(
        grpo_path,
        [
            {
                "id": r.id,
                **({"system": r.system} if r.system is not None else {}),
                "problem": grpo_problem(r, templates),
                "solution": r.verdict,
                **_media_fields(r, root),
            }
            for r in grpo
        ],
    )
    if write_yaml:
        for path in (sft_path, grpo_path):
            yaml_path = os.path.splitext(path)[0] + ".yaml"
            write_dataset_yaml(yaml_path, os.path.abspath(path), root)


def rejection_sample(cfg, model_dir: str, records, data_root: str, out_dir: str) -> dict:
    """K samples per training prompt by the model in ``model_dir``: correct ones ->
    {out_dir}/sft.jsonl, wrongly answered prompts -> {out_dir}/grpo.jsonl (released formats),
    statistics -> {out_dir}/stats.json."""
    import json
    import os

    from urt_jax.atomic import write_text
    from urt_jax.config import options_from
    from urt_jax.data.templates import Templates
    from urt_jax.run_inputs import first_records, generation_setup
    from urt_jax.sharding.mesh import wait_for_writer, writes_here

    model, builder = generation_setup(cfg, model_dir)
    records = first_records(records, cfg.rejection.max_prompts)
    options = options_from(RejectionOptions, cfg.rejection, seed=cfg.seed)
    completions = generate_completions(model, builder.tokenizer, records, builder, options)
    sft, grpo, stats = split_samples(records, completions, options)
    if writes_here():
        write_released_formats(
            sft,
            grpo,
            Templates.load(cfg.data.templates),
            data_root,
            os.path.join(out_dir, "sft.jsonl"),
            os.path.join(out_dir, "grpo.jsonl"),
        )
        write_text(os.path.join(out_dir, "stats.json"), json.dumps(stats, indent=2))
    wait_for_writer(f"rejection sampling {out_dir}")
    return stats
