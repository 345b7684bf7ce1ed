"""The epoch loop as steps (docs/design.md, "The epoch loop").

One epoch is::

    signals = trainer.observe()          # train, validate, counterfactuals, lifecycle step
    decision = controller.decide(signals)
    outcome = trainer.apply(decision)    # applied, or refused with a reason (never raises)
    result = trainer.end_epoch(decision, outcome)

``run_epoch()`` does all four with the trainer's own controller. A learned controller can drive
the steps itself. The trainer is a PyTorch Stateful: ``state_dict()`` holds everything a killed
run needs to continue bit for bit on the CPU.
"""

from __future__ import annotations

import contextlib
import functools
import math
import random
import time
from dataclasses import asdict, dataclass, field, replace

import torch
import torch.nn.functional as F

from esper.kasmina import MorphogeneticModel, list_blueprints
from esper.kasmina.blending import BLEND_ALGORITHMS
from esper.leyline import (
    DEFAULT_BLEND_ALGORITHM,
    Action,
    Decision,
    Outcome,
    SeedStage,
    TelemetryEvent,
    TelemetryEventType,
    TrainingSignals,
    as_controller,
    as_sink,
    controller_state,
    is_valid_transition,
)
from esper.tolaria import distributed as ranks
from esper.tolaria.config import TrainerConfig
from esper.tolaria.data import LoaderData, iterate_batches
from esper.tolaria.flops import FlopMeter, model_structure
from esper.tolaria.governor import Governor
from esper.tolaria.optim import GrowthOptimizers
from esper.tolaria.records import LifecycleRecorder, SeedRecord
from esper.tolaria.signals import SignalTracker

E = TelemetryEventType
#: 2 in 0.4.0, the first release; the development versions wrote 1.
STATE_FORMAT = 2
#: Dynamo's recompile limit while a trainer compiles: a lifecycle visits up to 8 stages per slot
#: and each can add a graph per grad mode (dynamo's default of 8 would fall back to eager).
COMPILE_RECOMPILE_LIMIT = 64


@dataclass
class EpochResult:
    epoch: int
    train_loss: float
    train_accuracy: float
    val_loss: float
    val_accuracy: float
    rolled_back: bool = False
    decision: dict | None = None
    outcome: dict | None = None
    seeds: dict = field(default_factory=dict)
    #: FLOPs of this epoch's forward and backward passes on training batches (seeds included).
    train_flops: float = 0.0
    #: FLOPs of this epoch's validation and counterfactual passes.
    eval_flops: float = 0.0
    #: Parameters (host and seeds) trained during this epoch.
    params: int = 0
    #: The counterfactual passes' share of ``eval_flops``, and their wall time.
    counterfactual_flops: float = 0.0
    counterfactual_seconds: float = 0.0


def task_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy for classification (B, K) or language modelling (B, T, V)."""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


def _correct(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return (logits.argmax(dim=-1) == targets).sum()


def _on(device: torch.device, batch) -> tuple[torch.Tensor, torch.Tensor]:
    """``(inputs, targets)`` of a loader's batch, on ``device``."""
    if not isinstance(batch, (tuple, list)) or len(batch) < 2:
        raise ValueError(
            f"a training batch must be an (inputs, targets) pair, got {type(batch).__name__}"
        )
    return batch[0].to(device), batch[1].to(device)


def quality_unit(model) -> str:
    """The unit the model's gates measure quality in (``GateConfig.unit``): ``"points"`` of
    validation accuracy, or ``"loss"`` for a task without an accuracy."""
    return next(iter(model.seed_slots.values())).gates.config.unit


@dataclass
class _EpochState:
    """What ``observe`` measured, held until ``end_epoch`` closes the epoch."""

    train_loss: float
    train_accuracy: float
    val_loss: float
    val_accuracy: float
    rollback_reason: str | None
    train_flops: float
    eval_flops: float
    params: int
    counterfactual_flops: float
    counterfactual_seconds: float


