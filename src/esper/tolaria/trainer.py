"""The epoch loop: train host and seeds, capture telemetry, validate, measure counterfactuals,
advance the lifecycle, ask the controller (SYSTEM.md §4)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from esper.kasmina import GateFailedError, MorphogeneticModel
from esper.leyline import (
    DEFAULT_GRADIENT_TELEMETRY_STRIDE,
    SeedStage,
    TelemetryEvent,
    TelemetryEventType,
)
from esper.tamiyo import Action, Decision, SignalTracker
from esper.tolaria.data import iterate_batches
from esper.tolaria.governor import Governor
from esper.tolaria.optim import GrowthOptimizers

E = TelemetryEventType


@dataclass
class EpochResult:
    epoch: int
    train_loss: float
    train_accuracy: float
    val_loss: float
    val_accuracy: float
    rolled_back: bool = False
    decision: dict | None = None
    seeds: dict = field(default_factory=dict)


@dataclass
class SeedRecord:
    """The life of one seed, for the run summary."""

    seed_id: str
    slot: str
    blueprint: str
    stages: list[str]
    germinated_epoch: int

    @property
    def final_stage(self) -> str:
        return self.stages[-1]

    def to_dict(self) -> dict:
        return {
            "seed_id": self.seed_id,
            "slot": self.slot,
            "blueprint": self.blueprint,
            "final_stage": self.final_stage,
            "stages": list(self.stages),
            "germinated_epoch": self.germinated_epoch,
        }


def task_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy for classification (B, K) or language modelling (B, T, V)."""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


