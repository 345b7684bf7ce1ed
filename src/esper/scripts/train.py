"""The main job: ``esper train`` (also ``python -m esper.scripts.train``).

Usage::

    esper train heuristic --task digits --seed 0
    python -m esper.scripts.train static --task pyref --seed 1
    esper train --resume runs/heuristic-digits-s0-20261126-120000

The run itself is a library object (:mod:`esper.runs`); this module parses the flags, which
are generated from :class:`~esper.runs.RunSpec`'s fields, and maps errors and signals to exit
codes. Under ``torchrun --nproc_per_node N`` one model trains on N processes; rank 0 alone
writes the run directory (see ``docs/distributed.md``).
"""

from __future__ import annotations

import argparse
import re
import signal
import sys

import torch

from esper.runs import MODES, ResumeError, RunSpec, UsageError, resume_run, train_run
from esper.runs.errors import print_error
from esper.runs.flags import OneLineParser, add_spec_arguments, given_flags, spec_from_args
from esper.tolaria import distributed as ranks
from esper.tolaria.data import DataNotFoundError

#: Seconds a rank waits in a collective for the others before it gives up (a dead or hung rank).
DEFAULT_DIST_TIMEOUT = 60.0


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """The run's flags (one per :class:`~esper.runs.RunSpec` field) and the command's own."""
    add_spec_arguments(parser)
    parser.add_argument(
        "--resume",
        default=None,
        metavar="RUN_DIR",
        help="continue a killed run from its checkpoint, with its original configuration",
    )
    parser.add_argument(
        "--live",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="a live view of slots, stages and numbers (default: on when stdout is a terminal)",
    )
    parser.add_argument(
        "--dist-timeout",
        type=float,
        default=DEFAULT_DIST_TIMEOUT,
        metavar="SECONDS",
        help="under torchrun: how long a rank waits for the others in a collective before it "
        f"stops with an error (default {DEFAULT_DIST_TIMEOUT:g})",
    )


class RankStopped(RuntimeError):
    """This rank was told to stop (SIGTERM: torchrun stops the others when one rank fails)."""


def _stop_on_sigterm(signum, frame) -> None:
    raise RankStopped("stopped by the launcher (SIGTERM), most likely because another rank failed")


def _lost_other_ranks(exc: RuntimeError) -> bool:
    """Whether ``exc`` says that a collective failed (a rank died or timed out) or that the
    launcher stopped this rank, rather than a fault of this rank's own."""
    if isinstance(exc, (RankStopped, torch.distributed.DistError)):
        return True
    text = str(exc).lower()
    return any(word in text for word in ("gloo", "nccl", "connection closed", "timed out"))


def train_main(args: argparse.Namespace) -> int:
    """Run from parsed arguments; bad input is one line on stderr and exit code 2. Under
    torchrun, a rank that loses the others (one died, hangs past ``--dist-timeout``, or the
    launcher stops it) says so in one line and exits 1; the run directory keeps its last
    checkpoint."""
    context = None
    if not args.dist_timeout > 0:
        print_error(UsageError(f"--dist-timeout must be > 0 seconds, got {args.dist_timeout}"))
        return 2
    if ranks.launched_by_torchrun():
        # A device given on the command line becomes this rank's own (cuda -> cuda:LOCAL_RANK);
        # left unset, the spec's default applies (and --resume sees no flag given).
        context, device = ranks.init_from_env(
            args.device or RunSpec.default("device"), args.dist_timeout
        )
        if args.device is not None:
            args.device = device
        signal.signal(signal.SIGTERM, _stop_on_sigterm)
    together = False
    try:
        code = _train_main(args)
        together = True
        return code
    except (UsageError, ResumeError, DataNotFoundError) as exc:
        together = True  # every rank got here alike
        if context is None or context.is_main:  # every rank fails alike: one says so
            print_error(exc)
        return 2
    except RuntimeError as exc:
        if context is None or not _lost_other_ranks(exc):
            raise
        where = f" in {args.resume or args.run_dir}" if (args.resume or args.run_dir) else ""
        # Gloo prefixes its messages with a source location; the reader needs the words.
        reason = re.sub(r"\[[^\]]*\.(?:cc|cpp|h):\d+\]\s*", "", " ".join(str(exc).split()))
        reason = reason[:160] + ("..." if len(reason) > 160 else "")
        sys.stderr.write(
            f"esper: error: rank {context.rank} of {context.world_size}: lost the other ranks "
            f"({reason}); the last checkpoint{where} is intact: resume with the same torchrun "
            "command and --resume\n"
        )
        return 1
    finally:
        if context is not None:
            ranks.shutdown(together=together)


def _train_main(args: argparse.Namespace) -> int:
    if args.resume is not None:
        extra = given_flags(args)
        if extra:
            raise UsageError(
                f"--resume continues a run with its original configuration; drop {', '.join(extra)}"
            )
        resume_run(args.resume, live=args.live)
    elif args.mode is None:
        raise UsageError(f"a mode is required: one of {', '.join(MODES)} (or --resume RUN_DIR)")
    else:
        train_run(spec_from_args(args), live=args.live)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(
        prog="python -m esper.scripts.train",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_train_arguments(parser)
    return train_main(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