class Trainer:
    """Trains a morphogenetic model under a controller (None for a static run).

    Args:
        model: a :class:`MorphogeneticModel` or any model given slots by ``inject_slots`` (its
            device is used for the data).
        data: a task's tensors (:class:`~esper.tolaria.data.TaskData`), or the user's own
            batches (:class:`~esper.tolaria.data.LoaderData`: ``DataLoader``s or any
            re-iterable of ``(inputs, targets)`` pairs).
        config: how to train (learning rates, schedule, batch sizes, governor thresholds...).
        controller: decides growth each epoch (a :class:`~esper.leyline.Controller`; any other
            object with ``decide`` is wrapped once by :func:`~esper.leyline.as_controller`);
            ``None`` trains the host alone.
        hub: a telemetry hub (a :class:`~esper.leyline.TelemetrySink`; any other object with
            ``emit(event)`` is wrapped once by :func:`~esper.leyline.as_sink`), or None.
        tracker: builds the controller's signals; a fresh :class:`SignalTracker` when None.
        loss_fn: ``loss_fn(output, targets)`` -> a scalar mean loss; cross-entropy over the last
            dimension when None.

    Under torch.distributed (a process group of several ranks, e.g. from ``torchrun``) the
    trainer trains one model on all of them: see :mod:`esper.tolaria.distributed` for what is
    shared and when. Every rank builds the same trainer and calls the same methods.

    The model's gates say what quality is (``GateConfig.unit``): validation accuracy in points,
    or, with ``GateConfig.for_loss()``, the validation loss (for a regression or any task
    without an accuracy; the accuracy is then not computed and reads NaN). Counterfactual
    contributions, G5 and the controller's signals are in that unit; in loss units a quality is
    the negative loss, so a positive contribution still helps.
    """

    def __init__(
        self,
        model: MorphogeneticModel,
        data,
        config: TrainerConfig | None = None,
        *,
        controller=None,
        hub=None,
        tracker: SignalTracker | None = None,
        loss_fn=None,
    ) -> None:
        self.config = config = config or TrainerConfig()
        self.loss_fn = loss_fn or task_loss
        self.unit = quality_unit(model)
        self.dist = ranks.DistContext.current()
        if self.dist is not None and config.batch_size % self.dist.world_size:
            raise ValueError(
                f"batch_size {config.batch_size} does not split over {self.dist.world_size} "
                "ranks; use a multiple of the world size (each rank takes an equal share)"
            )
        self._ddp = None
        self._ddp_key: tuple | None = None
        self._compiled_forwards: dict = {}
        if config.compile is not None and self.dist is not None:
            raise ValueError("compile under torch.distributed is not supported yet; drop one")
        self.model = model
        self.device = next(model.parameters()).device
        self.controller = as_controller(controller)
        self.hub = None if hub is None else as_sink(hub)
        self.governor = Governor(
            history=config.governor_history,
            sensitivity=config.governor_sensitivity,
            min_spike_factor=config.governor_min_spike_factor,
            min_history=config.governor_min_history,
        )
        self.tracker = tracker or SignalTracker()
        self.optimizers = GrowthOptimizers(
            config.optimizer,
            model.host_parameters(),
            config.lr,
            config.seed_lr,
            weight_decay=config.weight_decay,
            momentum=config.momentum,
        )
        self.generator = torch.Generator().manual_seed(config.seed)
        self.epoch = 0
        self.global_step = 0
        self.seed_counter = 0
        self.history: list[EpochResult] = []
        #: The last epoch's validation quality (:meth:`quality`); None before the first epoch.
        self.last_val_quality: float | None = None
        self.train_flops = FlopMeter()
        self.eval_flops = FlopMeter()
        self._pending: _EpochState | None = None
        self.recorder = LifecycleRecorder(
            model,
            self.optimizers,
            self.emit,
            epoch=lambda: self.epoch,
            on_cull=None if self.controller is None else self.controller.on_cull,
        )
        model.subscribe(self.recorder)
        model.subscribe(self.tracker.on_lifecycle)
        # The test split is for reports only: nothing in the loop, gates or controller reads it.
        self.loaders = data if isinstance(data, LoaderData) else None
        self.train_x = self.train_y = self.val_x = self.val_y = self.test_x = self.test_y = None
        if self.loaders is None:
            self.train_x, self.train_y = data.train_x.to(self.device), data.train_y.to(self.device)
            self.val_x, self.val_y = data.val_x.to(self.device), data.val_y.to(self.device)
            if data.test_x is not None:
                self.test_x = data.test_x.to(self.device)
                self.test_y = data.test_y.to(self.device)

    @property
    def records(self) -> dict[str, SeedRecord]:
        """Every seed this run germinated, by id."""
        return self.recorder.records

    def close(self) -> None:
        """Stop listening to the model (a trainer that is done leaves no subscriber behind) and
        let go of the DDP wrapper and compiled passes, so they are gone before the process
        group is (a DDP reducer outliving its gloo group aborted the process at exit)."""
        self.model.unsubscribe(self.recorder)
        self.model.unsubscribe(self.tracker.on_lifecycle)
        self._ddp = self._ddp_key = None
        self._compiled_forwards.clear()

    def emit(self, event_type: TelemetryEventType, **kwargs) -> None:
        if self.hub is not None:
            self.hub.emit(TelemetryEvent(event_type, epoch=self.epoch, **kwargs))

    # ------------------------------------------------------------------ measuring

    def train_epoch(self) -> tuple[float, float]:
        """One pass over the training data. Returns (mean loss, accuracy %).

        Loss and correct counts accumulate on the device; they are read once, at the end.
        """
        model, opt, stride = self.model, self.optimizers, self.config.telemetry_stride
        model.train()
        # A computed seed is solved from this epoch's batches alone: what a run resumed here
        # would have too.
        model.reset_init_memory()
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), dtype=torch.long, device=self.device)
        n_batches, n_targets = 0, 0
        capture = stride > 0 and any(s.seed is not None for s in model.seed_slots.values())
        every = self.config.shadow_every
        sparse = every > 1 and any(s.incubating for s in model.seed_slots.values())
        passes = {True: self._train_pass(shadows=True)}
        structures = {True: model_structure(model, training=True)}
        if sparse:
            passes[False] = self._train_pass(shadows=False)
            structures[False] = model_structure(model, training=True, shadows=False)
        loss_fn, accuracy = self.loss_fn, self.unit == "points"
        flops_before = self.train_flops.total
        for xb, yb in self._batches("train"):
            opt.zero_grad()
            step = self.global_step
            capture_now = capture and step % stride == 0
            shadow_now = not sparse or capture_now or step % every == 0
            structure, (eager, forward) = structures[shadow_now], passes[shadow_now]
            # A structure's first pass is counted under FlopCounterMode, which sees the ops of
            # an eager pass only: compiled passes start from the second.
            fresh = not self.train_flops.knows(structure)
            with self.train_flops.count(structure, xb.shape[0]), self._compile_scope():
                logits, shadows = (eager if fresh else forward)(xb)
                loss = loss_fn(logits, yb)
                if shadows:
                    incubation = model.incubation_loss(
                        lambda out, yb=yb: loss_fn(out, yb), logits, shadows, baseline=loss
                    )
                    (loss + incubation).backward()
                else:
                    loss.backward()
            if capture_now:
                # Folded by the next capture or at the end of the epoch, before anything reads
                # it: the step does not wait for its own backward.
                model.capture_gradient_telemetry(wait=False)
            opt.step()
            loss_sum += loss.detach()
            if accuracy:
                correct += _correct(logits.detach(), yb)
            n_batches += 1
            n_targets += yb.numel()
            self.global_step += 1
        model.flush_telemetry()
        if self.dist is not None:
            # Each rank normalised its own batches; the model must stay one model.
            ranks.average_norm_statistics(model)
        return self._means(self.train_flops, flops_before, loss_sum, n_batches, correct, n_targets)

    def _means(
        self,
        meter: FlopMeter,
        flops_before: float,
        loss_sum: torch.Tensor,
        n_loss: int,
        correct: torch.Tensor,
        n_targets: int,
    ) -> tuple[float, float]:
        """``(loss_sum / n_loss, accuracy %)`` of a pass. Under torch.distributed the sums,
        counts and the FLOPs ``meter`` counted since ``flops_before`` are added over the ranks
        first (in one collective), so every rank gets the run's numbers."""
        if self.dist is None:
            return (loss_sum / max(n_loss, 1)).item(), self._accuracy(correct.item(), n_targets)
        flops = meter.total - flops_before
        loss_total, correct_total, n_loss, n_targets, flops = ranks.sums(
            [loss_sum.item(), correct.item(), n_loss, n_targets, flops], self.device
        )
        meter.total = flops_before + flops
        return loss_total / max(n_loss, 1), self._accuracy(correct_total, int(n_targets))

    def _train_pass(self, *, shadows: bool):
        """``(eager, forward)``: a training step's pass, ``x -> (output, shadows)``, with the
        incubating seeds' shadow passes or without them (``shadows`` is then empty), as it runs
        the first time a structure is met (eagerly, for the FLOP count) and after."""
        if self.dist is not None:
            # Under torch.distributed every pass goes through DDP (a pass outside it would leave
            # that step's gradients unreduced and the ranks apart for good).
            ddp = self._ddp_forward()
            forward = ddp if shadows else functools.partial(ddp, with_shadows=False)
            return forward, forward
        if shadows:
            return self.model.forward_with_shadows, self._compiled("train")
        plain = self._compiled("plain")
        return (lambda x: (self.model(x), {})), (lambda x: (plain(x), {}))

    def _compiled(self, kind: str):
        """``kind`` ``"train"``: the training pass (``forward_with_shadows``); ``"plain"``: the
        model's forward (evaluation, and a training step without shadow passes: one compiled
        wrapper for both, dynamo keeps a graph per grad mode). Compiled with ``config.compile``
        (built once per kind; dynamo recompiles it per lifecycle change), or the eager one."""
        eager = self.model.forward_with_shadows if kind == "train" else self.model
        if self.config.compile is None:
            return eager
        if kind not in self._compiled_forwards:
            # The shadow pass's functional_call breaks the graph, so no fullgraph here.
            self._compiled_forwards[kind] = torch.compile(eager, backend=self.config.compile)
        return self._compiled_forwards[kind]

    def _compile_scope(self):
        """Under ``config.compile``, dynamo's recompile limit raised to what a lifecycle needs
        (one graph per stage of every slot, per grad mode), for these passes only."""
        if self.config.compile is None:
            return contextlib.nullcontext()
        import torch._dynamo  # loaded by torch.compile anyway; named here for the config

        return torch._dynamo.config.patch(recompile_limit=COMPILE_RECOMPILE_LIMIT)

    def _ddp_forward(self):
        """The DDP wrapper's forward, rebuilt when the parameter set (or which parameters a step
        may leave unused) has changed since the last epoch. Building it broadcasts rank 0's
        parameters: a new seed starts alike everywhere."""
        sparse = self.config.shadow_every > 1
        key = ranks.parameter_key(self.model, sparse_shadows=sparse)
        if self._ddp is None or key != self._ddp_key:
            self._ddp = ranks.wrap(self.model, self.device, sparse_shadows=sparse)
            self._ddp_key = key
        return self._ddp

    def _accuracy(self, correct: float, n: int) -> float:
        return 100.0 * correct / max(n, 1) if self.unit == "points" else math.nan

    def _batches(self, split: str):
        """``(inputs, targets)`` on the device: the training split shuffled by the run's
        generator (or in the loader's own order), evaluation splits in order."""
        if self.loaders is not None:
            loader = getattr(self.loaders, split)
            sampler = getattr(loader, "sampler", None)
            if split == "train" and callable(getattr(sampler, "set_epoch", None)):
                # A DistributedSampler (or any sampler keyed by epoch) reshuffles per epoch,
                # and a resumed run gets the order the uninterrupted one had.
                sampler.set_epoch(self.epoch)
            return (_on(self.device, batch) for batch in loader)
        shard = None if self.dist is None else (self.dist.rank, self.dist.world_size)
        if split == "train":
            world = 1 if self.dist is None else self.dist.world_size
            return iterate_batches(
                self.train_x,
                self.train_y,
                self.config.batch_size // world,
                self.generator,
                shuffle=True,
                limit=self.config.epoch_samples,
                shard=shard,
            )
        x, y = (self.val_x, self.val_y) if split == "val" else (self.test_x, self.test_y)
        return iterate_batches(x, y, self.config.eval_batch_size, None, shuffle=False, shard=shard)

    def quality(self, loss: float, accuracy: float) -> float:
        """What gates and controllers compare, in :attr:`unit`: accuracy in points, or the
        negative loss (so that higher is better in both)."""
        return accuracy if self.unit == "points" else -loss

    @torch.no_grad()
    def evaluate(self, split: str = "val") -> tuple[float, float]:
        """Mean loss and accuracy (%) on ``split`` (``"val"`` or ``"test"``), in eval mode.

        Raises:
            ValueError: an unknown split, or ``"test"`` for a task without a test split.
        """
        if split not in ("val", "test"):
            raise ValueError(f"unknown split {split!r}; valid: val, test")
        missing = self.loaders.test is None if self.loaders is not None else self.test_x is None
        if split == "test" and missing:
            raise ValueError("this task has no test split")
        model = self.model
        was_training = model.training
        model.eval()
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), dtype=torch.long, device=self.device)
        n = 0
        structure = model_structure(model, training=False)
        loss_fn, accuracy = self.loss_fn, self.unit == "points"
        flops_before = self.eval_flops.total
        forward = self._compiled("plain")
        for xb, yb in self._batches(split):
            fresh = not self.eval_flops.knows(structure)
            with self.eval_flops.count(structure, xb.shape[0]), self._compile_scope():
                logits = (model if fresh else forward)(xb)
            loss_sum += loss_fn(logits, yb) * yb.numel()
            if accuracy:
                correct += _correct(logits, yb)
            n += yb.numel()
        model.train(was_training)
        return self._means(self.eval_flops, flops_before, loss_sum, n, correct, n)

    def counterfactuals(self, val_quality: float) -> int:
        """For each seed that affects the output: quality (:meth:`quality`) with it minus
        quality with its own alpha forced to 0 (every other seed as it is). Returns how many
        were measured.

        Under a controller whose ``reads_blending_counterfactuals`` is False (the heuristic),
        a seed in BLENDING is measured only in the epoch it may leave BLENDING: nothing reads
        the others, and each costs a validation pass."""
        measured = 0
        name_of = "accuracy" if self.unit == "points" else "loss"
        sign = 1.0 if self.unit == "points" else -1.0  # the event reports the loss itself
        every_epoch = self.controller is None or self.controller.reads_blending_counterfactuals
        for name, slot in self.model.seed_slots.items():
            if slot.seed is None or slot.stage not in (SeedStage.BLENDING, SeedStage.PROBATIONARY):
                continue
            if (
                slot.stage == SeedStage.BLENDING
                and not every_epoch
                and not slot.may_leave_blending_this_epoch()
            ):
                continue
            with self.model.force_alpha(0.0, slots=[name]):
                without = self.quality(*self.evaluate())
            measured += 1
            contribution = val_quality - without
            self.model.record_counterfactual(name, contribution)
            data = {
                "contribution": contribution,
                f"{name_of}_with": sign * val_quality,
                f"{name_of}_without": sign * without,
            }
            if self.unit != "points":
                data["unit"] = self.unit
            self.emit(E.COUNTERFACTUAL_EVALUATED, slot=name, seed_id=slot.state.seed_id, data=data)
        return measured

    # ------------------------------------------------------------------ the steps

    def observe(self) -> TrainingSignals:
        """Train one epoch, validate, measure counterfactuals, advance the mechanical lifecycle,
        and return the controller's signals for this epoch."""
        if self._pending is not None:
            raise RuntimeError("observe() called twice; call end_epoch() to close the epoch")
        self.epoch += 1
        self.optimizers.set_lr_factor(self.config.lr_factor(self.epoch))
        params = self.model.count_parameters()["total"]
        train_before, eval_before = self.train_flops.total, self.eval_flops.total
        train_loss, train_acc = self.train_epoch()
        reason = self.governor.check(train_loss)
        if reason is not None:
            self._rollback(reason, train_loss)
        val_loss, val_acc = self.evaluate()
        if not math.isfinite(val_loss) and reason is None:
            reason = f"non-finite validation loss {val_loss}"
            self._rollback(reason, val_loss)
            val_loss, val_acc = self.evaluate()
        quality = self.quality(val_loss, val_acc)
        self.last_val_quality = quality
        started, eval_flops_before = time.perf_counter(), self.eval_flops.total
        measured = self.counterfactuals(quality)
        counterfactual_seconds = time.perf_counter() - started if measured else 0.0
        counterfactual_flops = self.eval_flops.total - eval_flops_before
        self.model.record_validation(quality)
        self.model.step_epoch()
        self._pending = _EpochState(
            train_loss,
            train_acc,
            val_loss,
            val_acc,
            reason,
            train_flops=self.train_flops.total - train_before,
            eval_flops=self.eval_flops.total - eval_before,
            params=params,
            counterfactual_flops=counterfactual_flops,
            counterfactual_seconds=counterfactual_seconds,
        )
        signals = self.tracker.update(
            epoch=self.epoch,
            train_loss=train_loss,
            val_loss=val_loss,
            val_quality=quality,
            topology=self.model.topology,
            slots=tuple(self.model.slot_reports()),
            blueprints=tuple(list_blueprints(self.model.topology)),
            blend_algorithms=BLEND_ALGORITHMS,
            params=self.model.count_parameters(),
        )
        limit = self.config.max_seeds
        return replace(
            signals,
            total_epochs=self.config.total_epochs,
            seeds_left=None if limit is None else max(0, limit - self.seed_counter),
        )

    def apply(self, decision: Decision | None) -> Outcome:
        """Carry out ``decision``. A decision that cannot be carried out (illegal transition,
        unknown blueprint or slot, occupied slot, gate not passed) is refused: an event says
        why, the model and optimizers stay exactly as they were, and the run goes on."""
        if decision is None or decision.action == Action.WAIT:
            return Outcome(applied=True)
        self.emit(E.CONTROLLER_DECISION, slot=decision.slot, data=decision.to_dict())
        refusal = self._refusal(decision)
        if refusal is None:
            outcome = self._carry_out(decision)
        else:
            outcome = Outcome(applied=False, reason=refusal)
        if not outcome.applied:
            self.emit(
                E.DECISION_REFUSED,
                slot=decision.slot,
                data={**decision.to_dict(), "refused": outcome.reason},
            )
        if self.controller is not None:
            self.controller.on_outcome(decision, outcome)
        return outcome

    def _refusal(self, decision: Decision) -> str | None:
        """Why ``decision`` cannot be carried out, checked before anything changes; or None."""
        slots = self.model.seed_slots
        if decision.slot not in slots:
            return f"unknown slot {decision.slot!r}; this model's slots: {', '.join(slots)}"
        stage = slots[decision.slot].stage
        action = decision.action
        if action == Action.GERMINATE:
            if stage not in (SeedStage.DORMANT, SeedStage.FOSSILIZED):
                return (
                    f"slot {decision.slot!r} is occupied ({stage.name}), not DORMANT or FOSSILIZED"
                )
            limit = self.config.max_seeds
            if limit is not None and self.seed_counter >= limit:
                return f"this run may germinate at most {limit} seed(s) (max_seeds)"
            valid = list_blueprints(self.model.topology)
            if decision.blueprint not in valid:
                return (
                    f"unknown blueprint {decision.blueprint!r} for {self.model.topology}; "
                    f"valid: {', '.join(valid)}"
                )
            blend = decision.blend_algorithm or DEFAULT_BLEND_ALGORITHM
            if blend not in BLEND_ALGORITHMS:
                return f"unknown blend {blend!r}; valid: {', '.join(BLEND_ALGORITHMS)}"
            return None
        target = {Action.FOSSILIZE: SeedStage.FOSSILIZED, Action.CULL: SeedStage.CULLED}.get(action)
        if target is None:
            return f"unknown action {action!r}; valid: {', '.join(a.value for a in Action)}"
        if not is_valid_transition(stage, target):
            return f"slot {decision.slot!r} is {stage.name}: cannot {Action(action).value}"
        return None

    def _carry_out(self, decision: Decision) -> Outcome:
        slot = decision.slot
        if decision.action == Action.GERMINATE:
            seed_id = f"seed-{self.seed_counter + 1}-{slot}-{decision.blueprint}"
            try:
                self.model.germinate_seed(
                    decision.blueprint,
                    seed_id,
                    slot=slot,
                    blend_algorithm_id=decision.blend_algorithm or DEFAULT_BLEND_ALGORITHM,
                )
            except ValueError as err:  # G0 refused the seed; the slot is unchanged
                return Outcome(applied=False, reason=str(err))
            self.seed_counter += 1
            if self.last_val_quality is not None:
                # G2's "improvement since TRAINING began" is measured from the quality at
                # germination.
                self.model.seed_slots[slot].record_validation(self.last_val_quality)
            # GERMINATED -> TRAINING happens at once (G1), so the seed starts learning now.
            self.model.advance_stage(SeedStage.TRAINING, slot=slot)
            return Outcome(applied=True, seed_id=seed_id)
        if decision.action == Action.FOSSILIZE:
            result = self.model.advance_stage(SeedStage.FOSSILIZED, slot=slot)
            if not result.passed:
                return Outcome(applied=False, reason=result.message)
            return Outcome(applied=True)
        self.model.cull_seed(slot=slot, reason=decision.reason or "controller decision")
        return Outcome(applied=True)

    def end_epoch(
        self, decision: Decision | None = None, outcome: Outcome | None = None
    ) -> EpochResult:
        """Close the epoch: snapshot a healthy state for the governor, record, emit."""
        if self._pending is None:
            raise RuntimeError("end_epoch() without observe()")
        p, self._pending = self._pending, None
        if p.rollback_reason is None:
            self.governor.take_snapshot(self.model)
        result = EpochResult(
            epoch=self.epoch,
            train_loss=p.train_loss,
            train_accuracy=p.train_accuracy,
            val_loss=p.val_loss,
            val_accuracy=p.val_accuracy,
            rolled_back=p.rollback_reason is not None,
            decision=decision.to_dict() if decision is not None else None,
            outcome=outcome.to_dict() if outcome is not None else None,
            seeds=self._seed_view(),
            train_flops=p.train_flops,
            eval_flops=p.eval_flops,
            params=p.params,
            counterfactual_flops=p.counterfactual_flops,
            counterfactual_seconds=p.counterfactual_seconds,
        )
        self.history.append(result)
        counts = self.model.count_parameters()
        self.emit(
            E.EPOCH_COMPLETED,
            data={
                "train_loss": p.train_loss,
                "train_accuracy": p.train_accuracy,
                "val_loss": p.val_loss,
                "val_accuracy": p.val_accuracy,
                "host_params": counts["host"],
                "total_params": counts["total"],
                "seeds": result.seeds,
                "rolled_back": result.rolled_back,
                "train_flops": p.train_flops,
                "eval_flops": p.eval_flops,
                "total_train_flops": self.train_flops.total,
                "total_eval_flops": self.eval_flops.total,
            },
        )
        return result

    def run_epoch(self) -> EpochResult:
        """One whole epoch with the trainer's controller (none: the host trains alone)."""
        signals = self.observe()
        decision = outcome = None
        if self.controller is not None:
            decision = self.controller.decide(signals)
            if self.dist is not None:
                decision = ranks.broadcast_object(decision)  # rank 0 decides for every rank
            outcome = self.apply(decision)
        return self.end_epoch(decision, outcome)

    # ------------------------------------------------------------------ helpers

    def _rollback(self, reason: str, loss: float) -> None:
        culled = self.governor.rollback(self.model, reason)
        self.optimizers.reset_host_state()
        self.emit(
            E.GOVERNOR_ROLLBACK,
            data={
                "reason": reason,
                "loss": loss if math.isfinite(loss) else str(loss),
                "culled": culled,
            },
        )

    def _seed_view(self) -> dict:
        view = {}
        for name, slot in self.model.seed_slots.items():
            if slot.seed is not None:
                view[name] = {
                    "seed_id": slot.state.seed_id,
                    "blueprint": slot.state.blueprint_id,
                    "stage": slot.stage.name,
                    "params": sum(p.numel() for p in slot.seed_parameters()),
                    # What G2 and G5 read: the seed's gain before the host could adapt to it.
                    "incubation_gain": slot.state.metrics.incubation_gain,
                    "alpha": slot.state.metrics.current_alpha
                    if slot.stage in (SeedStage.BLENDING, SeedStage.PROBATIONARY)
                    else (1.0 if slot.stage == SeedStage.FOSSILIZED else 0.0),
                }
        return view

    # ------------------------------------------------------------------ Stateful

    @staticmethod
    def saved_telemetry(state: dict) -> dict:
        """What :meth:`state_dict` saved of the hub (its ``state_dict()``); read without
        building a trainer."""
        return state["telemetry"]

    def state_dict(self) -> dict:
        """Everything a killed run needs to continue exactly: the model with its seeds, every
        optimizer (parameters by name), counters, every RNG the run draws from, governor,
        tracker, controller, seed records, history and the telemetry sinks' positions.
        Loadable with ``torch.load(weights_only=True)``. Call between epochs."""
        if self._pending is not None:
            raise RuntimeError("state_dict() mid-epoch; call it after end_epoch()")
        return {
            "format": STATE_FORMAT,
            "model": self.model.state_dict(),
            "optimizers": self.optimizers.state_dict(self.model),
            "epoch": self.epoch,
            "global_step": self.global_step,
            "seed_counter": self.seed_counter,
            "last_val_quality": self.last_val_quality,
            "rng": {
                "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else [],
                "python": random.getstate(),
                "batches": self.generator.get_state(),
            },
            "flops": {"train": self.train_flops.state_dict(), "eval": self.eval_flops.state_dict()},
            "governor": self.governor.state_dict(),
            "tracker": self.tracker.state_dict(),
            "controller": controller_state(self.controller),
            "recorder": self.recorder.state_dict(),
            "history": [asdict(h) for h in self.history],
            "telemetry": {} if self.hub is None else self.hub.state_dict(),
            # Under torch.distributed, every rank's own generators, by rank (a collective:
            # every rank calls state_dict; one of them writes it).
            "rank_rng": [] if self.dist is None else ranks.gather_objects(self._rank_rng()),
        }

    def _rank_rng(self) -> dict:
        return {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else [],
        }

    def load_state_dict(self, state: dict, *, telemetry: bool = True) -> None:
        """Restore :meth:`state_dict` output into this trainer (built over a model of the same
        architecture). With ``telemetry=False`` the sinks' positions are not restored (under
        torchrun they are rank 0's: the other ranks have no event log).

        Raises:
            ValueError: a state of another format, or one that does not fit the model.
        """
        if state.get("format") != STATE_FORMAT:
            raise ValueError(
                f"trainer state format {state.get('format')!r} is not {STATE_FORMAT}; "
                "it was written by another version of esper"
            )
        self.model.load_state_dict(state["model"])
        self.optimizers.load_state_dict(state["optimizers"], self.model)
        self.epoch = int(state["epoch"])
        self.global_step = int(state["global_step"])
        self.seed_counter = int(state["seed_counter"])
        self.last_val_quality = state["last_val_quality"]
        self.train_flops.load_state_dict(state["flops"]["train"])
        self.eval_flops.load_state_dict(state["flops"]["eval"])
        self.governor.load_state_dict(state["governor"])
        self.tracker.load_state_dict(state["tracker"])
        if state["controller"]:
            if self.controller is None:
                raise ValueError(
                    "the state holds a controller's state, but this trainer has no controller"
                )
            self.controller.load_state_dict(state["controller"])
        self.recorder.load_state_dict(state["recorder"])
        self.history = [EpochResult(**h) for h in state["history"]]
        if self.hub is not None and telemetry:
            self.hub.load_state_dict(state["telemetry"])
        rng = state["rng"]
        per_rank = state.get("rank_rng") or []
        world = 1 if self.dist is None else self.dist.world_size
        if len(per_rank) not in (0, world) or (world > 1 and not per_rank):
            raise ValueError(
                f"the state was written by {max(len(per_rank), 1)} rank(s); resume it with the "
                f"same world size (this run has {world})"
            )
        if per_rank:
            rng = {**rng, **per_rank[self.dist.rank]}
        torch.set_rng_state(rng["torch"])
        if rng["cuda"]:
            torch.cuda.set_rng_state_all(rng["cuda"])
        random.setstate(rng["python"])
        self.generator.set_state(rng["batches"])
