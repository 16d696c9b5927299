"""The ``urt-jax`` command line."""

from __future__ import annotations

import argparse
import sys

from urt_jax.resources import TINY_MODEL_CONFIG


def _convert(args: argparse.Namespace) -> None:
    from urt_jax.model.hf import from_pretrained, save_pretrained
    from urt_jax.model.orbax_io import load_orbax, save_orbax

    if args.direction == "hf-to-orbax":
        model = from_pretrained(args.src, dtype=args.dtype)
        save_orbax(model, args.dst)
    else:
        model = load_orbax(args.src, dtype=args.dtype)
        save_pretrained(model, args.dst, max_shard_bytes=args.max_shard_bytes)
    print(f"wrote {args.dst}")


def _data_check(args: argparse.Namespace) -> int:
    from urt_jax.data.check import check_file

    builder, max_frames, data_root = _check_builder(args)
    report = check_file(args.file, data_root, builder, args.max_image_pixels, max_frames)
    for problem in report.problems:
        print(problem)
    status = "OK" if report.ok else f"{len(report.problems)} problem(s)"
    lengths = report.lengths
    if lengths:
        status += (
            f"; {min(lengths)}-{max(lengths)} tokens per record "
            f"({sum(lengths) / len(lengths):.0f} on average)"
        )
    print(f"{args.file}: {report.records} record(s) checked, {status}")
    return 0 if report.ok else 1


def _data_import(args: argparse.Namespace) -> int:
    from urt_jax.data.benchmark_import import main

    return main(args.benchmark, args.src, args.out_dir, args.media_dir)


def _templates_from_release(args: argparse.Namespace) -> int:
    from urt_jax.data.release_templates import main

    return main(args.clone_dir, args.out)


def _check_builder(args: argparse.Namespace):
    """(example builder or None, max frames, data root) for `data check`: a run config's (its
    model's tokenizer and pixel settings, its templates, max_length and data root), a
    checkpoint's, or the flags'."""
    from urt_jax.data.examples import ExampleBuilder, run_processor
    from urt_jax.data.templates import Templates
    from urt_jax.model.config import Qwen25VLConfig

    if args.config:
        from urt_jax.config import load_run_config

        cfg = load_run_config(args.config, args.overrides)
        model_dir = args.model or cfg.model.hf_dir
        if model_dir:
            model_config = Qwen25VLConfig.from_hf_file(model_dir)
        else:
            model_config = Qwen25VLConfig.from_yaml(cfg.model.config)
        processor = run_processor(cfg.data, model_dir)
        processor.max_image_pixels = args.max_image_pixels
        builder = ExampleBuilder.for_processor(
            processor,
            Templates.load(args.templates or cfg.data.templates),
            model_config,
            max_length=args.max_length or cfg.data.max_length,
        )
        return builder, processor.pixels.max_frames, args.data_root or cfg.data.data_root
    if args.overrides:
        raise ValueError(f"key=value overrides {args.overrides} need --config")
    if not (args.model or args.tokenizer or args.max_length):
        return None, args.max_frames or 8, args.data_root
    from urt_jax.data.vl_processor import Processor

    source = args.model or args.tokenizer
    processor = Processor.from_pretrained(
        source,
        tokenizer=args.tokenizer,
        min_pixels=args.min_pixels,
        max_pixels=args.max_pixels,
        max_frames=args.max_frames,
    )
    processor.max_image_pixels = args.max_image_pixels
    model_config = (
        Qwen25VLConfig.from_hf_file(args.model)
        if args.model
        else Qwen25VLConfig.from_yaml(args.model_config)
    )
    builder = ExampleBuilder.for_processor(
        processor,
        Templates.load(args.templates) if args.templates else Templates.load(),
        model_config,
        max_length=args.max_length,
    )
    return builder, processor.pixels.max_frames, args.data_root


def _config(args: argparse.Namespace):
    from urt_jax.config import load_run_config

    return load_run_config(args.config, args.overrides)


def _sft(args: argparse.Namespace) -> None:
    from urt_jax.train.run_sft import run_sft

    cfg = _config(args)
    result = run_sft(cfg, cfg.output_dir, hf_dir=args.model)
    print(
        f"sft: {result['steps']} steps (resumed from {result['resumed_from']}); "
        f"final loss {result['final'].get('loss')}; model in {cfg.output_dir}/hf"
    )


def _model_dir(args: argparse.Namespace, cfg, command: str) -> str:
    model_dir = args.model or cfg.model.hf_dir
    if not model_dir:
        raise ValueError(f"{command} needs a model: --model DIR or model.hf_dir")
    return model_dir


