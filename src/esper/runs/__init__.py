"""A training run as a library object.

:class:`RunSpec` says what to run (and generates ``esper train``'s flags); :func:`build_run` is
the one place a run is assembled (the command line, ``--resume``, Simic's episodes and the
benchmarks all call it; docs/design.md, "The run objects"); :class:`Run` owns the run
directory (new, resume, train, save, finish); :class:`RunSummary` is the typed ``summary.json``.

Example::

    from esper.runs import Run, RunSpec

    with Run.new(RunSpec(mode="heuristic", task="digits", seed=1)) as run:
        summary = run.train()
    print(summary.test_accuracy, summary.total_params)
"""

from esper.runs.build import FROM_MODE, BuiltRun, build_run, resolve_spec, trainer_config
from esper.runs.errors import ResumeError, UsageError
from esper.runs.run import Run, resume_run, train_run
from esper.runs.spec import MODES, RunSpec
from esper.runs.summary import RunSummary

__all__ = [
    "FROM_MODE",
    "MODES",
    "BuiltRun",
    "ResumeError",
    "Run",
    "RunSpec",
    "RunSummary",
    "UsageError",
    "build_run",
    "resolve_spec",
    "resume_run",
    "train_run",
    "trainer_config",
]
