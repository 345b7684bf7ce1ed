"""The ``esper`` command: ``esper train {heuristic,static,ppo}``, ``esper watch RUN_DIR``,
``esper report RUN_DIR ...`` and ``esper simic {train,policies}``."""

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
    train = sub.add_parser(
        "train", help="train a task's host: grown (heuristic or a learned ppo policy) or static"
    )
    add_train_arguments(train)
    watch = sub.add_parser(
        "watch", help="the live view of a run that is training or has finished (q quits)"
    )
    watch.add_argument("run_dir", metavar="RUN_DIR")
    watch.add_argument(
        "--once", action="store_true", help="print the view of the events so far and exit"
    )
    watch.add_argument(
        "--interval", type=float, default=0.5, help="seconds between looks at events.jsonl"
    )
    report = sub.add_parser(
        "report", help="plots, report.html and a comparison table for run directories"
    )
    report.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    report.add_argument(
        "--out",
        default=None,
        metavar="FILE",
        help="the side-by-side HTML page of all runs (default with several runs: "
        "comparison.html in the folder that holds them)",
    )
    simic = sub.add_parser("simic", help="learn a growth policy with PPO; list shipped ones")
    from esper.scripts.simic import add_simic_arguments

    add_simic_arguments(simic, OneLineParser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from esper.scripts.train import print_error, train_main

    if args.command == "train":
        return train_main(args)
    if args.command == "simic":
        from esper.scripts.simic import simic_main

        return simic_main(args)
    if args.command == "watch":
        from esper.nissa import WatchError, watch_run

        try:
            return watch_run(args.run_dir, Console(), once=args.once, interval=args.interval)
        except (WatchError, ValueError) as exc:
            print_error(exc)
            return 2
    from esper.karn import ReportError, report_main

    try:
        return report_main(args.run_dirs, Console(), out=args.out)
    except ReportError as exc:
        print_error(exc)
        return 2


if __name__ == "__main__":
    sys.exit(main())
