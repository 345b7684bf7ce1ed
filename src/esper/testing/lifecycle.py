"""Driving seeds through their lifecycle without a training run.

Tests and benchmarks need slots in a given stage; a real run would take many epochs to earn each
gate. :func:`drive_to` goes through the public lifecycle verbs only (germinate, advance_stage,
step_epoch, cull, fossilize) and earns each gate by recording what a run would have measured
(``record_validation``, ``record_counterfactual``). Only :func:`pass_g2_metrics` still writes
``SeedState`` directly: epochs in stage and the gradient ratio come from training itself, which
no verb fakes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace

import torch
from torch import nn

from esper.kasmina import GateConfig, MorphogeneticModel, SeedSlot
from esper.leyline import SeedStage, is_failure_stage

#: The blueprint :func:`drive_to` grows when none is named, per topology.
DEFAULT_BLUEPRINT = {"cnn": "conv_light", "transformer": "mlp", "mlp": "mlp"}

_OPEN_GATES = GateConfig(
    g2_min_incubation_gain=-math.inf,
    g2_min_training_epochs=0,
    g2_min_gradient_ratio=0.0,
    max_isolation_violations=1_000_000,
    g3_min_blending_epochs=0,
    g3_min_alpha=0.0,
    g3_require_ramp_complete=False,
    g5_min_contribution=-math.inf,
    g5_min_incubation_gain=-math.inf,
    g5_max_accuracy_drop=math.inf,
)


def permissive_gates(*, full_alpha_ramp: bool = False) -> GateConfig:
    """Gates that pass as soon as the lifecycle's mechanics allow.

    G2 asks for no incubation gain, epochs or gradient and tolerates leaks; G3 asks for no blending
    epochs, alpha or finished ramp; G5 accepts any contribution, but only a *measured* one: a
    seed whose ``counterfactual_contribution`` is still None fails G5 (see
    :func:`set_contribution`).

    Args:
        full_alpha_ramp: keep G3 at its defaults, so BLENDING lasts until the alpha ramp has
            run its course (``blending_steps - 1`` calls of ``step_epoch`` after entering it,
            for the linear schedule) instead of ending at the first call.

    Returns:
        A ``GateConfig`` for ``MorphogeneticModel(gate_config=...)``.
    """
    if not full_alpha_ramp:
        return _OPEN_GATES
    defaults = GateConfig()
    return replace(
        _OPEN_GATES,
        g3_min_blending_epochs=defaults.g3_min_blending_epochs,
        g3_min_alpha=defaults.g3_min_alpha,
        g3_require_ramp_complete=defaults.g3_require_ramp_complete,
    )


# --- the direct SeedState writes (stand-ins for slot verbs kasmina does not have yet) ----------


def set_contribution(slot: SeedSlot, contribution: float) -> None:
    """Record a counterfactual contribution as if the training loop had measured it (G5 needs
    one), through the slot's own verb.

    Args:
        slot: the slot whose seed was "measured".
        contribution: accuracy with the seed minus accuracy with alpha forced to 0 (points).
    """
    slot.record_counterfactual(contribution)


def pass_g2_metrics(slot: SeedSlot) -> None:
    """Write the metrics that make the default G2 pass: enough epochs in TRAINING, a positive
    incubation gain (0.1, as if measured by the shadow pass), a learning seed and no leaks.

    Args:
        slot: a slot in TRAINING.
    """
    m = slot.state.metrics
    slot.record_validation(50.0)
    slot.record_incubation_gain(0.1)
    # No verb writes these: they are what epochs of training and telemetry would have produced,
    # forged here so a test can reach BLENDING without training.
    m.epochs_in_current_stage = max(m.epochs_in_current_stage, 3)
    m.gradient_ratio = 1.0
    m.isolation_violations = 0


# --- seeds that are not the identity ------------------------------------------------------------


def perturb_seed(
    slot: SeedSlot, scale: float = 0.5, seed: int = 123, *, fan_in_scaled: bool = False
) -> None:
    """Give every seed (and blend-gate) parameter random values, so the seed is no longer the
    identity map its zero-initialized last layer makes it.

    Args:
        slot: a slot holding a seed.
        scale: standard deviation of the new values.
        seed: generator seed; the same call always gives the same values, on any device.
        fan_in_scaled: divide a weight's standard deviation by sqrt(fan-in), and use
            ``scale / 10`` for vectors (biases, norm affines): a wide seed's output then stays
            about as large as its input instead of growing with the width.
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in slot.seed_parameters():
            std = scale
            if fan_in_scaled:
                std = scale / math.sqrt(p[0].numel()) if p.dim() > 1 else scale / 10
            p.copy_(torch.randn(p.shape, generator=gen) * std)


# --- the driver ----------------------------------------------------------------------------------


def _advance(slot: SeedSlot, target: SeedStage) -> None:
    result = slot.advance_stage(target)
    if not result.passed:
        raise RuntimeError(
            f"drive_to: slot {slot.name!r} could not enter {target.name}: "
            + "; ".join(result.checks_failed)
        )


def _expect(slot: SeedSlot, target: SeedStage) -> None:
    if slot.stage != target:
        raise RuntimeError(
            f"drive_to: slot {slot.name!r} ended in {slot.stage.name}, wanted {target.name}"
        )


def _default_seed_id(slot: SeedSlot) -> str:
    # The slot's n-th seed, counting its fossils and a FOSSILIZED seed about to be stacked on.
    n = len(slot.fossil_seeds) + (2 if slot.stage == SeedStage.FOSSILIZED else 1)
    return f"seed-{slot.name}" if n == 1 else f"seed-{slot.name}-{n}"


