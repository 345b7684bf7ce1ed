"""The seed lifecycle over the matrix of tiny hosts: exact host output where the seed must not
matter, the legal path through the gates, culls through the embargo, and refusals that change
nothing."""

from __future__ import annotations

import contextlib
import copy

import pytest
import torch
from torch import nn

from conftest import DEFAULT_BLUEPRINT, TINY_HOSTS, drive_to, pass_g2_metrics, perturb_seed
from esper.kasmina import (
    GateConfig,
    GateFailedError,
    IllegalTransitionError,
    SeedSlot,
    SeedState,
    SlotOccupiedError,
    build_blend,
)
from esper.kasmina.blueprints import _REGISTRY, register_blueprint
from esper.leyline import (
    DEFAULT_G2_MIN_TRAINING_EPOCHS,
    DEFAULT_G3_MIN_ALPHA,
    DEFAULT_G3_MIN_BLENDING_EPOCHS,
    VALID_TRANSITIONS,
    SeedMetrics,
    SeedStage,
    is_valid_transition,
)
from esper.testing import host_output, training_loss

S = SeedStage
ALL_STAGES = [s for s in SeedStage if s != S.UNKNOWN]
BLENDS = ["linear", "sigmoid", "gated"]


@contextlib.contextmanager
def slot_io(slot):
    """Record the features entering and leaving ``slot`` in each forward."""
    seen: dict[str, torch.Tensor] = {}

    def hook(module, args, out):
        seen["in"], seen["out"] = args[0], out

    handle = slot.register_forward_hook(hook)
    try:
        yield seen
    finally:
        handle.remove()


def snapshot(model, slot: str) -> dict:
    """Everything a refused operation must leave untouched."""
    s = model.seed_slots[slot]
    return {
        "state": s.state.to_dict(),
        "seed": s.seed,
        "blend": s.blend,
        "isolate": s.isolate_gradients,
        "sd": {k: (v.clone() if torch.is_tensor(v) else v) for k, v in model.state_dict().items()},
    }


def assert_unchanged(model, slot: str, before: dict) -> None:
    after = snapshot(model, slot)
    assert after["state"] == before["state"]
    assert after["seed"] is before["seed"]
    assert after["blend"] is before["blend"]
    assert after["isolate"] == before["isolate"]
    assert after["sd"].keys() == before["sd"].keys()
    for k, v in before["sd"].items():
        if torch.is_tensor(v):
            assert torch.equal(after["sd"][k], v), k
        else:
            assert after["sd"][k] == v, k


def all_points_model(tiny):
    return tiny.model(slots=list(tiny.build().injection_points))


# --- exact host output ---------------------------------------------------------------------------


@pytest.mark.parametrize("train", [False, True])
@pytest.mark.parametrize("stage", [S.DORMANT, S.GERMINATED, S.TRAINING])
def test_slot_without_effect_gives_exactly_host_output(tiny, stage, train):
    model = all_points_model(tiny)
    for name in model.seed_slots:
        drive_to(model, name, stage)
        if model.seed_slots[name].seed is not None:
            perturb_seed(model.seed_slots[name])
    model.train(train)
    x = tiny.inputs()
    assert torch.equal(model(x), host_output(model, x))


@pytest.mark.parametrize("blend", BLENDS)
def test_alpha_zero_blending_gives_exactly_host_output(tiny, blend):
    model = tiny.model(slots=["early", "mid", "late"])
    for name in model.seed_slots:
        drive_to(model, name, S.BLENDING, blend=blend)
    model.eval()
    x = tiny.inputs()
    expected = host_output(model, x)
    for slot in model.seed_slots.values():
        slot.set_alpha(0.5)
    assert not torch.equal(model(x), expected)  # the perturbed seeds do matter at alpha 0.5
    for slot in model.seed_slots.values():
        slot.set_alpha(0.0)
    assert torch.equal(model(x), expected)


@pytest.mark.parametrize("blend", BLENDS)
def test_fossilized_output_equals_alpha_one_blending_output(tiny, blend):
    model = tiny.model(slots=["mid"])
    slot = drive_to(model, "mid", S.BLENDING, blend=blend)
    model.eval()
    x = tiny.inputs()
    slot.set_alpha(1.0)
    blended = model(x)
    assert not torch.equal(blended, host_output(model, x))
    for _ in range(slot.blending_steps):
        slot.step_epoch()
    assert slot.stage == S.PROBATIONARY
    assert torch.equal(model(x), blended)
    slot.state.metrics.counterfactual_contribution = 3.0
    model.fossilize_seed(slot="mid")
    assert slot.stage == S.FOSSILIZED
    assert torch.equal(model(x), blended)


