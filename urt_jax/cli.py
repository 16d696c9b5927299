"""The ``urt-jax`` command line."""

from __future__ import annotations

import argparse
import sys


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

    conv = sub.add_parser("convert", help="convert between Hugging Face and orbax model dirs")
    conv.add_argument("direction", choices=["hf-to-orbax", "orbax-to-hf"])
    conv.add_argument("src")
    conv.add_argument("dst")
    conv.add_argument(
        "--dtype", default=None, help="float32 | bfloat16 (default: keep the stored dtype)"
    )
    conv.add_argument("--max-shard-bytes", type=int, default=5 * 10**9)
    conv.set_defaults(func=_convert)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (ValueError, FileNotFoundError) as e:
        print(f"urt-jax: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
