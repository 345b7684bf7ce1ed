"""The run as a library object: the spec, its flags, the migration table, and the one
assembly every caller shares."""

from __future__ import annotations

import json
from dataclasses import fields, replace
from pathlib import Path

import pytest
import torch

from esper.leyline.formats import CURRENT, EPISODE, RUN_SPEC, FormatError, migrate
from esper.runs import (
    RunSpec,
    RunSummary,
    UsageError,
    build_run,
    resolve_spec,
    trainer_config,
)
from esper.runs.flags import OneLineParser, add_spec_arguments, given_flags, spec_from_args
from esper.tolaria.tasks import get_task

README = Path(__file__).resolve().parents[1] / "README.md"


def _parse(argv: list[str]):
    parser = OneLineParser(prog="test")
    add_spec_arguments(parser)
    return parser.parse_args(argv)


def test_every_spec_field_is_a_flag_and_round_trips_through_config_json():
    args = _parse(
        [
            "heuristic",
            "--task",
            "pyref",
            "--slots",
            "late",
            "--blueprints",
            "mlp,lora",
            "--log",
            "tensorboard",
            "--epochs",
            "3",
            "--telemetry-stride",
            "5",
        ]
    )
    spec = spec_from_args(args)
    assert spec.slots == ("late",) and spec.blueprints == ("mlp", "lora")
    assert spec.gradient_telemetry_stride == 5 and spec.log == ("tensorboard",)
    assert set(given_flags(args)) == {
        "mode",
        "--task",
        "--slots",
        "--blueprints",
        "--log",
        "--epochs",
        "--telemetry-stride",
    }
    raw = json.loads(json.dumps(spec.to_dict()))
    assert raw["format"] == CURRENT[RUN_SPEC]
    assert RunSpec.from_dict(raw) == spec
    assert {f.name for f in fields(RunSpec)} <= set(raw)


def test_the_readme_flags_table_lists_every_flag():
    text = README.read_text()
    parser = OneLineParser(prog="test")
    add_spec_arguments(parser)
    flags = [a.option_strings[0] for a in parser._actions if a.option_strings]
    flags.remove("-h")
    missing = [f for f in flags if f"`{f}" not in text]
    assert not missing, f"README's flags table lacks {missing}"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"mode": "grow"}, "unknown mode 'grow'; valid: heuristic, static, ppo"),
        ({"mode": "static", "lr": 0.0}, "--lr must be > 0, got 0.0"),
        ({"mode": "static", "batch_size": 0}, "--batch-size must be >= 1, got 0"),
        ({"mode": "static", "growth_patience": 2}, "--growth-patience is the heuristic's"),
        ({"mode": "static", "blueprints": ("mlp",)}, "unknown blueprint 'mlp' for task"),
    ],
)
def test_a_bad_spec_is_one_line_that_says_what_is_valid(kwargs, message):
    with pytest.raises(UsageError, match=message.replace("(", r"\(").replace(")", r"\)")):
        RunSpec(**kwargs)


def test_the_migration_table_reads_each_older_version_and_refuses_newer_ones():
    # A config.json of the development versions: no format, none of the later settings.
    old = {"mode": "heuristic", "task": "digits"}
    spec = RunSpec.from_dict(old)
    assert (spec.timing, spec.shadow_every, spec.growth_patience) == ("plateau", 1, 0)
    assert old == {"mode": "heuristic", "task": "digits"}  # the document read is not changed
    # A setting renamed since is read under its current name, with its value.
    renamed = migrate(EPISODE, {"heuristic_patience": 3})
    assert renamed["growth_patience"] == 3 and "heuristic_patience" not in renamed
    # What a newer document sets is kept, and a current one passes through unchanged.
    assert migrate(EPISODE, {"shadow_every": 4})["shadow_every"] == 4
    current = migrate(EPISODE, {})
    assert migrate(EPISODE, current) == current
    with pytest.raises(FormatError, match="version 9 is not one this Esper reads"):
        migrate(RUN_SPEC, {"format": 9})
    with pytest.raises(FormatError, match="unknown format"):
        migrate("nope", {})