@pytest.mark.parametrize("stage", [S.GERMINATED, S.TRAINING, S.BLENDING, S.PROBATIONARY])
def test_cull_restores_host_output_and_gradients_bit_for_bit(tiny, stage):
    model = tiny.model(slots=["early", "mid", "late"])
    pristine = copy.deepcopy(model)
    keys = set(model.state_dict())
    x, y = tiny.inputs(), tiny.targets()
    model.eval()
    before = model(x)
    for name in model.seed_slots:
        drive_to(model, name, stage)
    if stage in (S.BLENDING, S.PROBATIONARY):
        assert not torch.equal(model(x), before)
    for name in model.seed_slots:
        model.cull_seed(slot=name)
    assert torch.equal(model(x), before)
    assert set(model.state_dict()) == keys
    assert model.seed_parameters() == []
    assert [p.shape for p in model.parameters()] == [p.shape for p in pristine.parameters()]

    model.train()
    pristine.train()
    tiny.loss(model(x), y).backward()
    tiny.loss(pristine(x), y).backward()
    for (name, p), q in zip(model.host.named_parameters(), pristine.host.parameters(), strict=True):
        assert torch.equal(p.grad, q.grad), name


# --- the legal path ------------------------------------------------------------------------------


def test_full_lifecycle_via_step_epoch_with_real_telemetry(tiny):
    model = tiny.model(slots=["mid"])
    slot = model.seed_slots["mid"]
    x, y = tiny.inputs(), tiny.targets()
    model.germinate_seed(DEFAULT_BLUEPRINT[tiny.topology], "s1", slot="mid")
    assert slot.stage == S.GERMINATED and slot.alpha == 0.0
    reports = model.step_epoch()
    assert reports["mid"].transitions == [(S.GERMINATED, S.TRAINING)]
    assert slot.isolate_gradients

    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    accuracy = 50.0
    epochs_training = 0
    while slot.stage == S.TRAINING:
        for _ in range(2):
            opt.zero_grad()
            training_loss(model, x, y).backward()
            opt.step()
            slot.capture_gradient_telemetry()
        slot.state.metrics.record_quality(accuracy)
        accuracy += 0.5
        model.step_epoch()
        epochs_training += 1
        assert epochs_training <= DEFAULT_G2_MIN_TRAINING_EPOCHS, slot.state.metrics
    m = slot.state.metrics
    assert epochs_training == DEFAULT_G2_MIN_TRAINING_EPOCHS
    assert m.isolation_violations == 0 and m.gradient_ratio >= 0.05
    assert slot.stage == S.BLENDING
    # Blending set-up: CNN keeps isolation, transformer opens the seed path.
    assert slot.isolate_gradients == (tiny.topology == "cnn")
    assert slot.alpha == slot.blend.schedule(1, slot.blending_steps) > 0.0

    alphas = [slot.alpha]
    while slot.stage == S.BLENDING:
        model.step_epoch()
        alphas.append(slot.alpha)
    assert slot.stage == S.PROBATIONARY
    assert alphas == sorted(alphas) and alphas[-1] == 1.0
    assert len(alphas) - 1 >= DEFAULT_G3_MIN_BLENDING_EPOCHS

    m.counterfactual_contribution = 1.5
    result = model.fossilize_seed(slot="mid")
    assert result.passed and slot.stage == S.FOSSILIZED
    assert slot.alpha == 1.0 and float(slot.alpha_tensor) == 1.0
    assert not slot.isolate_gradients and slot.blend is None
    assert slot.state.stage_history == [
        S.DORMANT,
        S.GERMINATED,
        S.TRAINING,
        S.BLENDING,
        S.PROBATIONARY,
        S.FOSSILIZED,
    ]
    for _ in range(3):  # fossilized is terminal: epochs pass, nothing changes
        assert model.step_epoch()["mid"].transitions == []
    assert slot.stage == S.FOSSILIZED


def test_full_lifecycle_via_advance_stage(tiny):
    model = tiny.model(slots=["mid"])
    slot = model.seed_slots["mid"]
    model.germinate_seed(DEFAULT_BLUEPRINT[tiny.topology], "s1", slot="mid")
    assert slot.advance_stage(S.TRAINING).passed
    pass_g2_metrics(slot)
    assert slot.advance_stage(S.BLENDING).passed
    assert slot.isolate_gradients == (tiny.topology == "cnn")
    assert slot.alpha == slot.blend.schedule(1, slot.blending_steps)
    refused = slot.advance_stage(S.PROBATIONARY)
    assert not refused.passed and slot.stage == S.BLENDING
    slot.state.metrics.epochs_in_current_stage = DEFAULT_G3_MIN_BLENDING_EPOCHS
    slot.set_alpha(0.95)
    refused = slot.advance_stage(S.PROBATIONARY)  # alpha is high enough, the ramp is not done
    assert [c.split(":")[0] for c in refused.checks_failed] == ["ramp_complete"]
    slot.state.blend_step = slot.blending_steps
    assert slot.advance_stage(S.PROBATIONARY).passed
    assert slot.alpha == 1.0
    slot.state.metrics.counterfactual_contribution = 1.0
    assert slot.advance_stage(S.FOSSILIZED).passed
    assert slot.stage == S.FOSSILIZED and slot.blend is None and not slot.isolate_gradients


