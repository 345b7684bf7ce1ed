"""``esper simic train`` (learn a growth policy with PPO) and ``esper simic policies`` (the
policies shipped with the package)."""

from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path

from rich.console import Console
from rich.table import Table

from esper.leyline import DEFAULT_GROWTH_PATIENCE, DEFAULT_PARAMETER_RENT, DEFAULT_TRAIN_SEEDS
from esper.runs import UsageError
from esper.runs.console import count_progress
from esper.runs.errors import print_error
from esper.tolaria.data import DataNotFoundError
from esper.tolaria.tasks import list_tasks

# esper.simic (gymnasium, the environment) is imported only by the commands that use it, so
# every other `esper` command starts without it.


def add_simic_arguments(parser: argparse.ArgumentParser, sub_class) -> None:
    sub = parser.add_subparsers(dest="simic_command", required=True, parser_class=sub_class)
    train = sub.add_parser("train", help="train a growth policy with PPO on a task")
    train.add_argument("--task", default="digits", help=f"one of: {', '.join(list_tasks())}")
    train.add_argument("--episodes", type=int, required=True, help="training runs to learn from")
    train.add_argument("--workers", type=int, default=1, help="rollout processes (1 thread each)")
    train.add_argument("--out", required=True, metavar="POLICY", help="the policy file to write")
    train.add_argument("--resume", action="store_true", help="continue the policy at --out")
    train.add_argument("--seed", type=int, default=0, help="seeds the agent and training seeds")
    train.add_argument("--episodes-per-update", type=int, default=16)
    train.add_argument("--epochs", type=int, default=None, help="each run's epochs")
    train.add_argument("--width-multiplier", type=float, default=1.0, help="each run's host width")
    train.add_argument("--max-seeds", type=int, default=None, help="each run's seed budget")
    train.add_argument("--data-dir", default=None, help="local data for tasks that need it")
    train.add_argument(
        "--rent",
        type=float,
        default=DEFAULT_PARAMETER_RENT,
        help=f"reward charged per added parameter (default {DEFAULT_PARAMETER_RENT:g})",
    )
    train.add_argument(
        "--bc-episodes",
        type=int,
        default=0,
        help="clone the heuristic on this many runs before PPO starts (default 0)",
    )
    train.add_argument(
        "--shadow-every",
        type=int,
        default=None,
        metavar="N",
        help="each run's shadow pass every N training steps (default: the task's; the shipped "
        "policies were trained with 1)",
    )
    train.add_argument(
        "--growth-patience",
        type=int,
        default=None,
        metavar="N",
        help="growth patience of the heuristic cloned by --bc-episodes and compared with "
        f"(default {DEFAULT_GROWTH_PATIENCE}; 0: the heuristic before patience, which the "
        "shipped policies were trained beside)",
    )
    train.add_argument(
        "--train-seeds",
        type=int,
        default=DEFAULT_TRAIN_SEEDS,
        help=f"training runs use seeds 0..N-1 (default {DEFAULT_TRAIN_SEEDS})",
    )
    learner = train.add_argument_group("PPO (defaults: esper.simic.training.GROWTH_PPO)")
    learner.add_argument("--lr", type=float, default=None, help="Adam's learning rate")
    learner.add_argument("--entropy-coef", type=float, default=None, help="entropy bonus weight")
    learner.add_argument("--gae-lambda", type=float, default=None, help="GAE's lambda (1: MC)")
    learner.add_argument("--update-epochs", type=int, default=None, help="passes per update")
    learner.add_argument("--minibatch-size", type=int, default=None, help="steps per minibatch")
    learner.add_argument("--target-kl", type=float, default=None, help="KL early stop")
    sub.add_parser("policies", help="list the policies shipped with the package")


def simic_main(args: argparse.Namespace, console: Console | None = None) -> int:
    from esper.simic.policy import PolicyError

    console = console or Console()
    try:
        if args.simic_command == "policies":
            return _list_policies(console)
        return _train(args, console)
    except (UsageError, PolicyError, DataNotFoundError) as exc:
        print_error(exc)
        return 2