def _correct(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return (logits.argmax(dim=-1) == targets).sum()


class Trainer:
    """Trains a :class:`MorphogeneticModel` under a controller (None for a static run).

    Args:
        model: the model (its device is used for the data).
        data: a task's tensors (``train_x``, ``train_y``, ``val_x``, ``val_y``).
        optimizer: ``"sgd"`` or ``"adamw"``.
        lr, seed_lr: learning rates for host and seeds.
        batch_size: training batch size.
        controller: decides growth each epoch; ``None`` trains the host alone.
        hub: a telemetry hub (anything with ``emit(event)``), or None.
        seed: RNG seed for batch order.
        gradient_telemetry_stride: capture seed gradient telemetry every this many steps (0: off).
        governor: rollback guard; a default one is made when None.
        total_epochs: when given, learning rates follow a cosine decay over this many epochs
            (to 5% of their base); otherwise they stay constant.
        epoch_samples: training rows per epoch, a fresh random sample each epoch (None: all).
    """

    def __init__(
        self,
        model: MorphogeneticModel,
        data,
        *,
        optimizer: str = "sgd",
        lr: float = 0.05,
        seed_lr: float = 0.05,
        batch_size: int = 64,
        controller=None,
        hub=None,
        seed: int = 0,
        gradient_telemetry_stride: int = DEFAULT_GRADIENT_TELEMETRY_STRIDE,
        governor: Governor | None = None,
        total_epochs: int | None = None,
        epoch_samples: int | None = None,
    ) -> None:
        if gradient_telemetry_stride < 0:
            raise ValueError("gradient_telemetry_stride must be >= 0")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model = model
        self.device = next(model.parameters()).device
        self.data = data
        self.batch_size = batch_size
        self.controller = controller
        self.hub = hub
        self.stride = gradient_telemetry_stride
        self.governor = governor or Governor()
        self.tracker = SignalTracker()
        self.optimizers = GrowthOptimizers(optimizer, model.host_parameters(), lr, seed_lr)
        self.generator = torch.Generator().manual_seed(seed)
        self.total_epochs = total_epochs
        self.epoch_samples = epoch_samples
        self.epoch = 0
        self.global_step = 0
        self.records: dict[str, SeedRecord] = {}
        self._seen: dict[str, int] = {}  # seed_id -> stages already recorded
        self._seed_counter = 0
        self.history: list[EpochResult] = []
        self.last_val_accuracy: float | None = None
        self._to_device()

    def _to_device(self) -> None:
        d = self.data
        self.train_x, self.train_y = d.train_x.to(self.device), d.train_y.to(self.device)
        self.val_x, self.val_y = d.val_x.to(self.device), d.val_y.to(self.device)

    def emit(self, event_type: TelemetryEventType, **kwargs) -> None:
        if self.hub is not None:
            self.hub.emit(TelemetryEvent(event_type, epoch=self.epoch, **kwargs))

    # ------------------------------------------------------------------ one epoch

    def train_epoch(self) -> tuple[float, float]:
        """One pass over the training data. Returns (mean loss, accuracy %).

        Loss and correct counts accumulate on the device; they are read once, at the end.
        """
        model, opt = self.model, self.optimizers
        model.train()
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), dtype=torch.long, device=self.device)
        n_batches, n_targets = 0, 0
        capture = self.stride > 0 and any(s.seed is not None for s in model.seed_slots.values())
        for xb, yb in iterate_batches(
            self.train_x,
            self.train_y,
            self.batch_size,
            self.generator,
            shuffle=True,
            limit=self.epoch_samples,
        ):
            logits = model(xb)
            loss = task_loss(logits, yb)
            opt.zero_grad()
            loss.backward()
            if capture and self.global_step % self.stride == 0:
                model.capture_gradient_telemetry()
            opt.step()
            loss_sum += loss.detach()
            correct += _correct(logits.detach(), yb)
            n_batches += 1
            n_targets += yb.numel()
            self.global_step += 1
        return (loss_sum / max(n_batches, 1)).item(), 100.0 * correct.item() / max(n_targets, 1)

    @torch.no_grad()
    def evaluate(self) -> tuple[float, float]:
        """Validation (mean loss, accuracy %) in eval mode."""
        model = self.model
        was_training = model.training
        model.eval()
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), dtype=torch.long, device=self.device)
        n = 0
        for xb, yb in iterate_batches(self.val_x, self.val_y, 512, None, shuffle=False):
            logits = model(xb)
            loss_sum += task_loss(logits, yb) * yb.numel()
            correct += _correct(logits, yb)
            n += yb.numel()
        model.train(was_training)
        return (loss_sum / max(n, 1)).item(), 100.0 * correct.item() / max(n, 1)

    def counterfactuals(self, val_accuracy: float) -> None:
        """For each seed that affects the output: accuracy with it minus with alpha forced to 0."""
        for name, slot in self.model.seed_slots.items():
            if slot.seed is None or slot.stage not in (SeedStage.BLENDING, SeedStage.PROBATIONARY):
                continue
            with self.model.force_alpha(0.0, slots=[name]):
                _, without = self.evaluate()
            contribution = val_accuracy - without
            slot.state.metrics.counterfactual_contribution = contribution
            self.emit(
                E.COUNTERFACTUAL_EVALUATED,
                slot=name,
                seed_id=slot.state.seed_id,
                data={
                    "contribution": contribution,
                    "accuracy_with": val_accuracy,
                    "accuracy_without": without,
                },
            )

    def run_epoch(self) -> EpochResult:
        self.epoch += 1
        if self.total_epochs:
            progress = min(1.0, (self.epoch - 1) / self.total_epochs)
            self.optimizers.set_lr_factor(0.05 + 0.95 * 0.5 * (1.0 + math.cos(math.pi * progress)))
        violations_before = self._violations()
        train_loss, train_acc = self.train_epoch()
        reason = self.governor.check(train_loss)
        if reason is not None:
            self._rollback(reason, train_loss)
        val_loss, val_acc = self.evaluate()
        if not math.isfinite(val_loss) and reason is None:
            reason = f"non-finite validation loss {val_loss}"
            self._rollback(reason, val_loss)
            val_loss, val_acc = self.evaluate()
        self._report_violations(violations_before)
        self.last_val_accuracy = val_acc
        self.counterfactuals(val_acc)
        for slot in self.model.seed_slots.values():
            if slot.seed is not None:
                slot.state.metrics.record_accuracy(val_acc)
        cull_reasons = {}
        for name, report in self.model.step_epoch().items():
            if report.cull_reason:
                cull_reasons[name] = report.cull_reason
            for gate in report.gate_results:
                self.emit(
                    E.GATE_EVALUATED,
                    slot=name,
                    seed_id=report.seed_id,
                    data={
                        "gate": gate.gate.name,
                        "passed": gate.passed,
                        "checks_failed": list(gate.checks_failed),
                    },
                )
        self._sync_records(reasons=cull_reasons)

        decision = None
        if self.controller is not None:
            signals = self.tracker.update(
                epoch=self.epoch,
                train_loss=train_loss,
                val_loss=val_loss,
                val_accuracy=val_acc,
                topology=self.model.topology,
                slots=tuple(self.model.slot_reports()),
                blueprints=getattr(self.controller, "blueprints", ()),
            )
            decision = self.controller.decide(signals)
            self._apply(decision)
        if reason is None:
            self.governor.take_snapshot(self.model)
        result = EpochResult(
            epoch=self.epoch,
            train_loss=train_loss,
            train_accuracy=train_acc,
            val_loss=val_loss,
            val_accuracy=val_acc,
            rolled_back=reason is not None,
            decision=decision.to_dict() if decision is not None else None,
            seeds=self._seed_view(),
        )
        self.history.append(result)
        counts = self.model.count_parameters()
        self.emit(
            E.EPOCH_COMPLETED,
            data={
                "train_loss": train_loss,
                "train_accuracy": train_acc,
                "val_loss": val_loss,
                "val_accuracy": val_acc,
                "host_params": counts["host"],
                "total_params": counts["total"],
                "seeds": result.seeds,
                "rolled_back": result.rolled_back,
            },
        )
        return result

    # ------------------------------------------------------------------ growth

    def _apply(self, decision: Decision) -> None:
        if decision.action == Action.WAIT:
            return
        self.emit(E.CONTROLLER_DECISION, slot=decision.slot, data=decision.to_dict())
        ok = True
        if decision.action == Action.GERMINATE:
            self.germinate(
                decision.blueprint, decision.slot, blend=decision.blend_algorithm or "linear"
            )
            self.tracker.reset_plateau()
        elif decision.action == Action.FOSSILIZE:
            ok = self.fossilize(decision.slot)
        elif decision.action == Action.CULL:
            self.cull(decision.slot, reason=decision.reason)
        if hasattr(self.controller, "on_outcome"):
            self.controller.on_outcome(decision, ok)

    def germinate(self, blueprint: str, slot: str, *, blend: str = "linear") -> str:
        self._seed_counter += 1
        seed_id = f"seed-{self._seed_counter}-{slot}-{blueprint}"
        self.model.germinate_seed(blueprint, seed_id, slot=slot, blend_algorithm_id=blend)
        self.optimizers.add_seed(slot, self.model.seed_parameters(slot))
        self.records[seed_id] = SeedRecord(seed_id, slot, blueprint, ["GERMINATED"], self.epoch)
        self._seen[seed_id] = len(self.model.seed_slots[slot].state.stage_history)
        self.emit(
            E.SEED_GERMINATED,
            slot=slot,
            seed_id=seed_id,
            data={"blueprint": blueprint, "blend": blend},
        )
        self.emit(
            E.SEED_STAGE_CHANGED,
            slot=slot,
            seed_id=seed_id,
            data={"from": "DORMANT", "to": "GERMINATED"},
        )
        if self.last_val_accuracy is not None:
            # G2's "improvement since TRAINING began" is measured from the accuracy at germination.
            self.model.seed_slots[slot].state.metrics.record_accuracy(self.last_val_accuracy)
        # GERMINATED -> TRAINING happens at once (G1), so the seed starts learning this epoch.
        self.model.advance_stage(SeedStage.TRAINING, slot=slot)
        self._sync_records()
        return seed_id

    def fossilize(self, slot: str) -> bool:
        s = self.model.seed_slots[slot]
        try:
            self.model.fossilize_seed(slot=slot)
        except GateFailedError as err:
            self.emit(
                E.GATE_EVALUATED,
                slot=slot,
                seed_id=s.state.seed_id,
                data={
                    "gate": "G5",
                    "passed": False,
                    "checks_failed": list(err.result.checks_failed),
                },
            )
            return False
        self.optimizers.fossilize_seed(slot, s.seed.parameters())
        self._sync_records()
        return True

    def cull(self, slot: str, *, reason: str) -> None:
        self.model.cull_seed(slot=slot)
        self._sync_records(reason=reason)

    def _sync_records(self, reason: str = "lifecycle", reasons: dict | None = None) -> None:
        """Turn new entries of every slot's stage history into events and seed records; keep the
        optimizers in step with seeds the lifecycle culled on its own."""
        for name, slot in self.model.seed_slots.items():
            state = slot.state
            record = self.records.get(state.seed_id or "")
            if record is None:
                continue
            seen = self._seen[state.seed_id]
            for prev, new in zip(
                state.stage_history[seen - 1 :], state.stage_history[seen:], strict=False
            ):
                record.stages.append(new.name)
                self.emit(
                    E.SEED_STAGE_CHANGED,
                    slot=name,
                    seed_id=record.seed_id,
                    data={"from": prev.name, "to": new.name},
                )
                if new == SeedStage.CULLED:
                    self.optimizers.drop_seed(name)
                    if hasattr(self.controller, "on_cull"):
                        self.controller.on_cull(record.blueprint)
                    self.emit(
                        E.SEED_CULLED,
                        slot=name,
                        seed_id=record.seed_id,
                        data={"reason": (reasons or {}).get(name, reason)},
                    )
                elif new == SeedStage.FOSSILIZED:
                    self.emit(
                        E.SEED_FOSSILIZED,
                        slot=name,
                        seed_id=record.seed_id,
                        data={"contribution": state.metrics.counterfactual_contribution},
                    )
            self._seen[state.seed_id] = len(state.stage_history)

    def _rollback(self, reason: str, loss: float) -> None:
        culled = self.governor.rollback(self.model)
        self.optimizers.reset_host_state()
        self._sync_records(reason=f"governor rollback: {reason}")  # drops their optimizers
        self.emit(
            E.GOVERNOR_ROLLBACK,
            data={
                "reason": reason,
                "loss": loss if math.isfinite(loss) else str(loss),
                "culled": culled,
            },
        )

    def _violations(self) -> dict[str, int]:
        return {n: s.state.metrics.isolation_violations for n, s in self.model.seed_slots.items()}

    def _report_violations(self, before: dict[str, int]) -> None:
        for name, slot in self.model.seed_slots.items():
            now = slot.state.metrics.isolation_violations
            if now > before.get(name, 0):
                self.emit(
                    E.ISOLATION_VIOLATION,
                    slot=name,
                    seed_id=slot.state.seed_id,
                    data={"violations": now, "new": now - before.get(name, 0)},
                )

    def _seed_view(self) -> dict:
        view = {}
        for name, slot in self.model.seed_slots.items():
            if slot.seed is not None:
                view[name] = {
                    "seed_id": slot.state.seed_id,
                    "blueprint": slot.state.blueprint_id,
                    "stage": slot.stage.name,
                    "alpha": slot.state.metrics.current_alpha
                    if slot.stage in (SeedStage.BLENDING, SeedStage.PROBATIONARY)
                    else (1.0 if slot.stage == SeedStage.FOSSILIZED else 0.0),
                }
        return view