@pytest.mark.parametrize("blend", BLENDS)
@pytest.mark.parametrize("name", ["cnn3", "tf2"])
def test_advance_stage_does_what_step_epoch_does(name, blend):
    tiny = TINY_HOSTS[name]
    x = tiny.inputs()
    models = []
    for _ in range(2):
        model = tiny.model(slots=["mid"])
        torch.manual_seed(7)
        model.germinate_seed(
            DEFAULT_BLUEPRINT[tiny.topology], "s", slot="mid", blend_algorithm_id=blend
        )
        model.seed_slots["mid"].advance_stage(S.TRAINING)
        pass_g2_metrics(model.seed_slots["mid"])
        models.append(model)
    (by_step, by_advance) = models
    a, b = by_step.seed_slots["mid"], by_advance.seed_slots["mid"]
    by_step.step_epoch()
    assert b.advance_stage(S.BLENDING).passed
    assert a.stage == b.stage == S.BLENDING

    def same_setup():
        assert a.isolate_gradients == b.isolate_gradients
        assert a.alpha == b.alpha and torch.equal(a.alpha_tensor, b.alpha_tensor)
        assert a.state.blend_step == b.state.blend_step
        assert a.state.metrics.current_alpha == b.state.metrics.current_alpha
        assert a.state.metrics.epochs_in_current_stage == b.state.metrics.epochs_in_current_stage
        assert a.state.stage_history == b.state.stage_history
        for model in models:
            model.eval()
        assert torch.equal(by_step(x), by_advance(x))

    same_setup()
    perturb_seed(a)
    perturb_seed(b)
    for slot in (a, b):
        slot.state.metrics.epochs_in_current_stage = DEFAULT_G3_MIN_BLENDING_EPOCHS
        slot.set_alpha(1.0)
    # step_epoch ramps first (already at the top here), then applies G3.
    a.state.blend_step = b.state.blend_step = a.blending_steps
    a.step_epoch()
    assert b.advance_stage(S.PROBATIONARY).passed
    assert a.stage == b.stage == S.PROBATIONARY
    same_setup()


@pytest.mark.parametrize(
    "broken, check",
    [
        (lambda m: setattr(m, "incubation_gain", 0.0), "incubation_gain"),
        (lambda m: setattr(m, "incubation_gain", None), "incubation_gain"),
        (lambda m: setattr(m, "epochs_in_current_stage", 0), "training_epochs"),
        (lambda m: setattr(m, "gradient_ratio", 0.01), "gradient_ratio"),
        (lambda m: setattr(m, "isolation_violations", 1), "isolation"),
        (lambda m: setattr(m, "healthy", False), "healthy"),
    ],
)
@pytest.mark.parametrize("how", ["advance_stage", "step_epoch"])
def test_g2_refuses_each_missing_condition(broken, check, how):
    model = TINY_HOSTS["cnn3"].model(slots=["mid"])
    slot = drive_to(model, "mid", S.TRAINING)
    pass_g2_metrics(slot)
    broken(slot.state.metrics)
    if how == "step_epoch":
        report = slot.step_epoch()
        if check == "healthy":  # an unhealthy seed is culled, not just held back
            assert slot.stage == S.CULLED
            return
        (result,) = report.gate_results
    else:
        result = slot.advance_stage(S.BLENDING)
    assert not result.passed
    assert [c.split(":")[0] for c in result.checks_failed] == [check]
    assert slot.stage == S.TRAINING and slot.isolate_gradients and slot.alpha == 0.0


def test_g3_refuses_low_alpha_or_too_few_epochs():
    model = TINY_HOSTS["cnn3"].model(slots=["mid"])
    slot = drive_to(model, "mid", S.BLENDING)
    slot.state.metrics.epochs_in_current_stage = DEFAULT_G3_MIN_BLENDING_EPOCHS
    slot.set_alpha(0.9)
    result = slot.advance_stage(S.PROBATIONARY)
    assert not result.passed and result.checks_failed[0].startswith("alpha")
    slot.set_alpha(1.0)
    slot.state.metrics.epochs_in_current_stage = 0
    result = slot.advance_stage(S.PROBATIONARY)
    assert not result.passed and result.checks_failed[0].startswith("blending_epochs")
    assert slot.stage == S.BLENDING


@pytest.mark.parametrize("blend", BLENDS)
def test_blending_runs_its_whole_ramp_before_probation(blend):
    """G3 is checked every epoch. With the sigmoid ramp alpha passes 0.95 one step early
    (0.959 at step 4 of 5); G3 used to pass there and jump alpha to 1.0, skipping the last step.
    Now every ramp step is blended through, whatever the schedule."""
    model = TINY_HOSTS["cnn3"].model(slots=["mid"])
    slot = drive_to(model, "mid", S.BLENDING, blend=blend)
    schedule = build_blend(blend, 8, "cnn").schedule
    steps = slot.blending_steps
    alphas = [slot.alpha]
    while slot.stage == S.BLENDING:
        model.step_epoch()
        alphas.append(slot.alpha)
    assert alphas == [schedule(k, steps) for k in range(1, steps + 1)]
    assert slot.stage == S.PROBATIONARY and slot.state.blend_step == steps
    if blend == "sigmoid":
        assert schedule(steps - 1, steps) >= DEFAULT_G3_MIN_ALPHA  # the case that used to jump


