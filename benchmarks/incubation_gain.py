"""A seed's first epoch of incubation, batch by batch: is its incubation gain held down by its own
steps or by the host training beside it?

    OMP_NUM_THREADS=1 python benchmarks/incubation_gain.py --task fashion --slot early
    python benchmarks/incubation_gain.py --task fashion --freeze-host
    python benchmarks/incubation_gain.py --task fashion --seed-lr-scale 0.1 --json

Trains the task's static host for ``--pre-epochs`` epochs (``esper train``'s own run, seed
``--seed``), germinates one seed at ``--slot`` and puts it in TRAINING, then takes one epoch of
training steps as the trainer does (the host's loss plus the seed's shadow loss, one backward,
both optimizers), holding the epoch's last ``--held-out`` batches back. It prints, per eighth of
the epoch:

* the incubation gain ``loss(host) - loss(shadow)`` of each batch before its update (what G2
  averages);
* the gain on the same batch right after its update;
* the gain on the held-out batches.

``--freeze-host`` sets the host's learning rate to 0 (the seed alone learns);
``--seed-lr-scale`` multiplies the seed's rate; ``--seed-init computed`` starts the seed computed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys

import torch

from esper.leyline import SEED_INITS, SeedStage
from esper.runs import RunSpec, build_run
from esper.tolaria.tasks import list_tasks

PARTS = 8


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="fashion", help=f"one of: {', '.join(list_tasks())}")
    parser.add_argument("--slot", default="early")
    parser.add_argument("--blueprint", default="conv_light")
    parser.add_argument("--pre-epochs", type=int, default=6, help="host training first")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--held-out", type=int, default=4, help="batches held out of the epoch")
    parser.add_argument("--freeze-host", action="store_true", help="the host's rate set to 0")
    parser.add_argument("--seed-lr-scale", type=float, default=1.0)
    parser.add_argument("--seed-init", default="zero", choices=SEED_INITS)
    parser.add_argument("--json", action="store_true", help="last line: the numbers as JSON")
    args = parser.parse_args(argv)
    if args.task not in list_tasks():
        parser.error(f"unknown task {args.task!r}; valid: {', '.join(list_tasks())}")
    if args.pre_epochs < 1 or args.held_out < 1 or not args.seed_lr_scale > 0:
        parser.error("--pre-epochs and --held-out must be >= 1, --seed-lr-scale > 0")
    return args


def _gain(model, loss_fn, slot: str, x, y) -> float:
    out, shadows = model.forward_with_shadows(x)
    return float((loss_fn(out, y) - loss_fn(shadows[slot], y)).detach())


def measure(args: argparse.Namespace) -> dict[str, list[float]]:
    """Per eighth of the epoch: the mean gain before the update, and at its first batch the gain
    after the update and on the held-out batches."""
    spec = RunSpec("static", task=args.task, seed=args.seed, seed_init=args.seed_init)
    built = build_run(spec)
    trainer, model = built.trainer, built.model
    try:
        if args.slot not in model.seed_slots:
            raise SystemExit(f"unknown slot {args.slot!r}; valid: {', '.join(model.seed_slots)}")
        for _ in range(args.pre_epochs):
            trainer.train_epoch()
        model.germinate_seed(args.blueprint, "probe", slot=args.slot)
        if not model.seed_slots[args.slot].advance_stage(SeedStage.TRAINING).passed:
            raise SystemExit("the seed did not reach TRAINING")
        optimizers, loss_fn = trainer.optimizers, trainer.loss_fn
        if args.freeze_host:
            for group in optimizers.host.param_groups:
                group["lr"] = 0.0
        for opt in optimizers.seeds.values():
            for group in opt.param_groups:
                group["lr"] *= args.seed_lr_scale
        batches = list(trainer._batches("train"))
        held, steps = batches[-args.held_out :], batches[: -args.held_out]
        size = max(1, len(steps) // PARTS)
        before, after, held_out = [], [], []
        for i, (x, y) in enumerate(steps):
            optimizers.zero_grad()
            out, shadows = model.forward_with_shadows(x)
            loss, shadow = loss_fn(out, y), loss_fn(shadows[args.slot], y)
            before.append(float((loss - shadow).detach()))
            (loss + shadow).backward()
            optimizers.step()
            if i % size == 0:
                after.append(_gain(model, loss_fn, args.slot, x, y))
                held_out.append(
                    statistics.fmean(_gain(model, loss_fn, args.slot, hx, hy) for hx, hy in held)
                )
        return {
            "before_update": [
                statistics.fmean(before[k : k + size]) for k in range(0, len(before), size)
            ],
            "after_update": after,
            "held_out": held_out,
        }
    finally:
        trainer.close()


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    with torch.random.fork_rng():
        result = measure(args)
    setting = (
        f"host {'frozen' if args.freeze_host else 'training'}, seed rate x{args.seed_lr_scale:g}, "
        f"{args.seed_init} start"
    )
    print(
        f"# {args.task}: {args.blueprint} at {args.slot} after {args.pre_epochs} epochs; {setting}"
    )
    for key, values in result.items():
        print(f"{key:>13}: " + " ".join(f"{v:+.4f}" for v in values))
    if args.json:
        print(json.dumps({"task": args.task, "setting": setting, **result}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
