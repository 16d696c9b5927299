"""``urt-jax score``: judge items from a data file with a trained model.

Items are pairs (or single candidates, pointwise) in any data format; native items may leave out
the verdict. Each item is judged once, in the order given, and written as one JSON line with the
verdict, the chain of thought and whether it is well formed; items that carry a verdict also get
``expected`` and ``correct``. An item whose prompt is longer than ``data.max_length`` gets a line
with ``skipped`` (the reason) instead, and an item that cannot be judged (malformed, or a media
file missing or undecodable) a line with its ``line`` and ``error``; the rest are still judged,
and the command then exits 1.
"""

from __future__ import annotations

from urt_jax.config import RunConfig, options_from
from urt_jax.data.pipeline import read_checked_items
from urt_jax.data.readers import write_jsonl
from urt_jax.data.records import PreferenceRecord, RecordError
from urt_jax.sharding.mesh import wait_for_writer, writes_here


def read_items(path: str, data_root: str | None) -> list[PreferenceRecord | RecordError]:
    """The items of ``path`` to judge, in order (native items may leave out the verdict): each a
    record, or the RecordError of one that cannot be judged (``read_checked_items``)."""
    return read_checked_items(path, data_root, labelled=False)


def score_file(
    cfg: RunConfig, model_dir: str, path: str, output: str, data_root: str | None = None
) -> dict:
    """Writes one judgement per item of ``path`` to ``output`` (JSONL); returns a summary."""
    from urt_jax.evaluate import EvalOptions, judge
    from urt_jax.run_inputs import generation_setup

    items = read_items(path, data_root)
    records = [r for r in items if not isinstance(r, RecordError)]
    model, builder = generation_setup(cfg, model_dir)
    options = options_from(EvalOptions, cfg.eval, protocol="both_orders", swap=False, seed=cfg.seed)
    judged = iter(judge(model, builder.tokenizer, records, builder, options) if records else [])
    labelled = correct = well_formed = skipped = 0
    rows, invalid = [], []
    for record in items:
        if isinstance(record, RecordError):  # in its place, with its line and what is wrong
            where, _, why = str(record).partition(": ")
            rows.append({"line": where, "error": why})
            invalid.append(str(record))
            continue
        j = next(judged)
        row = {"id": record.id, "task": record.task, "mode": record.mode}
        if "skipped" in j:
            rows.append({**row, "skipped": j["skipped"]})
            skipped += 1
            continue
        row |= {"verdict": j["answer"], "output": j["output"], "format": j["format"]}
        if record.verdict:
            row |= {"expected": record.verdict, "correct": j["correct"]}
            labelled += 1
            correct += j["correct"]
        well_formed += j["format"]
        rows.append(row)
    if writes_here():  # on several processes (mesh.distributed) every one judged every item
        write_jsonl(output, rows)
    wait_for_writer(f"score {output}")
    n = len(records) - skipped
    return {
        "items": n,
        "skipped": skipped,
        "invalid": len(invalid),
        "errors": invalid,
        "format_rate": well_formed / max(n, 1),
        "labelled": labelled,
        "accuracy": correct / labelled if labelled else None,
        "output": output,
    }