def drive_to(
    model: MorphogeneticModel,
    slot: str,
    target: SeedStage | int,
    *,
    blueprint: str | None = None,
    blend: str = "linear",
    seed_id: str | None = None,
    perturb: bool = True,
) -> SeedSlot:
    """Take ``slot`` from DORMANT to ``target`` through the public lifecycle API. From a
    FOSSILIZED slot, a new seed is germinated stacked after the fossilized one.

    The path is the one a run takes: germinate, G1, G2 (earned by :func:`pass_g2_metrics`), the
    alpha ramp through ``step_epoch`` until G3 passes, then G5 (earned by
    :func:`set_contribution`). CULLED, EMBARGOED and RESETTING are reached by culling the freshly
    germinated seed and stepping epochs. Works with the default gates and with
    :func:`permissive_gates`.

    Args:
        model: the model owning the slot.
        slot: the slot's name; it must be DORMANT.
        target: the stage to reach (any stage but UNKNOWN).
        blueprint: the seed's blueprint; ``DEFAULT_BLUEPRINT[model.topology]`` when None.
        blend: the blend algorithm.
        seed_id: the seed's id; ``"seed-<slot>"`` when None (``"seed-<slot>-<n>"`` for the
            slot's n-th seed when seeds are stacked).
        perturb: on entering BLENDING, give the seed random weights (:func:`perturb_seed`) so
            that it changes the output; False leaves its weights as they are.

    Returns:
        The slot, now in ``target``.

    Raises:
        ValueError: the slot is neither DORMANT nor FOSSILIZED, or ``target`` is UNKNOWN.
        RuntimeError: a gate refused, or the slot ended in another stage; the message says which.
    """
    s = model.seed_slots[slot]
    target = SeedStage(target)
    _check_start(s, slot, target)
    if target == s.stage and s.stage == SeedStage.DORMANT:
        return s
    model.germinate_seed(
        blueprint or DEFAULT_BLUEPRINT[model.topology],
        seed_id or _default_seed_id(s),
        slot=slot,
        blend_algorithm_id=blend,
    )
    if target == SeedStage.GERMINATED:
        return s
    if is_failure_stage(target):
        _cull_to(model, s, slot, target)
    else:
        _earn_gates_to(model, s, slot, target, perturb)
    return s


def _check_start(s: SeedSlot, slot: str, target: SeedStage) -> None:
    """Refuse a slot :func:`drive_to` cannot start from, or an UNKNOWN target."""
    if s.stage not in (SeedStage.DORMANT, SeedStage.FOSSILIZED):
        raise ValueError(
            f"drive_to starts from DORMANT (or FOSSILIZED, to stack a new seed); slot {slot!r} "
            f"is {s.stage.name}"
        )
    if target == SeedStage.UNKNOWN:
        raise ValueError("drive_to: UNKNOWN is not a stage a slot can be driven to")


def _cull_to(model: MorphogeneticModel, s: SeedSlot, slot: str, target: SeedStage) -> None:
    """From GERMINATED to a failure stage: cull, then step epochs through the embargo."""
    model.cull_seed(slot=slot)
    if target != SeedStage.CULLED:
        s.step_epoch()  # CULLED -> EMBARGOED
    while target == SeedStage.RESETTING and s.stage == SeedStage.EMBARGOED:
        s.step_epoch()  # the embargo counts down one epoch at a time
    _expect(s, target)


def _earn_gates_to(
    model: MorphogeneticModel, s: SeedSlot, slot: str, target: SeedStage, perturb: bool
) -> None:
    """From GERMINATED along the path a run takes, earning each gate, until ``target``."""
    _advance(s, SeedStage.TRAINING)
    if target == SeedStage.TRAINING:
        return
    pass_g2_metrics(s)
    _advance(s, SeedStage.BLENDING)
    if perturb:
        perturb_seed(s)
    if target == SeedStage.BLENDING:
        return
    for _ in range(s.blending_steps + 3):  # the ramp, plus slack for G3's epoch minimum
        s.step_epoch()
        if s.stage != SeedStage.BLENDING:
            break
    _expect(s, SeedStage.PROBATIONARY)
    if target == SeedStage.PROBATIONARY:
        return
    set_contribution(s, 2.0)
    model.fossilize_seed(slot=slot)
    _expect(s, target)


def model_at_stage(
    host: nn.Module,
    stage: SeedStage | int,
    *,
    slots: Sequence[str],
    blueprint: str | None = None,
    blend: str = "linear",
    device: str | torch.device = "cpu",
    gate_config: GateConfig | None = None,
    seed: int = 0,
) -> MorphogeneticModel:
    """A model around ``host`` with a seed in every slot, each driven to ``stage``.

    Every seed then gets random weights (:func:`perturb_seed`, fan-in scaled, generator
    ``seed + i`` for the i-th slot) whatever its stage, so that no seed is the identity map and
    a seed wrongly used (or wrongly ignored) shows in the output.

    Args:
        host: the host module (owned by the model from now on).
        stage: the stage every slot is driven to.
        slots: the injection points that get a slot and a seed.
        blueprint: the seeds' blueprint; ``DEFAULT_BLUEPRINT`` for the host's topology when None.
        blend: the blend algorithm.
        device: where the model lives.
        gate_config: the gates; :func:`permissive_gates` when None.
        seed: first generator seed for the seeds' weights.

    Returns:
        The model, every slot in ``stage``.

    Raises:
        ValueError, RuntimeError: as :func:`drive_to`.
    """
    model = MorphogeneticModel(
        host, device=device, slots=slots, gate_config=gate_config or permissive_gates()
    )
    for i, name in enumerate(slots):
        slot = drive_to(model, name, stage, blueprint=blueprint, blend=blend, perturb=False)
        perturb_seed(slot, seed=seed + i, fan_in_scaled=True)
    return model
