"""The heuristic controller and its signal tracker."""

from __future__ import annotations

from dataclasses import replace

import pytest

from esper.kasmina import list_blueprints
from esper.leyline import DEFAULT_GROWTH_PATIENCE, Outcome, SeedStage, as_controller
from esper.tamiyo import Action, Controller, Decision, HeuristicConfig, HeuristicController
from esper.tamiyo.decisions import TrainingSignals
from esper.testing import slot_report, training_signals
from esper.tolaria import SignalTracker

SLOTS = ("early", "mid", "late")


def test_is_a_controller():
    assert isinstance(HeuristicController("cnn"), Controller)


def test_controller_hooks_default_to_nothing():
    class Waits(Controller):
        def decide(self, signals):
            return Decision(Action.WAIT)

    waits = Waits()
    waits.on_outcome(Decision(Action.WAIT), Outcome(applied=True))
    waits.on_cull("norm")
    waits.reset()
    waits.load_state_dict({})
    assert waits.reads_blending_counterfactuals and waits.state_dict() == {}
    with pytest.raises(ValueError, match="Waits cannot load one"):
        waits.load_state_dict({"rng": 1})  # a checkpoint written under another controller
    with pytest.raises(NotImplementedError, match="decide"):
        Controller().decide(training_signals())


def test_as_controller_wraps_an_object_with_decide_in_its_own_hooks_and_the_defaults():
    class Own:
        reads_blending_counterfactuals = False

        def __init__(self):
            self.culled = []

        def decide(self, signals):
            return Decision(Action.WAIT)

        def on_cull(self, blueprint):
            self.culled.append(blueprint)

    own = Own()
    wrapped = as_controller(own)
    assert isinstance(wrapped, Controller) and as_controller(wrapped) is wrapped
    assert as_controller(None) is None
    wrapped.on_cull("norm")
    wrapped.on_outcome(Decision(Action.WAIT), Outcome(applied=True))  # the default
    assert own.culled == ["norm"] and wrapped.culled is own.culled  # its other attributes
    assert not wrapped.reads_blending_counterfactuals and wrapped.state_dict() == {}
    assert wrapped.decide(training_signals()).action == Action.WAIT
    with pytest.raises(ValueError, match="Own cannot load one"):
        wrapped.load_state_dict({"rng": 1})
    with pytest.raises(TypeError, match="decide"):
        as_controller(object())


@pytest.mark.parametrize(
    "timing, kwargs, reason",
    [
        ("plateau", {"epoch": 4}, "too early"),
        ("plateau", {"stabilized": False}, "not stabilized"),
        ("plateau", {"plateau": 2}, "plateau"),
        ("relative", {"epoch": 4}, "too early"),
        ("relative", {"plateau": 2}, "learning curve not known"),
        ("relative", {"plateau": 2, "recent_loss_share": 0.5}, "still learning fast"),
    ],
)
def test_waits_until_host_is_ready(timing, kwargs, reason):
    decision = HeuristicController("cnn", HeuristicConfig(timing=timing)).decide(
        training_signals(**kwargs)
    )
    assert decision.action == Action.WAIT and reason in decision.reason


def test_relative_timing_is_the_default_and_says_why_it_grows():
    assert HeuristicConfig().timing == "relative"
    decision = HeuristicController("cnn").decide(
        training_signals(plateau=0, recent_loss_share=0.05)
    )
    assert decision.action == Action.GERMINATE and "flattened" in decision.reason
    on_plateau = HeuristicController("cnn").decide(
        training_signals(plateau=3, recent_loss_share=0.5)
    )
    assert on_plateau.action == Action.GERMINATE and "plateau for 3" in on_plateau.reason


