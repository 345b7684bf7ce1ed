"""The ``esper`` command: ``esper train {heuristic,static}`` and ``esper report RUN_DIR ...``."""

from __future__ import annotations

import argparse
import sys

from rich.console import Console


def build_parser() -> argparse.ArgumentParser:
    from esper.scripts.train import OneLineParser, add_train_arguments

    parser = OneLineParser(
        prog="esper", description="Grow neural networks that earn their parameters."
    )
    sub = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)
    train = sub.add_parser("train", help="train a task's host: grown (heuristic) or static")
    add_train_arguments(train)
    report = sub.add_parser("report", help="plots and a comparison table for run directories")
    report.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from esper.scripts.train import print_error, train_main

    if args.command == "train":
        return train_main(args)
    from esper.karn import ReportError, report_main

    try:
        return report_main(args.run_dirs, Console())
    except ReportError as exc:
        print_error(exc)
        return 2


if __name__ == "__main__":
    sys.exit(main())