@pytest.mark.parametrize("blend", BLENDS)
def test_ramp_check_changes_nothing_for_ramps_that_end_at_the_last_step(blend):
    """The default linear ramp (and the gated one, linear underneath) only reaches 0.95 at its
    last step, so waiting for the ramp to complete changes nothing there; runs with them stay
    bit-identical. Only the sigmoid ramp used to leave early."""
    traces = []
    for require in (True, False):
        config = GateConfig(g3_require_ramp_complete=require)
        model = TINY_HOSTS["cnn3"].model(slots=["mid"], gate_config=config)
        slot = drive_to(model, "mid", S.BLENDING, blend=blend)
        trace = []
        while slot.stage == S.BLENDING:
            model.step_epoch()
            trace.append((slot.stage, slot.alpha, slot.state.blend_step))
        traces.append(trace)
    if blend == "sigmoid":
        assert len(traces[1]) == len(traces[0]) - 1  # without the check: one step short
    else:
        assert traces[0] == traces[1]


# --- culls, embargo, reset ----------------------------------------------------------------------


@pytest.mark.parametrize("embargo", [1, 3])
@pytest.mark.parametrize("name", ["cnn3", "tf1"])
@pytest.mark.parametrize("from_stage", [S.GERMINATED, S.TRAINING, S.BLENDING, S.PROBATIONARY])
def test_cull_passes_through_embargo_and_resetting(name, embargo, from_stage):
    tiny = TINY_HOSTS[name]
    model = tiny.model(slots=["mid"], embargo_epochs=embargo)
    slot = drive_to(model, "mid", from_stage)
    model.cull_seed(slot="mid")
    assert slot.stage == S.CULLED and slot.seed is None and slot.blend is None
    transitions = []
    epochs = 0
    while slot.stage != S.DORMANT:
        with pytest.raises(SlotOccupiedError, match="mid"):
            model.germinate_seed("noop", "again", slot="mid")
        transitions += model.step_epoch()["mid"].transitions
        epochs += 1
        assert epochs <= embargo + 2
    assert epochs == 1 + embargo + 1  # CULLED -> EMBARGOED, the cooldown, RESETTING -> DORMANT
    assert transitions == [
        (S.CULLED, S.EMBARGOED),
        (S.EMBARGOED, S.RESETTING),
        (S.RESETTING, S.DORMANT),
    ]
    assert slot.state.seed_id is None and slot.state.blueprint_id is None
    assert slot.state.stage_history == [S.DORMANT]
    model.germinate_seed(DEFAULT_BLUEPRINT[tiny.topology], "again", slot="mid")
    assert slot.stage == S.GERMINATED and slot.state.seed_id == "again"


def test_advance_stage_cannot_skip_the_embargo():
    model = TINY_HOSTS["cnn3"].model(slots=["mid"], embargo_epochs=2)
    slot = drive_to(model, "mid", S.TRAINING)
    slot.advance_stage(S.CULLED)
    assert slot.stage == S.CULLED
    assert slot.advance_stage(S.EMBARGOED).passed
    assert slot.state.embargo_remaining == 2
    result = slot.advance_stage(S.RESETTING)
    assert not result.passed and slot.stage == S.EMBARGOED
    slot.step_epoch()
    assert slot.stage == S.EMBARGOED
    slot.step_epoch()
    assert slot.stage == S.RESETTING


def test_advance_stage_to_dormant_resets_like_step_epoch():
    tiny = TINY_HOSTS["cnn3"]
    by_step, by_advance = (
        tiny.model(slots=["mid"], embargo_epochs=1),
        tiny.model(slots=["mid"], embargo_epochs=1),
    )
    a = drive_to(by_step, "mid", S.RESETTING)
    b = drive_to(by_advance, "mid", S.RESETTING)
    a.step_epoch()
    assert b.advance_stage(S.DORMANT).passed
    assert a.stage == b.stage == S.DORMANT
    assert b.state.to_dict() == a.state.to_dict()
    assert b.state.seed_id is None and b.state.metrics.epochs_total == 0


@pytest.mark.parametrize("name", ["cnn3", "tf1"])
def test_fossilized_seed_cannot_be_culled(name):
    model = TINY_HOSTS[name].model(slots=["mid"])
    slot = drive_to(model, "mid", S.FOSSILIZED)
    before = snapshot(model, "mid")
    with pytest.raises(IllegalTransitionError, match="FOSSILIZED"):
        model.cull_seed(slot="mid")
    with pytest.raises(IllegalTransitionError):
        slot.advance_stage(S.CULLED)
    assert_unchanged(model, "mid", before)


