"""Static host vs grown model vs a static host widened to (at least) the grown parameter count.

Runs the project's own commands (``esper train static|heuristic``) for several seeds, then
prints a markdown table of final/best validation accuracy, loss, parameters and training
compute (and the final model's test accuracy and loss for tasks with a test split), as mean ±
sample standard deviation over the seeds. Usage::

    python benchmarks/growth_comparison.py --task digits --seeds 0 1 2 --out runs/compare
    python benchmarks/growth_comparison.py --task fashion --growth-patience 0 --out runs/compare

The widened host uses ``--width-multiplier``: the smallest multiplier (in steps of the host's
width granularity) whose static parameter count reaches the grown models' mean.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

from esper.leyline import DEFAULT_GROWTH_PATIENCE
from esper.runs import RunSpec, RunSummary, build_run
from esper.tolaria.records import SeedRecord


def _run(mode: str, task: str, seed: int, run_dir: Path, extra: list[str]) -> RunSummary:
    summary = run_dir / "summary.json"
    if not summary.is_file():
        cmd = [
            "esper",
            "train",
            mode,
            "--task",
            task,
            "--seed",
            str(seed),
            "--run-dir",
            str(run_dir),
            *extra,
        ]
        print("$", " ".join(cmd), flush=True)
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return RunSummary.from_dict(json.loads(summary.read_text()))


def _static_params(task: str, factor: float) -> int:
    """The parameters of the static run ``esper train static --width-multiplier factor``
    builds (assembled as that run is, without training it)."""
    built = build_run(RunSpec(mode="static", task=task, width_multiplier=factor))
    built.trainer.close()
    return built.model.count_parameters()["total"]


def _widening_for(task: str, target: float) -> float:
    factor = 1.0
    while _static_params(task, factor) < target and factor < 8:
        factor = round(factor + 0.125, 3)
    return factor


def _has_test(runs: list[RunSummary]) -> bool:
    return all(r.has_test for r in runs)


def _header(with_test: bool) -> str:
    test = " test acc (%) | test loss |" if with_test else ""
    head = (
        f"| model |{test} final val acc (%) | best val acc (%) | final val loss | params |"
        " train TFLOP |"
    )
    return head + " fossilized |\n" + "| --- " * (7 + 2 * with_test) + "|"


def _row(label: str, runs: list[RunSummary]) -> str:
    def mean(values: list[float], digits: int = 2) -> str:
        # Sample standard deviation: the seeds are a sample of what the command gives.
        spread = statistics.stdev(values) if len(values) > 1 else float("nan")
        return f"{statistics.fmean(values):.{digits}f} ± {spread:.{digits}f}"

    params = statistics.fmean(r.total_params for r in runs)
    tflop = statistics.fmean(r.train_flops for r in runs) / 1e12
    fossil = sum(r.fossilized for r in runs)
    test = (
        f" {mean([r.test_accuracy for r in runs])} | {mean([r.test_loss for r in runs], 4)} |"
        if _has_test(runs)
        else ""
    )
    return (
        f"| {label} |{test} {mean([r.final_val_accuracy for r in runs])} | "
        f"{mean([r.best_val_accuracy for r in runs])} | "
        f"{statistics.fmean(r.final_val_loss for r in runs):.4f} | {params:,.0f} | "
        f"{tflop:.4g} | {fossil} |"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--task", default="digits")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", default="runs/compare")
    parser.add_argument(
        "--growth-patience",
        type=int,
        default=DEFAULT_GROWTH_PATIENCE,
        metavar="N",
        help=f"the grown runs' --growth-patience (default {DEFAULT_GROWTH_PATIENCE}); N > 0 "
        "names their folders heuristic-patienceN-TASK-sS and 0 heuristic-TASK-sS, so runs "
        "with different patience sit side by side in one --out",
    )
    args, extra = parser.parse_known_args(argv)
    if args.growth_patience < 0:
        parser.error(f"--growth-patience must be >= 0, got {args.growth_patience}")
    out = Path(args.out)
    patience = args.growth_patience
    grown_flags = [*extra, "--growth-patience", str(patience)]
    grown_name = f"heuristic-patience{patience}" if patience else "heuristic"
    static = [
        _run("static", args.task, s, out / f"static-{args.task}-s{s}", extra) for s in args.seeds
    ]
    grown = [
        _run("heuristic", args.task, s, out / f"{grown_name}-{args.task}-s{s}", grown_flags)
        for s in args.seeds
    ]
    target = statistics.fmean(r.total_params for r in grown)
    factor = _widening_for(args.task, target)
    wide = [
        _run(
            "static",
            args.task,
            s,
            out / f"wide{factor}-{args.task}-s{s}",
            [*extra, "--width-multiplier", str(factor)],
        )
        for s in args.seeds
    ]
    print(f"\n{args.task}, seeds {args.seeds}; widened host: --width-multiplier {factor}\n")
    print(_header(_has_test(static)))
    print(_row("static host", static))
    print(
        _row(
            "grown (heuristic)"
            if patience == DEFAULT_GROWTH_PATIENCE
            else f"grown (heuristic, patience {patience})",
            grown,
        )
    )
    print(_row(f"static host widened x{factor}", wide))
    stages = [" → ".join(SeedRecord.from_dict(s).stages) for r in grown for s in r.seeds]
    print("\nseed lifecycles:\n" + "\n".join(f"- {s}" for s in stages))
    return 0


if __name__ == "__main__":
    sys.exit(main())
