"""What a seed does to the loss the moment it starts: zero-initialised against computed.

    OMP_NUM_THREADS=1 python benchmarks/seed_init.py --task fashion --epochs 3
    python benchmarks/seed_init.py --task pystd --epochs 3 --scales 0.01 0.05 --json

Trains the task's static host for ``--epochs`` epochs (``esper train``'s own run, seed
``--seed``) while its slots keep features for a computed initialisation. Then, for every slot
and every blueprint with an output layer, germinates a seed into a copy of the model and
measures the training loss with the seed blended in at alpha 1 (the shadow output, as its first
blended step would see it), minus the host's loss, on ``--batches`` training batches the fit
never saw. A zero-initialised seed changes nothing (the ``zero`` column is there to show it);
a computed one should lower the loss. ``--memory-batches`` and ``--memory-rows`` set what the
slots keep (``esper.kasmina.computed_init.InitMemory``), ``--scales`` the starting size.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys

import torch

from esper.kasmina.blueprints import get_blueprint, list_blueprints
from esper.kasmina.computed_init import InitMemory, output_layer
from esper.leyline import (
    DEFAULT_INIT_MEMORY_BATCHES,
    DEFAULT_INIT_MEMORY_EVERY,
    DEFAULT_INIT_MEMORY_ROWS,
    DEFAULT_INIT_SCALE,
    SeedStage,
)
from esper.runs import RunSpec, build_run
from esper.tolaria.tasks import list_tasks


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="fashion", help=f"one of: {', '.join(list_tasks())}")
    parser.add_argument("--epochs", type=int, default=3, help="host training before the seeds")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batches", type=int, default=8, help="fresh batches the loss is read on")
    parser.add_argument("--scales", type=float, nargs="+", default=[DEFAULT_INIT_SCALE])
    parser.add_argument("--memory-batches", type=int, default=DEFAULT_INIT_MEMORY_BATCHES)
    parser.add_argument("--memory-rows", type=int, default=DEFAULT_INIT_MEMORY_ROWS)
    parser.add_argument("--json", action="store_true", help="last line: the numbers as JSON")
    args = parser.parse_args(argv)
    if args.task not in list_tasks():
        parser.error(f"unknown task {args.task!r}; valid: {', '.join(list_tasks())}")
    for name in ("epochs", "batches", "memory_batches", "memory_rows"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if not all(s > 0 for s in args.scales):
        parser.error(f"--scales must be > 0, got {args.scales}")
    return args


def _mean_loss(trainer, forward, batches) -> float:
    losses = [trainer.loss_fn(forward(x), y).detach() for x, y in batches]
    return float(torch.stack(losses).mean())


def measure(args: argparse.Namespace) -> dict:
    """``{"host_loss": ..., "rows": [{slot, blueprint, init, scale, change}, ...]}``."""
    built = build_run(RunSpec("static", task=args.task, seed=args.seed, epochs=args.epochs))
    trainer, model = built.trainer, built.model
    try:
        model.set_seed_init("computed")
        for slot in model.seed_slots.values():
            slot.init_memory = InitMemory(
                args.memory_batches, args.memory_rows, DEFAULT_INIT_MEMORY_EVERY
            )
        for _ in range(args.epochs):
            trainer.train_epoch()
        batches = []
        for batch in trainer._batches("train"):  # the next epoch's first batches: unseen
            batches.append(batch)
            if len(batches) == args.batches:
                break
        with torch.no_grad():
            host_loss = _mean_loss(trainer, model, batches)
        rows = []
        blueprints = [
            b
            for b in list_blueprints(model.topology)
            if output_layer(get_blueprint(model.topology, b).build(8)) is not None
        ]
        settings = [("zero", None)] + [("computed", s) for s in args.scales]
        for name in model.seed_slots:
            for blueprint in blueprints:
                for init, scale in settings:
                    trial = copy.deepcopy(model)
                    slot = trial.seed_slots[name]
                    if init == "zero":
                        slot.set_seed_init("zero")
                    else:
                        slot.init_scale = scale  # the memory was copied with the model
                    trial.germinate_seed(blueprint, "probe", slot=name)
                    if not slot.advance_stage(SeedStage.TRAINING).passed:
                        continue
                    shadow = _mean_loss(
                        trainer, lambda x, t=trial, n=name: t.forward_with_shadows(x)[1][n], batches
                    )
                    rows.append(
                        {
                            "slot": name,
                            "blueprint": blueprint,
                            "init": init,
                            "scale": scale,
                            "change": shadow - host_loss,
                        }
                    )
        return {"host_loss": host_loss, "rows": rows}
    finally:
        trainer.close()


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    result = measure(args)
    print(
        f"# {args.task}, static host after {args.epochs} epochs (seed {args.seed}), loss "
        f"{result['host_loss']:.4f} on {args.batches} fresh batches; memory "
        f"{args.memory_batches} batches x {args.memory_rows} rows"
    )
    print("| slot | blueprint | init | scale | loss change at the seed's start |")
    print("| --- | --- | --- | --- | --- |")
    for r in result["rows"]:
        scale = "—" if r["scale"] is None else f"{r['scale']:g}"
        print(f"| {r['slot']} | {r['blueprint']} | {r['init']} | {scale} | {r['change']:+.5f} |")
    summary = {}
    for init, scale in [("zero", None)] + [("computed", s) for s in args.scales]:
        changes = [r["change"] for r in result["rows"] if (r["init"], r["scale"]) == (init, scale)]
        if changes:
            lower = sum(c < 0 for c in changes)
            key = init if scale is None else f"{init} {scale:g}"
            summary[key] = {
                "lower": lower,
                "seeds": len(changes),
                "mean": statistics.fmean(changes),
            }
            print(
                f"{key}: lower for {lower} of {len(changes)} seeds, mean change "
                f"{statistics.fmean(changes):+.5f}"
            )
    if args.json:
        print(json.dumps({"task": args.task, "epochs": args.epochs, **result, "summary": summary}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