@pytest.mark.parametrize("contribution, culled", [(-1.0, True), (0.0, True), (0.5, False)])
def test_probation_culls_non_positive_contribution(contribution, culled):
    model = TINY_HOSTS["cnn3"].model(slots=["mid"])
    slot = drive_to(model, "mid", S.PROBATIONARY)
    slot.state.metrics.counterfactual_contribution = contribution
    model.step_epoch()
    assert (slot.stage == S.CULLED) == culled


@pytest.mark.parametrize("contribution", [None, 0.5])
def test_probation_times_out(contribution):
    model = TINY_HOSTS["tf1"].model(slots=["mid"], probation_epochs=3)
    slot = drive_to(model, "mid", S.PROBATIONARY)
    slot.state.metrics.counterfactual_contribution = contribution
    for _ in range(2):
        model.step_epoch()
        assert slot.stage == S.PROBATIONARY
    model.step_epoch()
    assert slot.stage == S.CULLED


@pytest.mark.parametrize("stage", [S.TRAINING, S.BLENDING])
def test_non_finite_seed_is_culled_at_epoch_end(stage):
    model = TINY_HOSTS["cnn3"].model(slots=["mid"])
    slot = drive_to(model, "mid", stage)
    with torch.no_grad():
        next(iter(slot.seed.parameters())).fill_(float("nan"))
    model.step_epoch()
    assert slot.stage == S.CULLED
    model.eval()
    x = TINY_HOSTS["cnn3"].inputs()
    assert torch.equal(model(x), host_output(model, x))


# --- illegal transitions -------------------------------------------------------------------------


def test_valid_transition_helpers_agree_with_table():
    for src in SeedStage:
        for dst in SeedStage:
            assert is_valid_transition(src, dst) == (dst in VALID_TRANSITIONS[src])
    assert VALID_TRANSITIONS[S.FOSSILIZED] == ()


@pytest.mark.parametrize("stage", ALL_STAGES)
@pytest.mark.parametrize("name", ["cnn3", "tf1"])
def test_illegal_transitions_raise_and_change_nothing(name, stage):
    model = TINY_HOSTS[name].model(slots=["late"])
    slot = drive_to(model, "late", stage)
    legal = VALID_TRANSITIONS[stage]
    for target in SeedStage:
        if target in legal:
            continue
        before = snapshot(model, "late")
        with pytest.raises(IllegalTransitionError) as err:
            slot.advance_stage(target)
        assert isinstance(err.value, ValueError)
        message = str(err.value)
        assert "'late'" in message and stage.name in message and target.name in message
        if legal:
            assert all(t.name in message for t in legal)
        else:
            assert "none" in message
        assert_unchanged(model, "late", before)
    if S.CULLED not in legal:
        before = snapshot(model, "late")
        with pytest.raises(IllegalTransitionError):
            model.cull_seed(slot="late")
        assert_unchanged(model, "late", before)


def test_fossilize_from_wrong_stage_is_illegal():
    model = TINY_HOSTS["cnn3"].model(slots=["mid"])
    drive_to(model, "mid", S.BLENDING)
    model.seed_slots["mid"].state.metrics.counterfactual_contribution = 5.0
    with pytest.raises(IllegalTransitionError, match="PROBATIONARY"):
        model.fossilize_seed(slot="mid")
    assert model.seed_slots["mid"].stage == S.BLENDING


# --- failed and refused germination ------------------------------------------------------------


class _Widen(nn.Module):
    def forward(self, x):
        return torch.cat([x, x], dim=-1)


class _NaN(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.ones(1))

    def forward(self, x):
        return x * self.w * float("nan")


class _Crash(nn.Module):
    def forward(self, x):
        raise RuntimeError("boom")


class _Shares(nn.Module):
    def __init__(self, tensor: nn.Parameter):
        super().__init__()
        self.stolen = tensor  # a host parameter registered as the seed's own

    def forward(self, x):
        return x + 0.0 * self.stolen.sum()


@pytest.fixture
def temp_blueprints():
    """Register test-only blueprints; remove them from the registry afterwards."""
    added: list[tuple[str, str]] = []

    def register(topology: str, name: str, factory):
        register_blueprint(topology, name, "test only")(factory)
        added.append((topology, name))

    yield register
    for topology, name in added:
        _REGISTRY[topology].pop(name, None)


def _bad_germinations(model, register):
    topo = model.topology
    other = "lora" if topo == "cnn" else "conv_light"
    host_param = next(model.host.parameters())
    register(topo, "test_widen", lambda w: _Widen())
    register(topo, "test_nan", lambda w: _NaN())
    register(topo, "test_crash", lambda w: _Crash())
    register(topo, "test_shares", lambda w: _Shares(host_param))
    good = DEFAULT_BLUEPRINT[topo]
    return [
        (("no_such_blueprint", "s"), {}, "valid:"),
        ((other, "s"), {}, "valid:"),
        (("test_widen", "s"), {}, "G0"),
        (("test_nan", "s"), {}, "G0"),
        (("test_crash", "s"), {}, "G0"),
        (("test_shares", "s"), {}, "shares"),
        ((good, "s"), {"blend_algorithm_id": "cubic"}, "linear"),
        ((good, ""), {}, "seed_id"),
        ((good, None), {}, "seed_id"),
    ]