def test_the_shipped_policies_read_as_the_settings_they_were_trained_with():
    from esper.simic.policy import Policy, shipped_policy_path

    episode = Policy.load(shipped_policy_path("digits")).episode
    assert (episode["shadow_every"], episode["growth_patience"]) == (1, 0)
    spec = resolve_spec(RunSpec(mode="ppo", task="digits"))
    assert (spec.epochs, spec.width_multiplier, spec.shadow_every) == (30, 0.5, 1)
    # A flag given wins over what the policy was trained with.
    assert resolve_spec(RunSpec(mode="ppo", task="digits", epochs=5)).epochs == 5


def test_build_run_is_deterministic_and_a_static_run_is_the_heuristic_host():
    a = build_run(RunSpec(mode="static", task="digits", seed=3))
    b = build_run(RunSpec(mode="heuristic", task="digits", seed=3))
    try:
        assert a.trainer.controller is None and b.trainer.controller is not None
        sa, sb = a.model.state_dict(), b.model.state_dict()
        assert sa.keys() == sb.keys()
        assert all(torch.equal(sa[k], sb[k]) for k in sa if isinstance(sa[k], torch.Tensor))
        assert a.trainer.config == b.trainer.config
    finally:
        a.trainer.close()
        b.trainer.close()


def test_the_seeds_rate_scales_with_the_hosts_by_the_tasks_ratio():
    pystd = get_task("pystd")
    assert trainer_config(resolve_spec(RunSpec("heuristic", task="pystd")), pystd).seed_lr == (
        pystd.seed_lr
    )
    doubled = trainer_config(resolve_spec(RunSpec("heuristic", task="pystd", lr=0.006)), pystd)
    assert (doubled.lr, doubled.seed_lr) == (0.006, pystd.seed_lr * 2)
    uneven = replace(pystd, seed_lr=pystd.lr / 3)  # a task whose seeds train slower
    halved = trainer_config(resolve_spec(RunSpec("heuristic", task="pystd", lr=0.0015)), uneven)
    assert halved.seed_lr == pytest.approx(uneven.seed_lr / 2)


def test_an_unknown_slot_is_refused_before_anything_is_written(tmp_path):
    from esper.runs import Run

    with pytest.raises(UsageError, match="unknown slot 'deep' for task 'digits'; valid: "):
        Run.new(RunSpec(mode="static", slots=("deep",), run_dir=str(tmp_path / "run")))
    assert not (tmp_path / "run").exists()


def test_a_summary_round_trips_and_keeps_its_test_numbers_optional():
    values = {f.name: 1 for f in fields(RunSummary) if f.default is f.default_factory}
    summary = RunSummary(
        **{k: v for k, v in values.items() if k in {f.name for f in fields(RunSummary)}}
    )
    raw = summary.to_dict()
    assert "test_loss" not in raw and not summary.has_test
    assert RunSummary.from_dict(raw) == summary
    summary.test_loss, summary.test_accuracy = 0.5, 90.0
    raw = summary.to_dict()
    keys = list(raw)
    assert keys.index("test_accuracy") == keys.index("best_val_loss") + 1
    assert RunSummary.from_dict(raw).has_test
    assert "format" not in summary.event_data() and "wall_seconds" not in summary.event_data()


def test_the_readmes_python_example_runs_as_written(tmp_path, monkeypatch):
    text = README.read_text()
    start = text.index("```python\nfrom esper.runs import RunSpec, train_run")
    code = text[start + len("```python\n") : text.index("```", start + 10)]
    monkeypatch.chdir(tmp_path)  # its run folder goes under ./runs
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102 - the README's own example
    summary = namespace["summary"]
    assert summary.fossilized == 1 and summary.has_test  # seed 1 keeps its early seed
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert RunSummary.from_dict(json.loads((run_dir / "summary.json").read_text())) == summary


def test_an_event_log_cut_below_the_checkpoints_offset_is_refused_and_left_alone(tmp_path):
    from esper.runs import ResumeError, Run

    run_dir = tmp_path / "run"
    run = Run.new(RunSpec(mode="static", epochs=2, run_dir=str(run_dir)), live=False)
    run.trainer.run_epoch()
    run.save()
    run.close()  # a kill after epoch 1's checkpoint
    events = run_dir / "events.jsonl"
    events.write_bytes(events.read_bytes()[:10])
    with pytest.raises(ResumeError, match=r"events.jsonl: shorter than the checkpoint's \d+ bytes"):
        Run.resume(run_dir)
    assert events.stat().st_size == 10