def _eval(args: argparse.Namespace) -> int:
    import os

    from urt_jax.evaluate import evaluate_model, markdown_table
    from urt_jax.run_inputs import heldout_items

    cfg = _config(args)
    model_dir = _model_dir(args, cfg, "eval")
    out = os.path.join(cfg.output_dir, "eval")
    records, invalid = heldout_items(cfg)
    summary = evaluate_model(cfg, model_dir, records, out, invalid)
    print(markdown_table(summary), end="")
    for error in invalid:
        print(f"urt-jax: not judged: {error}", file=sys.stderr)
    print(f"judgements and report in {out}")
    return 1 if invalid else 0


def _sample(args: argparse.Namespace) -> None:
    import json
    import os

    from urt_jax.run_inputs import train_data_root, train_records
    from urt_jax.train.rejection import rejection_sample

    cfg = _config(args)
    model_dir = _model_dir(args, cfg, "sample")
    out = os.path.join(cfg.output_dir, "rejection_sampling")
    stats = rejection_sample(cfg, model_dir, train_records(cfg), train_data_root(cfg), out)
    print(json.dumps(stats, indent=2))
    print(f"SFT samples and GRPO prompts in {out} (sft.yaml, grpo.yaml)")


def _grpo(args: argparse.Namespace) -> None:
    from urt_jax.train.run_grpo import run_grpo

    cfg = _config(args)
    _model_dir(args, cfg, "grpo")
    result = run_grpo(cfg, cfg.output_dir, hf_dir=args.model)
    final = result["final"]
    print(
        f"grpo: {result['steps']} steps (resumed from {result['resumed_from']}); final reward "
        f"{final.get('reward')}, accuracy {final.get('accuracy')}; policy in {cfg.output_dir}/hf"
    )


def _score(args: argparse.Namespace) -> int:
    import json

    from urt_jax.config import RunConfig
    from urt_jax.score import score_file

    if args.overrides and not args.config:
        raise ValueError(f"key=value overrides {args.overrides} need --config")
    cfg = _config(args) if args.config else RunConfig()
    model_dir = _model_dir(args, cfg, "score")
    summary = score_file(cfg, model_dir, args.input, args.output, args.data_root)
    print(json.dumps(summary, indent=2))
    return 1 if summary["invalid"] else 0


def _run(args: argparse.Namespace) -> None:
    from urt_jax.pipeline import run

    run(_config(args), redo=args.redo)


OVERRIDES_HELP = "key=value config overrides (dotted keys, YAML values), anywhere on the line"