def test_failed_germination_leaves_slot_exactly_as_it_was(tiny, temp_blueprints):
    model = tiny.model(slots=["mid"])
    slot = model.seed_slots["mid"]
    slot.set_alpha(0.25)  # make the prior state distinguishable from a fresh one
    for args, kwargs, fragment in _bad_germinations(model, temp_blueprints):
        before = snapshot(model, "mid")
        with pytest.raises(ValueError) as err:
            model.germinate_seed(*args, slot="mid", **kwargs)
        assert fragment in str(err.value), (args, str(err.value))
        assert_unchanged(model, "mid", before)
        assert slot.seed is None and slot.stage == S.DORMANT
    # ...and the slot still works.
    model.germinate_seed(DEFAULT_BLUEPRINT[tiny.topology], "ok", slot="mid")
    assert slot.stage == S.GERMINATED


def test_unknown_blueprint_error_lists_valid_ones_for_the_topology(tiny):
    model = tiny.model(slots=["mid"])
    with pytest.raises(ValueError) as err:
        model.germinate_seed("nope", "s", slot="mid")
    message = str(err.value)
    expected = ["conv_light", "depthwise"] if tiny.topology == "cnn" else ["lora", "mlp"]
    assert "'nope'" in message and all(name in message for name in expected)


@pytest.mark.parametrize(
    "stage",
    [S.GERMINATED, S.TRAINING, S.BLENDING, S.PROBATIONARY, S.CULLED, S.EMBARGOED],
)
@pytest.mark.parametrize("name", ["cnn2", "tf2"])
def test_germinate_into_occupied_slot_raises_and_changes_nothing(name, stage):
    model = TINY_HOSTS[name].model(slots=["mid"])
    drive_to(model, "mid", stage)
    before = snapshot(model, "mid")
    with pytest.raises(SlotOccupiedError) as err:
        model.germinate_seed("noop", "intruder", slot="mid")
    assert isinstance(err.value, RuntimeError)
    assert "'mid'" in str(err.value) and stage.name in str(err.value)
    assert_unchanged(model, "mid", before)


# --- fossilization -------------------------------------------------------------------------------


@pytest.mark.parametrize("contribution", [None, -2.0, 0.5, 0.999])
def test_fossilize_refused_below_contribution_threshold(tiny, contribution):
    model = tiny.model(slots=["mid"])
    slot = drive_to(model, "mid", S.PROBATIONARY)
    slot.state.metrics.counterfactual_contribution = contribution
    before = snapshot(model, "mid")
    with pytest.raises(GateFailedError) as err:
        model.fossilize_seed(slot="mid")
    assert isinstance(err.value, RuntimeError)
    result = err.value.result
    assert not result.passed
    assert [c.split(":")[0] for c in result.checks_failed] == ["contribution"]
    assert "contribution" in str(err.value) and "'mid'" in str(err.value)
    assert "seed-mid" in str(err.value)
    assert_unchanged(model, "mid", before)
    slot.state.metrics.counterfactual_contribution = 1.0  # exactly the threshold passes
    assert model.fossilize_seed(slot="mid").passed
    assert slot.stage == S.FOSSILIZED


@pytest.mark.parametrize("gain", [0.0, -0.05, None])
def test_fossilize_refused_when_the_incubation_gain_alone_fails(gain):
    """G5 reads the incubation gain again: a seed whose contribution, accuracy, stage and health
    all pass is still refused when its gain is not above the floor (or was never measured)."""
    model = TINY_HOSTS["cnn3"].model(slots=["mid"])  # default gates: G5's gain floor is 0.0
    slot = drive_to(model, "mid", S.PROBATIONARY)
    metrics = slot.state.metrics
    metrics.counterfactual_contribution = 10.0  # far above the contribution threshold
    metrics.incubation_gain = gain  # frozen since blending began; written here directly
    assert metrics.healthy
    assert metrics.quality_before_blending == metrics.current_quality  # nothing dropped
    # The gate on its own: one failed check, the gain.
    result = slot.gates.check_gate(slot.state, S.FOSSILIZED)
    assert not result.passed
    assert [c.split(":")[0] for c in result.checks_failed] == ["incubation_gain"]
    assert "incubation_gain" not in result.checks_passed
    assert {"contribution", "accuracy_held", "probationary", "healthy"} <= set(
        c.split(":")[0] for c in result.checks_passed
    )
    # Through the model's verb: refused, and nothing changed.
    before = snapshot(model, "mid")
    with pytest.raises(GateFailedError) as err:
        model.fossilize_seed(slot="mid")
    assert [c.split(":")[0] for c in err.value.result.checks_failed] == ["incubation_gain"]
    assert_unchanged(model, "mid", before)
    assert slot.stage == S.PROBATIONARY
    # The same seed with a positive gain fossilizes: the gain was the only thing missing.
    metrics.incubation_gain = 0.01
    assert model.fossilize_seed(slot="mid").passed
    assert slot.stage == S.FOSSILIZED