@pytest.mark.parametrize("topology", ["cnn", "transformer"])
def test_germinates_on_plateau_with_a_blueprint_valid_for_the_topology(topology):
    decision = HeuristicController(topology).decide(training_signals(topology=topology))
    assert decision.action == Action.GERMINATE
    assert decision.blueprint in list_blueprints(topology) and decision.blueprint != "noop"
    # CNNs grow shallow first (cheap seeds), transformers deep first (measured, see config).
    assert decision.slot == ("early" if topology == "cnn" else "late")


def test_one_seed_incubates_at_a_time():
    slots = [slot_report("early", SeedStage.TRAINING), slot_report("mid"), slot_report("late")]
    assert HeuristicController("cnn").decide(training_signals(slots=slots)).action == Action.WAIT


def test_probation_fossilizes_positive_and_culls_non_positive_contribution():
    ctl = HeuristicController("cnn")
    good = [slot_report("early", SeedStage.PROBATIONARY, counterfactual_contribution=2.0)]
    bad = [slot_report("early", SeedStage.PROBATIONARY, counterfactual_contribution=0.0)]
    assert ctl.decide(training_signals(slots=good)).action == Action.FOSSILIZE
    decision = ctl.decide(training_signals(slots=bad))
    assert decision.action == Action.CULL and decision.slot == "early"


def test_culls_a_seed_that_lingered_while_accuracy_fell():
    lingering = slot_report(
        "mid",
        SeedStage.TRAINING,
        epochs_in_current_stage=5,
        quality_at_stage_start=95.0,
        current_quality=92.0,
    )
    decision = HeuristicController("cnn").decide(training_signals(slots=[lingering]))
    assert decision.action == Action.CULL and decision.slot == "mid"


def test_culled_blueprints_are_penalized_and_choice_is_deterministic():
    a, b = HeuristicController("cnn", seed=3), HeuristicController("cnn", seed=3)
    first = a.decide(training_signals()).blueprint
    assert first == b.decide(training_signals()).blueprint
    a.on_cull(first)
    assert a.decide(training_signals()).blueprint != first


def test_unknown_blueprint_or_slot_order_is_rejected():
    with pytest.raises(ValueError, match="valid: noop, norm, lora"):
        HeuristicController("transformer", HeuristicConfig(blueprints=("conv_light",)))
    with pytest.raises(ValueError, match="slot_order"):
        HeuristicConfig(slot_order="random")


def test_tracker_counts_plateau_against_best_accuracy():
    tracker = SignalTracker(plateau_threshold=0.5)
    accs = [50.0, 70.0, 70.3, 69.0, 70.4, 71.0]
    signals = [
        tracker.update(
            epoch=i + 1, train_loss=1.0, val_loss=1.0 / (i + 1), val_quality=a, topology="cnn"
        )
        for i, a in enumerate(accs)
    ]
    assert [s.plateau_epochs for s in signals] == [0, 0, 1, 2, 3, 0]


def test_a_controller_needs_only_decide(tmp_path):
    """The trainer accepts any object with decide(), wrapped once by as_controller; the hooks
    are optional."""
    import torch

    from esper.kasmina.host import CNNHost, MorphogeneticModel
    from esper.tamiyo import Decision
    from esper.tolaria.data import TaskData
    from esper.tolaria.trainer import Trainer

    class GrowOnce:
        def decide(self, signals):
            if signals.epoch == 1:
                return Decision(Action.GERMINATE, slot="mid", blueprint="norm")
            return Decision(Action.WAIT)

    assert isinstance(as_controller(GrowOnce()), Controller)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(32, 1, 8, 8, generator=g), torch.randint(0, 3, (32,), generator=g)
    data = TaskData(train_x=x, train_y=y, val_x=x, val_y=y, num_classes=3)
    host = CNNHost(num_classes=3, n_blocks=2, base_channels=4, in_channels=1)
    trainer = Trainer(MorphogeneticModel(host, slots=["mid"]), data, controller=GrowOnce())
    trainer.run_epoch()
    trainer.run_epoch()
    assert trainer.model.seed_slots["mid"].stage == SeedStage.TRAINING


