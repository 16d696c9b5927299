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

    builder = None
    if args.tokenizer or args.max_length:
        from urt_jax.data.examples import ExampleBuilder
        from urt_jax.data.processor import ProcessorConfig
        from urt_jax.data.templates import Templates
        from urt_jax.data.tokenizer import ASSET_DIR, load_tokenizer
        from urt_jax.model.config import Qwen25VLConfig

        builder = ExampleBuilder(
            tokenizer=load_tokenizer(args.tokenizer or ASSET_DIR),
            templates=Templates.load(args.templates) if args.templates else Templates.load(),
            model_config=Qwen25VLConfig.from_yaml(args.model_config),
            processor=ProcessorConfig.with_limits(
                args.min_pixels, args.max_pixels, args.max_frames
            ),
            max_length=args.max_length,
            max_image_pixels=args.max_image_pixels,
        )
    report = check_file(args.file, args.data_root, builder, args.max_image_pixels, args.max_frames)
    for problem in report.problems:
        print(problem)
    status = "OK" if report.ok else f"{len(report.problems)} problem(s)"
    print(f"{args.file}: {report.records} record(s) checked, {status}")
    return 0 if report.ok else 1


def _sft(args: argparse.Namespace) -> None:
    from urt_jax.config import load_run_config
    from urt_jax.train.run_sft import run_sft

    cfg = load_run_config(args.config, args.overrides)
    result = run_sft(cfg, cfg.output_dir)
    print(
        f"sft: {result['steps']} steps (resumed from {result['resumed_from']}); "
        f"final loss {result['final'].get('loss')}; model in {cfg.output_dir}/hf"
    )


def _eval(args: argparse.Namespace) -> None:
    import os

    from urt_jax.config import load_run_config
    from urt_jax.data.sources import open_records
    from urt_jax.evaluate import markdown_table
    from urt_jax.pipeline import evaluate_model

    cfg = load_run_config(args.config, args.overrides)
    model_dir = args.model or cfg.model.hf_dir
    if not model_dir or cfg.data.heldout is None:
        raise ValueError("eval needs a model (--model or model.hf_dir) and data.heldout")
    records = open_records(
        cfg.data.heldout, cfg.data.data_root, cfg.data.tfds_data_dir, cfg.data.skip_invalid
    )
    summary = evaluate_model(cfg, model_dir, records, os.path.join(cfg.output_dir, "eval"))
    print(markdown_table(summary), end="")


def _sample(args: argparse.Namespace) -> None:
    import json
    import os

    from urt_jax.config import load_run_config
    from urt_jax.data.sources import open_records
    from urt_jax.pipeline import rejection_sample, train_data_root

    cfg = load_run_config(args.config, args.overrides)
    model_dir = args.model or cfg.model.hf_dir
    if not model_dir:
        raise ValueError("sample needs a model (--model or model.hf_dir)")
    d = cfg.data
    records = open_records(d.train, d.data_root, d.tfds_data_dir, d.skip_invalid)
    root = train_data_root(cfg, None)
    out = os.path.join(cfg.output_dir, "rejection_sampling")
    print(json.dumps(rejection_sample(cfg, model_dir, records, root, out), indent=2))


def _grpo(args: argparse.Namespace) -> None:
    from urt_jax.config import load_run_config
    from urt_jax.train.run_grpo import run_grpo

    cfg = load_run_config(args.config, args.overrides)
    if not (args.model or cfg.model.hf_dir):
        raise ValueError("grpo needs a starting policy (--model or model.hf_dir)")
    result = run_grpo(cfg, cfg.output_dir, hf_dir=args.model)
    final = result["final"]
    print(
        f"grpo: {result['steps']} steps (resumed from {result['resumed_from']}); final reward "
        f"{final.get('reward')}, accuracy {final.get('accuracy')}; policy in {cfg.output_dir}/hf"
    )


def _score(args: argparse.Namespace) -> None:
    import json

    from urt_jax.config import RunConfig, load_run_config
    from urt_jax.score import score_file

    cfg = load_run_config(args.config, args.overrides) if args.config else RunConfig()
    model_dir = args.model or cfg.model.hf_dir
    if not model_dir:
        raise ValueError("score needs a model (--model or model.hf_dir in --config)")
    summary = score_file(cfg, model_dir, args.input, args.output, args.data_root)
    print(json.dumps(summary, indent=2))


def _run(args: argparse.Namespace) -> None:
    from urt_jax.config import load_run_config
    from urt_jax.pipeline import run

    run(load_run_config(args.config, args.overrides))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="urt-jax", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the stages a config declares (resumable)")
    run.add_argument("config")
    run.add_argument("overrides", nargs="*", help="key=value overrides, e.g. seed=1")
    run.set_defaults(func=_run)

    sft = sub.add_parser("sft", help="supervised fine-tuning (cold start / rejection-sampling SFT)")
    sft.add_argument("config")
    sft.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.max_steps=10")
    sft.set_defaults(func=_sft)

    rs = sub.add_parser("sample", help="rejection sampling: SFT data and GRPO prompts")
    rs.add_argument("config")
    rs.add_argument("overrides", nargs="*")
    rs.add_argument("--model", default=None, help="HF model directory (default: model.hf_dir)")
    rs.set_defaults(func=_sample)

    gr = sub.add_parser("grpo", help="GRPO on the prompts of grpo.data (resumable)")
    gr.add_argument("config")
    gr.add_argument("overrides", nargs="*")
    gr.add_argument("--model", default=None, help="HF policy directory (default: model.hf_dir)")
    gr.set_defaults(func=_grpo)

    ev = sub.add_parser("eval", help="accuracy on a preference set, both candidate orders")
    ev.add_argument("config")
    ev.add_argument("overrides", nargs="*")
    ev.add_argument("--model", default=None, help="HF model directory (default: model.hf_dir)")
    ev.set_defaults(func=_eval)

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
    check.add_argument("file")
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
    check.add_argument("--min-pixels", type=int, default=3136)
    check.add_argument("--max-pixels", type=int, default=12845056)
    check.add_argument("--max-frames", type=int, default=8)
    check.add_argument(
        "--max-image-pixels",
        type=int,
        default=89_478_485,
        help="refuse images larger than this (decompression bombs)",
    )
    check.set_defaults(func=_data_check)
    return parser


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
    args = build_parser().parse_args(argv)
    _setup_logging()
    try:
        status = args.func(args)
    except (ValueError, FileNotFoundError) as e:
        print(f"urt-jax: error: {e}", file=sys.stderr)
        return 2
    return int(status or 0)


if __name__ == "__main__":
    sys.exit(main())