def test_fossilize_refused_for_unhealthy_seed():
    model = TINY_HOSTS["cnn3"].model(slots=["mid"])
    slot = drive_to(model, "mid", S.PROBATIONARY)
    slot.state.metrics.counterfactual_contribution = 10.0
    slot.state.metrics.healthy = False
    with pytest.raises(GateFailedError, match="healthy"):
        model.fossilize_seed(slot="mid")


def test_fossilized_seed_becomes_host(tiny):
    model = tiny.model(slots=["early", "mid"])
    drive_to(model, "early", S.TRAINING)
    slot = drive_to(model, "mid", S.FOSSILIZED)
    fossil = {id(p) for p in slot.seed.parameters()}
    assert fossil
    host_ids = {id(p) for p in model.host_parameters()}
    seed_ids = {id(p) for p in model.seed_parameters()}
    assert fossil <= host_ids and not fossil & seed_ids
    live = {id(p) for p in model.seed_slots["early"].seed.parameters()}
    assert live <= seed_ids and not live & host_ids
    counts = model.count_parameters()
    assert counts["host"] == sum(p.numel() for p in model.host_parameters())
    assert counts["total"] == sum(p.numel() for p in model.parameters())
    # It trains with the host: the seed's input is not detached any more.
    model.seed_slots["early"].cull()
    x, y = tiny.inputs(), tiny.targets()
    tiny.loss(model(x), y).backward()
    assert all(p.grad is not None for p in slot.seed.parameters())
    first_block = next(model.host.blocks[0].parameters())
    assert first_block.grad is not None and first_block.grad.abs().sum() > 0


# --- direct state edits, alpha, reports ----------------------------------------------------------


@pytest.mark.parametrize("name", ["cnn3", "tf2"])
def test_setting_stage_directly_with_set_alpha_gives_working_forward(name):
    tiny = TINY_HOSTS[name]
    model = tiny.model(slots=["mid"])
    model.germinate_seed(DEFAULT_BLUEPRINT[tiny.topology], "direct", slot="mid")
    slot = model.seed_slots["mid"]
    perturb_seed(slot)
    model.eval()
    x = tiny.inputs()
    host_out = host_output(model, x)

    slot.state.stage = S.TRAINING
    assert torch.equal(model(x), host_out)

    slot.state.stage = S.BLENDING
    slot.set_alpha(0.3)
    with slot_io(slot) as seen:
        out = model(x)
    h = seen["in"]
    assert torch.equal(seen["out"], torch.lerp(h, slot.seed(h), torch.tensor(0.3)))
    assert torch.isfinite(out).all() and not torch.equal(out, host_out)

    slot.state.stage = S.FOSSILIZED
    with slot_io(slot) as seen:
        model(x)
    assert torch.equal(seen["out"], slot.seed(seen["in"]))
    # The history keeps every assigned stage and says which ones were not lifecycle steps.
    assert slot.state.stage_history == [
        S.DORMANT,
        S.GERMINATED,
        S.TRAINING,
        S.BLENDING,
        S.FOSSILIZED,
    ]
    assert slot.state.forced == [2, 3, 4] and slot.state.previous_stage == S.BLENDING


@pytest.mark.parametrize("bad", [-0.01, 1.01, float("nan"), float("inf")])
def test_set_alpha_rejects_out_of_range_and_changes_nothing(bad):
    model = TINY_HOSTS["cnn3"].model(slots=["mid"])
    slot = drive_to(model, "mid", S.BLENDING)
    before = snapshot(model, "mid")
    with pytest.raises(ValueError, match="alpha"):
        slot.set_alpha(bad)
    assert_unchanged(model, "mid", before)


def test_reports_snapshot_the_slot():
    model = TINY_HOSTS["tf2"].model(slots=["early", "mid", "late"])
    drive_to(model, "mid", S.BLENDING, blueprint="lora", blend="gated")
    drive_to(model, "late", S.CULLED)
    reports = {r.slot: r for r in model.slot_reports()}
    assert set(reports) == {"early", "mid", "late"}
    assert reports["early"].stage == S.DORMANT and reports["early"].seed_params == 0
    mid = reports["mid"]
    assert mid.blueprint_id == "lora" and mid.seed_id == "seed-mid"
    assert mid.stage_names == ["DORMANT", "GERMINATED", "TRAINING", "BLENDING"]
    assert mid.seed_params == sum(p.numel() for p in model.seed_parameters("mid"))
    assert mid.alpha == model.seed_slots["mid"].alpha
    assert reports["late"].stage == S.CULLED
    mid.metrics.gradient_ratio = -99.0  # a snapshot: editing it does not touch the slot
    assert model.seed_slots["mid"].state.metrics.gradient_ratio != -99.0
    assert model.active_seed_slots() == ["mid"]