def test_culls_a_seed_stalled_in_training():
    stalled = slot_report("mid", SeedStage.TRAINING, epochs_in_current_stage=10)
    decision = HeuristicController("cnn").decide(training_signals(slots=[stalled]))
    assert decision.action == Action.CULL and "stalled" in decision.reason
    young = slot_report("mid", SeedStage.TRAINING, epochs_in_current_stage=9)
    assert HeuristicController("cnn").decide(training_signals(slots=[young])).action == Action.WAIT
    off = HeuristicController("cnn", HeuristicConfig(cull_stalled_after_epochs=0))
    assert off.decide(training_signals(slots=[stalled])).action == Action.WAIT


def test_heuristic_waits_once_the_seed_budget_is_spent():
    ready = training_signals(plateau=5)
    controller = HeuristicController("cnn")
    assert controller.decide(ready).action == Action.GERMINATE
    assert controller.decide(replace(ready, seeds_left=1)).action == Action.GERMINATE
    spent = controller.decide(replace(ready, seeds_left=0))
    assert spent.action == Action.WAIT and "max_seeds" in spent.reason


def test_growth_stops_after_patience_culls_in_a_row_and_a_fossil_restarts_the_count():
    ready = training_signals(plateau=5)
    controller = HeuristicController("cnn", HeuristicConfig(growth_patience=2))
    for blueprint in ("conv_light", "depthwise"):
        assert controller.decide(ready).action == Action.GERMINATE
        controller.on_cull(blueprint)
    stopped = controller.decide(ready)
    assert stopped.action == Action.WAIT
    assert stopped.reason == "growth stopped: the last 2 seeds were culled (patience 2)"
    # Settling a seed still in probation is not growth: it goes on while germination waits.
    keep = slot_report("mid", SeedStage.PROBATIONARY, counterfactual_contribution=0.5)
    fossilize = controller.decide(training_signals(slots=[keep]))
    assert fossilize.action == Action.FOSSILIZE
    controller.on_outcome(fossilize, Outcome(applied=True))
    assert controller.culls_in_a_row == 0
    assert controller.decide(ready).action == Action.GERMINATE
    # A refused fossilization is not one: the count stands.
    controller.on_cull("conv_light")
    controller.on_outcome(fossilize, Outcome(applied=False, reason="refused"))
    assert controller.culls_in_a_row == 1


def test_with_patience_the_next_seed_waits_for_the_last_ones_fate():
    blending = slot_report("early", SeedStage.BLENDING)
    ready = training_signals(plateau=5, slots=[blending, slot_report("mid")])
    # Without patience the next seed grows while the last one blends.
    eager = HeuristicController("cnn", HeuristicConfig(growth_patience=0))
    assert eager.decide(ready).action == Action.GERMINATE
    # The default is patient.
    assert HeuristicController("cnn").decide(ready).action == Action.WAIT
    patient = HeuristicController("cnn", HeuristicConfig(growth_patience=2)).decide(ready)
    assert patient.action == Action.WAIT
    assert patient.reason == "patience 2: waiting for the last seed's fate"
    probation = slot_report("early", SeedStage.PROBATIONARY)
    waiting = training_signals(plateau=5, slots=[probation, slot_report("mid")])
    assert HeuristicController("cnn", HeuristicConfig(growth_patience=2)).decide(
        waiting
    ).action == (Action.WAIT)
    fossil = slot_report("early", SeedStage.FOSSILIZED)
    settled = training_signals(plateau=5, slots=[fossil, slot_report("mid")])
    grow = HeuristicController("cnn", HeuristicConfig(growth_patience=2)).decide(settled)
    assert grow.action == Action.GERMINATE and grow.slot == "mid"