def _stage_command(sub, name: str, help: str, func, model_help: str) -> argparse.ArgumentParser:
    p = sub.add_parser(name, help=help)
    p.add_argument("config", help="run config (YAML); a shipped one such as configs/demo.yaml")
    p.add_argument("overrides", nargs="*", help=OVERRIDES_HELP)
    p.add_argument("--model", default=None, help=model_help)
    p.set_defaults(func=func)
    return p


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="urt-jax", description=__doc__)
    parser.add_argument(
        "--debug", action="store_true", help="show the traceback of an error, not only its message"
    )
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the stages a config declares (resumable)")
    run.add_argument("config", help="run config (YAML); a shipped one such as configs/demo.yaml")
    run.add_argument("overrides", nargs="*", help=OVERRIDES_HELP)
    run.add_argument(
        "--redo",
        action="store_true",
        help="run again a finished stage whose settings changed, and every stage after it",
    )
    run.set_defaults(func=_run)

    _stage_command(
        sub,
        "sft",
        "supervised fine-tuning (cold start / rejection-sampling SFT)",
        _sft,
        "HF checkpoint to start from (default: model.hf_dir, else a random model.config)",
    )
    _stage_command(
        sub,
        "sample",
        "rejection sampling: SFT data and GRPO prompts",
        _sample,
        "HF model directory (default: model.hf_dir)",
    )
    _stage_command(
        sub,
        "grpo",
        "GRPO on the prompts of grpo.data (resumable)",
        _grpo,
        "HF policy directory (default: model.hf_dir)",
    )
    _stage_command(
        sub,
        "eval",
        "accuracy on a preference set (both candidate orders, or eval.protocol=release)",
        _eval,
        "HF model directory (default: model.hf_dir)",
    )

    sc = sub.add_parser("score", help="judge the items of a data file; verdicts and CoT as JSONL")
    sc.add_argument("input", help="items to judge (any data format; native items need no verdict)")
    sc.add_argument("--model", default=None, help="HF model directory (default: model.hf_dir)")
    sc.add_argument("--output", default="judgements.jsonl")
    sc.add_argument("--data-root", default=None, help="media root (default: the input's dir)")
    sc.add_argument(
        "--config", default=None, help="run config for templates, pixel limits and generation"
    )
    sc.add_argument("overrides", nargs="*", help="key=value overrides of --config")
    sc.set_defaults(func=_score)

    conv = sub.add_parser("convert", help="convert between Hugging Face and orbax model dirs")
    conv.add_argument("direction", choices=["hf-to-orbax", "orbax-to-hf"])
    conv.add_argument("src")
    conv.add_argument("dst")
    conv.add_argument(
        "--dtype", default=None, help="float32 | bfloat16 (default: keep the stored dtype)"
    )
    conv.add_argument("--max-shard-bytes", type=int, default=5 * 10**9)
    conv.set_defaults(func=_convert)

    data = sub.add_parser("data", help="data tools")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    check = data_sub.add_parser("check", help="validate a data file; every problem with its line")
    check.add_argument("file", help="a data file (JSONL, JSON array) or a dataset YAML")
    check.add_argument(
        "--config",
        default=None,
        help="vet the file as this run config's run sees it: its model's tokenizer and pixel "
        "settings, its templates and data.max_length",
    )
    check.add_argument("overrides", nargs="*", help="key=value overrides of --config")
    check.add_argument(
        "--model", default=None, help="HF checkpoint whose tokenizer and pixel settings to use"
    )
    check.add_argument(
        "--data-root",
        default=None,
        help="directory media paths are relative to (default: the file's)",
    )
    check.add_argument(
        "--tokenizer", default=None, help="HF tokenizer directory; with it, lengths are checked too"
    )
    check.add_argument("--model-config", default=TINY_MODEL_CONFIG)
    check.add_argument("--templates", default=None)
    check.add_argument("--max-length", type=int, default=None)
    check.add_argument("--min-pixels", type=int, default=None)
    check.add_argument("--max-pixels", type=int, default=None)
    check.add_argument("--max-frames", type=int, default=None)
    check.add_argument(
        "--max-image-pixels",
        type=int,
        default=89_478_485,
        help="refuse images larger than this (decompression bombs)",
    )
    check.set_defaults(func=_data_check)

    from urt_jax.data.records import BENCHMARKS

    imp = data_sub.add_parser(
        "import", help="convert a downloaded benchmark to native records and media"
    )
    imp.add_argument("benchmark", choices=BENCHMARKS)
    imp.add_argument("src", help="the benchmark's published file(s): a file or a directory")
    imp.add_argument("out_dir", help="where the records ({benchmark}.jsonl/.yaml) and media go")
    imp.add_argument(
        "--media-dir",
        action="append",
        default=[],
        help="another folder to look for the media files in (repeatable)",
    )
    imp.set_defaults(func=_data_import)

    tpl = data_sub.add_parser(
        "templates-from-release",
        help="a templates file with the exact prompts of a clone of the release",
    )
    tpl.add_argument("clone_dir", help="your clone of CodeGoat24/UnifiedReward")
    tpl.add_argument("out", help="the templates file to write (YAML), for data.templates")
    tpl.set_defaults(func=_templates_from_release)
    return parser


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Parses the command line, with key=value overrides accepted anywhere on it (argparse alone
    takes them only before the first option)."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    overrides = [a for a in extra if "=" in a and not a.startswith("-")]
    unknown = [a for a in extra if a not in overrides]
    if unknown or (overrides and not hasattr(args, "overrides")):
        parser.error(f"unrecognized arguments: {' '.join(unknown or overrides)}")
    if overrides:
        args.overrides = [*args.overrides, *overrides]
    return args


def _setup_logging() -> None:
    import logging

    logging.basicConfig(level=logging.INFO, format="[urt-jax] %(levelname)s %(name)s: %(message)s")
    for noisy in ("absl", "jax", "orbax", "tensorflow_datasets", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def main(argv: list[str] | None = None) -> int:
    """The command line; ``argv`` None (a real command) first restarts it on huge pages."""
    if argv is None:
        from urt_jax.hugepages import reexec_with_hugepages

        reexec_with_hugepages()
    args = parse_args(argv)
    _setup_logging()
    from urt_jax.train.checkpoint import CheckpointRestoreError, CheckpointSaveError
    from urt_jax.train.loop import STOPPED_EXIT_CODE, RunStopped

    try:
        status = args.func(args)
    except RunStopped as e:
        print(f"urt-jax: {e}", file=sys.stderr)
        return STOPPED_EXIT_CODE
    except (ValueError, OSError, CheckpointRestoreError, CheckpointSaveError) as e:
        # what a user can fix: a setting, a file, a path, permissions, disk space
        if args.debug:
            raise
        print(f"urt-jax: error: {e} (--debug shows the traceback)", file=sys.stderr)
        return 2
    return int(status or 0)


if __name__ == "__main__":
    sys.exit(main())