def test_slots_are_independent():
    tiny = TINY_HOSTS["cnn3"]
    model = tiny.model(slots=["early", "mid", "late"])
    drive_to(model, "early", S.BLENDING)
    drive_to(model, "late", S.PROBATIONARY)
    late_before = snapshot(model, "late")["state"]
    model.cull_seed(slot="early")
    assert model.seed_slots["late"].state.to_dict() == late_before
    reports = model.step_epoch()
    assert set(reports) == {"early", "mid", "late"}
    assert reports["early"].transitions == [(S.CULLED, S.EMBARGOED)]
    assert reports["mid"].transitions == []


@pytest.mark.parametrize(
    "kwargs",
    [
        {"topology": "rnn"},
        {"blending_steps": 0},
        {"probation_epochs": 0},
        {"embargo_epochs": 0},
    ],
)
def test_slot_rejects_bad_settings(kwargs):
    args = {"name": "mid", "width": 8, "topology": "cnn", **kwargs}
    with pytest.raises(ValueError, match="cnn, transformer" if "topology" in kwargs else "must be"):
        SeedSlot(**args)


# --- SeedState: keyword-only, validated ----------------------------------------------------------


def test_seed_state_is_keyword_only():
    with pytest.raises(TypeError):
        SeedState("seed-1", "norm", "slot-1")
    state = SeedState(slot="mid", stage=3, previous_stage=S.GERMINATED, stage_history=[1, 2, 3])
    assert state.stage is S.TRAINING and state.stage_history == [
        S.DORMANT,
        S.GERMINATED,
        S.TRAINING,
    ]
    assert all(isinstance(s, SeedStage) for s in state.stage_history)


@pytest.mark.parametrize(
    "kwargs, error, fragment",
    [
        ({"slot": ""}, TypeError, "slot must be a non-empty str"),
        ({"slot": 3}, TypeError, "slot must be a non-empty str"),
        ({"stage": "TRAINING"}, TypeError, "stage must be a SeedStage or its int value"),
        ({"stage": 5}, ValueError, "stage: 5 is not a SeedStage value"),
        ({"stage": True}, TypeError, "stage must be a SeedStage"),
        ({"stage": 3.0}, TypeError, "stage must be a SeedStage"),
        ({"previous_stage": "DORMANT"}, TypeError, "previous_stage must be a SeedStage"),
        ({"stage_history": [1, "GERMINATED"]}, TypeError, "stage_history[1] must be a SeedStage"),
        ({"stage_history": [1, 42]}, ValueError, "stage_history[1]: 42 is not a SeedStage"),
        ({"stage_history": []}, ValueError, "stage_history must not be empty"),
        ({"blend_step": -1}, ValueError, "blend_step must be an int >= 0"),
        ({"blend_step": 1.5}, TypeError, "blend_step must be an int >= 0"),
        ({"embargo_remaining": -2}, ValueError, "embargo_remaining must be an int >= 0"),
        ({"blending_steps": 0}, ValueError, "blending_steps must be an int >= 1"),
        ({"alpha": 1.5}, ValueError, "alpha must be a float in [0, 1]"),
        ({"alpha": float("nan")}, ValueError, "alpha must be a float in [0, 1]"),
        ({"alpha": "0.5"}, TypeError, "alpha must be a float in [0, 1]"),
        ({"metrics": {}}, TypeError, "metrics must be a SeedMetrics"),
        ({"seed_id": 7}, TypeError, "seed_id must be a str or None"),
        ({"shape_probe_passed": 1}, TypeError, "shape_probe_passed must be a bool"),
        ({"forced": [1]}, ValueError, "forced: index 1 does not name a step"),
        ({"forced": [-1]}, ValueError, "forced[0] must be an int >= 0"),
    ],
)
def test_seed_state_rejects_bad_fields_naming_the_field(kwargs, error, fragment):
    with pytest.raises(error) as err:
        SeedState(**{"slot": "mid", **kwargs})
    message = str(err.value)
    assert fragment in message and "\n" not in message
    if "a SeedStage" in fragment:
        assert "TRAINING=3" in message  # what is valid


def test_seed_state_validates_assignment_too():
    state = SeedState(slot="mid", metrics=SeedMetrics())
    with pytest.raises(TypeError, match="SeedState.stage must be"):
        state.stage = "BLENDING"
    with pytest.raises(ValueError, match="alpha"):
        state.alpha = -0.5
    assert state.stage == S.DORMANT and state.alpha == 0.0 and state.stage_history == [S.DORMANT]


@pytest.mark.parametrize(
    "kwargs",
    [{"g2_min_training_epochs": -1}, {"g3_min_alpha": 1.5}, {"max_isolation_violations": -1}],
)
def test_gate_config_rejects_bad_thresholds(kwargs):
    with pytest.raises(ValueError):
        GateConfig(**kwargs)


def test_custom_gate_config_is_used():
    tiny = TINY_HOSTS["cnn3"]
    model = tiny.model(slots=["mid"], gate_config=GateConfig(g5_min_contribution=5.0))
    slot = drive_to(model, "mid", S.PROBATIONARY)
    slot.state.metrics.counterfactual_contribution = 4.0
    with pytest.raises(GateFailedError, match="5.0"):
        model.fossilize_seed(slot="mid")
