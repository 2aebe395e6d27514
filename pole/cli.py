"""The `pole` command: the pipeline, the sample world, the service and the demo, one module each."""

from __future__ import annotations

import argparse
import difflib
import os
import sys

from ml import __version__
from pole import demo
from pole.commands import predict, runs, service, submit, world


class CommandParser(argparse.ArgumentParser):
    """argparse, with complaints made by the (sub)command they concern: an unknown option is named
    (with the closest known one) before anything else, such as a required option it was meant to be,
    and always under that subcommand's usage, not the top-level one."""

    def parse_known_args(self, args=None, namespace=None):
        self._given = list(sys.argv[1:] if args is None else args)
        namespace, extras = super().parse_known_args(args, namespace)
        if extras and self._subparsers is None:  # a leaf command: nothing after it can claim them
            self.error(f"unrecognized arguments: {' '.join(extras)}")
        return namespace, extras

    def error(self, message: str):
        unknown = self._unknown_options()
        if unknown:
            message = "; ".join(self._describe(option) for option in unknown)
        super().error(message)

    def _unknown_options(self) -> list[str]:
        if self._subparsers is not None:
            return []
        options = [a.split("=", 1)[0] for a in getattr(self, "_given", []) if a.startswith("--")]
        return [o for o in options if o not in self._option_string_actions]

    def _describe(self, option: str) -> str:
        close = difflib.get_close_matches(option, list(self._option_string_actions), n=1)
        return f"unrecognized option {option}" + (f" (did you mean {close[0]}?)" if close else "")


def build_parser() -> argparse.ArgumentParser:
    parser = CommandParser(
        prog="pole",
        description="pole: pixel pseudo masks from image-level tags (POLE + IRNet).",
    )
    parser.add_argument("--version", action="version", version=f"pole {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for group in (runs, predict, world, service, submit, demo):
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