def test_patience_zero_never_stops_growing_and_negative_is_rejected():
    controller = HeuristicController("cnn", HeuristicConfig(growth_patience=0))
    for _ in range(10):
        controller.on_cull("conv_light")
    assert controller.decide(training_signals(plateau=5)).action == Action.GERMINATE
    with pytest.raises(ValueError, match="patience must be >= 0"):
        HeuristicConfig(growth_patience=-1)
    default = HeuristicController("cnn")
    assert default.config.growth_patience == DEFAULT_GROWTH_PATIENCE > 0
    for _ in range(DEFAULT_GROWTH_PATIENCE):
        default.on_cull("conv_light")
    assert default.decide(training_signals(plateau=5)).action == Action.WAIT


def test_the_cull_count_is_part_of_the_controller_state():
    controller = HeuristicController("cnn", HeuristicConfig(growth_patience=3))
    controller.on_cull("conv_light")
    controller.on_cull("depthwise")
    state = controller.state_dict()
    again = HeuristicController("cnn", HeuristicConfig(growth_patience=3))
    again.load_state_dict(state)
    assert again.culls_in_a_row == 2
    again.on_cull("norm")
    assert again.decide(training_signals(plateau=5)).action == Action.WAIT
    controller.reset()
    assert controller.culls_in_a_row == 0


def _still_learning(**overrides) -> TrainingSignals:
    """Epoch 12 of 40, no plateau and a host still improving, unless ``overrides`` say so."""
    return replace(
        training_signals(epoch=12, plateau=0, stabilized=False, total_epochs=40), **overrides
    )


def test_relative_timing_grows_once_the_loss_curve_flattens_and_never_too_late():
    relative = HeuristicController("cnn", HeuristicConfig(timing="relative"))
    plateau = HeuristicController("cnn", HeuristicConfig(timing="plateau"))
    # Still improving (no plateau, host not stabilized) but the last epochs made only 10% of the
    # loss's fall: relative timing grows, the plateau rule waits.
    flat = _still_learning(recent_loss_share=0.10)
    assert relative.decide(flat).action == Action.GERMINATE
    assert plateau.decide(flat).action == Action.WAIT
    steep = relative.decide(_still_learning(recent_loss_share=0.40))
    assert steep.action == Action.WAIT and "still learning" in steep.reason
    unknown = relative.decide(_still_learning(recent_loss_share=None))
    assert unknown.action == Action.WAIT
    # 8 epochs left cannot hold incubation, the ramp and a probation epoch: wait, even if flat.
    late = relative.decide(_still_learning(epoch=32, recent_loss_share=0.01, plateau_epochs=9))
    assert late.action == Action.WAIT and "too late" in late.reason
    in_time = relative.decide(_still_learning(epoch=31, recent_loss_share=0.01))
    assert in_time.action == Action.GERMINATE


def test_timing_must_be_known():
    with pytest.raises(ValueError, match="valid: plateau, relative"):
        HeuristicConfig(timing="soon")
    with pytest.raises(ValueError, match="relative_share"):
        HeuristicConfig(timing="relative", relative_share=1.5)


def test_tracker_recent_loss_share_and_its_state():
    tracker = SignalTracker()
    shares = [
        tracker.update(
            epoch=e, train_loss=1.0, val_loss=v, val_quality=50.0, topology="cnn"
        ).recent_loss_share
        for e, v in enumerate([2.0, 1.5, 1.2, 1.1, 1.05, 1.04], start=1)
    ]
    assert shares[:3] == [None, None, None]  # three epochs back needs four losses
    assert shares[3] == pytest.approx((2.0 - 1.1) / (2.0 - 1.1))  # all of the fall is recent
    assert shares[5] == pytest.approx((1.2 - 1.04) / (2.0 - 1.04))
    again = SignalTracker()
    state = tracker.state_dict()
    again.load_state_dict(state)
    nxt = dict(epoch=7, train_loss=1.0, val_loss=1.03, val_quality=50.0, topology="cnn")
    assert again.update(**nxt) == tracker.update(**nxt)
