"""The `pole` command: the pipeline, the sample world, the service and the demo, one module each."""

from __future__ import annotations

import argparse
import os
import sys

from pole import demo
from pole.commands import runs, service, world


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pole",
        description="pole: pixel pseudo masks from image-level tags (POLE + IRNet).",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for group in (runs, world, service, demo):
        group.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    # OpenMP threads that spin while waiting make torch 10x slower whenever anything else runs on
    # the machine (measured: a CAM training stage took 22 s instead of 1.3 s beside one busy
    # process). Must be set before torch loads; worker processes inherit it.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
