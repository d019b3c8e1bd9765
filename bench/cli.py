"""The ``tlstm-bench`` command line."""

from __future__ import annotations

import argparse
import sys

import implementations


def _cmd_list(args: argparse.Namespace) -> int:
    for impl in implementations.list_implementations():
        devices = ",".join(impl.devices)
        print(f"{impl.name:<16} {impl.family:<6} [{devices}]  {impl.description}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tlstm-bench", description="Benchmark Tensorized LSTMs against stacked LSTMs.")
    sub = parser.add_subparsers(dest="command")
    p_list = sub.add_parser("list", help="list the registered implementations")
    p_list.set_defaults(func=_cmd_list)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "func"):
        return _cmd_list(args)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
