"""What a finished run reports: :class:`RunSummary`, written as ``summary.json``.

Reports, Simic's evaluation and the benchmarks read it through :meth:`RunSummary.from_dict`,
never by string key, so the schema lives here once.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import MISSING, asdict, dataclass, field, fields

from esper.leyline.formats import RUN_SUMMARY, migrate, stamped
from esper.nissa.records import is_number

#: Keys left out of the ``run_completed`` event: wall-clock times (so a resumed run's event
#: log equals an uninterrupted one's), the seeds (they have events of their own), what only
#: distributed runs have, and the format.
NOT_IN_EVENTS = (
    "seeds",
    "wall_seconds",
    "counterfactual_seconds",
    "ranks_identical",
    "rank_state_digests",
    "rank_event_digests",
    "format",
)
#: Fields written only when they have a value (a task without a test split, a run on one
#: process).
OPTIONAL = (
    "test_accuracy",
    "test_loss",
    "ranks_identical",
    "rank_state_digests",
    "rank_event_digests",
)
_TEST_KEYS = ("test_accuracy", "test_loss")
#: What :meth:`RunSummary.check` asks of each field's value.
_TEXT = ("mode", "task")
_COUNTS = (
    "epochs",
    "host_params",
    "total_params",
    "fossilized",
    "culled",
    "rollbacks",
    "train_flops",
    "eval_flops",
    "counterfactual_flops",
    "param_epochs",
    "world_size",
)
_LISTS = ("seeds", "rank_state_digests", "rank_event_digests")


@dataclass
class RunSummary:
    """One finished run. Accuracies are in percent; losses are the task's mean loss.

    Attributes:
        mode, task, seed, epochs, width_multiplier: what ran.
        final_val_accuracy, final_val_loss: measured once on the final model (the one saved,
            after the last epoch's lifecycle step).
        final_train_loss: the last epoch's mean training loss.
        best_val_accuracy, best_val_loss: the best over the epochs' measurements.
        test_accuracy, test_loss: the final model on the test split (None without one).
        host_params, total_params: parameters of the host alone and of the final model.
        fossilized, culled: how many seeds ended each way.
        rollbacks: the governor's rollbacks.
        train_flops, eval_flops: compute spent training (shadow passes included) and
            evaluating (counterfactual passes included).
        counterfactual_flops, counterfactual_seconds: the counterfactual passes' share.
        param_epochs: parameters trained, summed over epochs.
        wall_seconds: wall time, resumed runs included.
        world_size: processes that trained the model.
        seeds: each seed's record (``SeedRecord.to_dict``).
        ranks_identical, rank_state_digests, rank_event_digests: under torchrun, whether every
            rank ended with the same model, and each rank's digests of model and events.
    """

    mode: str
    task: str
    seed: int
    epochs: int
    width_multiplier: float
    final_val_accuracy: float
    final_val_loss: float
    final_train_loss: float
    best_val_accuracy: float
    best_val_loss: float
    host_params: int
    total_params: int
    fossilized: int
    culled: int
    rollbacks: int
    train_flops: int
    eval_flops: int
    counterfactual_flops: int
    counterfactual_seconds: float
    param_epochs: int
    wall_seconds: float
    world_size: int = 1
    seeds: list[dict] = field(default_factory=list)
    test_accuracy: float | None = None
    test_loss: float | None = None
    ranks_identical: bool | None = None
    rank_state_digests: list[str] | None = None
    rank_event_digests: list[str] | None = None

    @property
    def has_test(self) -> bool:
        """Whether the task had a test split to measure."""
        return self.test_loss is not None

    def to_dict(self) -> dict:
        """The summary as ``summary.json`` holds it (fields without a value left out)."""
        values = asdict(self)
        raw = {}
        for name, value in values.items():
            if name in _TEST_KEYS:
                continue
            raw[name] = value
            if name == "best_val_loss":  # the test numbers follow the validation ones
                raw.update((k, values[k]) for k in _TEST_KEYS)
        for name in OPTIONAL:
            if raw[name] is None:
                del raw[name]
        return stamped(RUN_SUMMARY, raw)

    def event_data(self) -> dict:
        """What the ``run_completed`` event carries."""
        return {k: v for k, v in self.to_dict().items() if k not in NOT_IN_EVENTS}

    @classmethod
    def from_dict(cls, raw: Mapping) -> RunSummary:
        """A ``summary.json`` of any version (unknown keys are ignored).

        Raises:
            ValueError: a required key is missing (``"missing key(s) task, seed"``), or the
                version is not one this Esper reads (:class:`esper.leyline.formats.FormatError`).
        """
        migrated = migrate(RUN_SUMMARY, raw)
        required = [
            f.name
            for f in fields(cls)
            if f.default is MISSING and f.default_factory is MISSING and f.name not in migrated
        ]
        if required:
            raise ValueError(f"missing key(s) {', '.join(required)}")
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in migrated.items() if k in known})

    def check(self) -> None:
        """Check each field holds what its type says (a summary read from a file may not).

        Numbers are JSON numbers (ints where a count), never bools; test numbers, rank results
        and digests may be None.

        Raises:
            ValueError: one line naming the first wrong field and its value, e.g.
                ``"'final_val_accuracy' must be a number, got 'high'"``.
        """
        for f in fields(self):
            name, value = f.name, getattr(self, f.name)
            if name in _TEXT:
                ok, what = isinstance(value, str), "a string"
            elif name == "seed":
                ok, what = _is_int(value), "an integer"
            elif name in _COUNTS:
                ok, what = _is_int(value) and value >= 0, "a count (an integer >= 0)"
            elif name in _LISTS:
                ok, what = isinstance(value, list), "a list"
            elif name == "ranks_identical":
                ok, what = isinstance(value, bool), "true or false"
            else:
                ok, what = is_number(value), "a number"
            if not ok and not (value is None and name in OPTIONAL):
                raise ValueError(f"{name!r} must be {what}, got {value!r}")
        for i, record in enumerate(self.seeds):
            if not isinstance(record, dict):
                raise ValueError(f"'seeds'[{i}] must be a seed record (an object), got {record!r}")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
