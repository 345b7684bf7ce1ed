"""A trained growth policy as a file, and the controller that runs it in a real training run.

A policy file holds the PPO agent and what it was trained for: the task, the topology, the
slot layout and blueprints of its action space, the observation size, and how it was trained
(episodes, updates, workers, the reward's rent). ``esper train ppo`` refuses a policy whose task,
topology or slots are not the run's, with one line saying which.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from esper._atomic import atomic_path
from esper.leyline import Controller, Decision, TrainingSignals
from esper.leyline.formats import EPISODE, migrate
from esper.simic.actions import ActionLayout
from esper.simic.observation import observation_size, observe
from esper.simic.ppo import PPO

#: Bumped when the policy file's layout changes.
POLICY_FORMAT = "esper-simic-policy/1"
#: Where the policies shipped with the package live, one file per task.
SHIPPED_DIR = Path(__file__).with_name("policies")


class PolicyError(ValueError):
    """A policy file that is missing, unreadable, or made for another run."""


@dataclass
class Policy:
    """A PPO agent and the run it was trained for.

    Attributes:
        agent: the agent (network, normalisers).
        task: the task it was trained on.
        topology: the task's topology.
        layout: its action space (slots and blueprints).
        episode: the episode configuration it was trained with (``EpisodeConfig.to_dict``).
        training: how it was trained (free-form, shown by ``esper simic policies``).
    """

    agent: PPO
    task: str
    topology: str
    layout: ActionLayout
    episode: dict = field(default_factory=dict)
    training: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        want = (observation_size(self.layout), self.layout.n)
        if (self.agent.obs_dim, self.agent.n_actions) != want:
            raise PolicyError(
                f"the agent sees {self.agent.obs_dim} inputs and {self.agent.n_actions} actions; "
                f"the layout needs {want[0]} and {want[1]}"
            )

    def state_dict(self) -> dict:
        return {
            "format": POLICY_FORMAT,
            "task": self.task,
            "topology": self.topology,
            "layout": self.layout.to_dict(),
            "episode": dict(self.episode),
            "training": dict(self.training),
            "agent": self.agent.state_dict(),
        }

    def save(self, path: str | os.PathLike) -> None:
        """Write the policy atomically (a crash leaves the previous file)."""
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            torch.save(self.state_dict(), tmp)

    @classmethod
    def load(cls, path: str | os.PathLike) -> Policy:
        """Read a policy file.

        Raises:
            PolicyError: the file is missing, not a policy, or damaged.
        """
        path = Path(path)
        if not path.is_file():
            raise PolicyError(f"{path}: no such policy file")
        try:
            raw = torch.load(path, weights_only=True)
        except Exception as exc:  # noqa: BLE001 - any failure to read means a damaged file
            reason = " ".join(str(exc).split())[:120]
            raise PolicyError(f"{path}: not a readable policy file ({reason})") from None
        if not isinstance(raw, dict) or raw.get("format") != POLICY_FORMAT:
            found = raw.get("format") if isinstance(raw, dict) else type(raw).__name__
            raise PolicyError(f"{path}: not an Esper policy ({found!r}, expected {POLICY_FORMAT})")
        try:
            return cls(
                agent=PPO.from_state_dict(raw["agent"]),
                task=str(raw["task"]),
                topology=str(raw["topology"]),
                layout=ActionLayout.from_dict(raw["layout"]),
                # The settings it was trained with, each present whatever version wrote it.
                episode=migrate(EPISODE, raw.get("episode", {})),
                training=dict(raw.get("training", {})),
            )
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            reason = " ".join(str(exc).split())[:120]
            raise PolicyError(f"{path}: damaged policy file ({reason})") from None

    def check_fits(self, task: str, topology: str, slots: tuple[str, ...], where: str) -> None:
        """Refuse to drive a run this policy was not trained for.

        Raises:
            PolicyError: another task, topology or slot layout (the message names both).
        """
        if task != self.task:
            raise PolicyError(f"{where}: trained for task {self.task!r}, not {task!r}")
        if topology != self.topology:
            raise PolicyError(f"{where}: trained for a {self.topology} host, not {topology}")
        if tuple(slots) != self.layout.slots:
            raise PolicyError(
                f"{where}: trained for slots {', '.join(self.layout.slots)}, not {', '.join(slots)}"
            )


def shipped_policy_path(task: str) -> Path:
    """Where the policy shipped for ``task`` would be."""
    return SHIPPED_DIR / f"{task}.pt"


def shipped_policies() -> list[Path]:
    """The policy files shipped with the package, sorted by name."""
    return sorted(SHIPPED_DIR.glob("*.pt")) if SHIPPED_DIR.is_dir() else []


class PolicyController(Controller):
    """The :class:`~esper.leyline.Controller` a trained policy is in a real run: greedy, masked
    by the lifecycle, with no state of its own between epochs."""

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self.layout = policy.layout

    def decide(self, signals: TrainingSignals) -> Decision:
        obs = observe(signals, self.layout)
        mask = self.layout.mask(signals)
        action, log_prob, value = self.policy.agent.act(obs, mask, greedy=True)
        reason = f"policy: p={math.exp(log_prob):.2f}"
        if math.isfinite(value):  # a critic that needs training's static twin has no value here
            reason += f", value {value:+.2f}"
        return self.layout.decision(action, reason=reason)