def config_from_args(args: argparse.Namespace):
    """The training configuration the flags describe.

    Raises:
        UsageError: an unknown task or an out-of-range number.
    """
    if args.task not in list_tasks():
        raise UsageError(f"unknown task {args.task!r}; valid: {', '.join(list_tasks())}")
    from esper.simic.env import EpisodeConfig
    from esper.simic.training import GROWTH_PPO, SimicConfig, check_limits

    try:
        check_limits(vars(args), name=lambda key: "--" + key.replace("_", "-"))
    except ValueError as exc:
        raise UsageError(str(exc)) from None

    episode = EpisodeConfig(
        task=args.task,
        epochs=args.epochs,
        width_multiplier=args.width_multiplier,
        max_seeds=args.max_seeds,
        data_dir=args.data_dir,
        shadow_every=args.shadow_every,
        growth_patience=args.growth_patience,
    )
    episode.run_spec(0)  # the run's own checks (epochs, width, seed budget), as UsageError
    learner = ("lr", "entropy_coef", "gae_lambda", "update_epochs", "minibatch_size", "target_kl")
    changes = {name: getattr(args, name) for name in learner if getattr(args, name) is not None}
    try:
        ppo = replace(GROWTH_PPO, **changes)
    except ValueError as exc:  # PPOConfig names the bad value and its valid range
        raise UsageError(f"PPO setting: {exc}") from None
    return SimicConfig(
        episode,
        episodes=args.episodes,
        episodes_per_update=args.episodes_per_update,
        workers=args.workers,
        seed=args.seed,
        train_seeds=args.train_seeds,
        rent=args.rent,
        bc_episodes=args.bc_episodes,
        ppo=ppo,
    )


def _train(args: argparse.Namespace, console: Console) -> int:
    from esper.simic.training import check_output, train_policy

    config = config_from_args(args)
    out = Path(args.out)
    check_output(out, args.resume)  # before anything is printed
    console.print(
        f"simic: {config.episodes} episodes of {config.episode.task} in updates of "
        f"{config.episodes_per_update}, {config.workers} worker(s) -> {out}",
        highlight=False,
    )
    console.print(
        f"{'update':>6} {'episodes':>8} {'return':>8} {'gain':>7} {'params+':>8} "
        f"{'entropy':>7} {'expl.var':>8} {'kl':>7} {'clip':>5} {'germ':>5} {'foss':>5} "
        f"{'time':>6}",
        highlight=False,
        soft_wrap=True,  # one line per update, whatever the terminal width
    )
    started = time.perf_counter()
    progress = count_progress("[bold]simic[/] updates", console)
    with progress:
        bar = progress.add_task("updates", total=config.updates)

        def show(row: dict) -> None:
            if "bc" in row:
                bc = row["bc"]
                console.print(
                    f"cloned the heuristic: {bc['steps']} decisions, the greedy policy takes "
                    f"{bc['accuracy']:.1%} of them",
                    highlight=False,
                    soft_wrap=True,
                )
                return
            console.print(
                f"{row['update']:>6} {_episodes_so_far(row, config):>8} "
                f"{row['return_mean']:>+8.3f} {row['quality_gain_mean']:>+7.2f} "
                f"{row['added_params_mean']:>8.0f} {row['entropy']:>7.3f} "
                f"{row['explained_variance']:>8.3f} {row['approx_kl']:>7.4f} "
                f"{row['clip_fraction']:>5.2f} {row['germinated_mean']:>5.1f} "
                f"{row['fossilized_mean']:>5.2f} {row['seconds']:>5.1f}s",
                highlight=False,
                soft_wrap=True,
            )
            progress.update(bar, completed=row["update"])

        policy = train_policy(config, out, resume=args.resume, on_update=show)
    from esper.karn.training_curves import write_training_curves

    curves = write_training_curves(
        policy.training["history"],
        out.with_name(out.name + ".curves.png"),
        f"simic on {config.episode.task}: {policy.training['episodes']} episodes",
    )
    console.print(
        f"policy written to {out} after {policy.training['episodes']} episodes "
        f"({time.perf_counter() - started:.0f} s this session); learning curves: {curves}",
        highlight=False,
    )
    return 0


def _episodes_so_far(row: dict, config) -> int:
    return min(config.episodes, row["update"] * config.episodes_per_update)


def _list_policies(console: Console) -> int:
    from esper.simic.policy import Policy, shipped_policies

    paths = shipped_policies()
    if not paths:
        console.print("no policies are shipped with this version")
        return 0
    table = Table(title="policies shipped with esper")
    for column in ("task", "topology", "slots", "episodes", "updates", "trained with"):
        table.add_column(column)
    for path in paths:
        policy = Policy.load(path)
        training = policy.training
        episode = policy.episode
        how = (
            f"{episode.get('epochs')} epochs, width x{episode.get('width_multiplier')}, "
            f"rent {training.get('config', {}).get('rent')}"
        )
        table.add_row(
            policy.task,
            policy.topology,
            ", ".join(policy.layout.slots),
            str(training.get("episodes")),
            str(training.get("updates")),
            how,
        )
    console.print(table)
    return 0
