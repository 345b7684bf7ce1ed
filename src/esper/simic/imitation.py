"""Behaviour cloning from the heuristic: a warm start for the learned policy.

A policy initialised near uniform over ~20 legal actions germinates and culls seeds almost every
epoch, and learns slowly from that churn. Cloning the heuristic first starts PPO from a policy
that already grows sensibly; PPO then has to improve on it. The demonstrations are real runs
under the heuristic on training seeds, observed exactly as the policy observes them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch.nn import functional as F

from esper.leyline import Controller, Decision, TrainingSignals
from esper.simic.actions import ActionLayout
from esper.simic.env import EpisodeConfig, whole_run
from esper.simic.observation import observe
from esper.simic.ppo import PPO, masked_entropy
from esper.tamiyo import HeuristicController
from esper.tolaria.tasks import get_task

#: Weight of the entropy bonus while cloning. Without it the clone is certain of every choice
#: (0.01 nats of entropy on 8 digits runs) and PPO, which learns from the actions it samples,
#: sees nothing but the heuristic's choices; at 0.2 it keeps 0.34 nats and still takes every
#: demonstrated action.
BC_ENTROPY_COEF = 0.2


@dataclass
class Demonstrations:
    """What the heuristic saw and did: observations, legal-action masks, action indices."""

    obs: list[np.ndarray] = field(default_factory=list)
    masks: list[np.ndarray] = field(default_factory=list)
    actions: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.actions)

    @classmethod
    def concat(cls, parts: list[Demonstrations]) -> Demonstrations:
        """One set holding ``parts``' steps in order."""
        out = cls()
        for part in parts:
            out.obs += part.obs
            out.masks += part.masks
            out.actions += part.actions
        return out


class _Recorder(Controller):
    """A controller that asks the heuristic and writes down the question and the answer."""

    def __init__(self, heuristic: HeuristicController, layout: ActionLayout, demos) -> None:
        self.heuristic = heuristic
        self.layout = layout
        self.demos = demos

    def decide(self, signals: TrainingSignals) -> Decision:
        decision = self.heuristic.decide(signals)
        self.demos.obs.append(observe(signals, self.layout))
        self.demos.masks.append(self.layout.mask(signals))
        self.demos.actions.append(self.layout.index(decision))
        return decision

    def on_outcome(self, decision, outcome) -> None:
        self.heuristic.on_outcome(decision, outcome)

    def on_cull(self, blueprint) -> None:
        self.heuristic.on_cull(blueprint)


def demonstrate(config: EpisodeConfig, layout: ActionLayout, seeds) -> Demonstrations:
    """Run the episodes' heuristic (``config.heuristic_config()``) on each seed and record
    every epoch's decision."""
    topology = get_task(config.task).topology
    demos, data = Demonstrations(), {}
    for seed in seeds:
        heuristic = HeuristicController(topology, config.heuristic_config(), seed=int(seed))
        recorder = _Recorder(heuristic, layout, demos)
        with whole_run(config, int(seed), data, controller=recorder):
            pass  # the recorder wrote down every decision as the run went
    return demos


def behaviour_clone(
    agent: PPO,
    demos: Demonstrations,
    *,
    epochs: int = 300,
    lr: float = 3e-3,
    entropy_coef: float = BC_ENTROPY_COEF,
) -> dict:
    """Fit ``agent``'s policy to ``demos`` by cross-entropy on the masked logits (full batch),
    with an entropy bonus so the clone keeps some doubt for PPO to explore with.

    The agent's observation statistics are first set from the demonstrations, so the policy
    PPO starts from sees inputs on the scale it was cloned on.

    Returns:
        ``{"steps", "loss", "accuracy", "entropy"}``: the demonstrations' size, the final
        cross-entropy, the share of demonstrated actions the greedy policy takes, and the
        policy's mean entropy on the demonstrations.
    """
    if not len(demos):
        raise ValueError("no demonstrations to clone")
    obs = torch.from_numpy(np.stack(demos.obs))
    masks = torch.from_numpy(np.stack(demos.masks))
    actions = torch.tensor(demos.actions, dtype=torch.int64)
    if agent.config.normalize_observations:
        agent.obs_rms.update(obs)
    x = agent.normalize_obs(obs)
    optimizer = torch.optim.Adam(agent.net.actor.parameters(), lr=lr)
    loss = torch.tensor(0.0)
    for _ in range(epochs):
        logits = agent.net.logits(x, masks)  # (N, n_actions)
        loss = F.cross_entropy(logits, actions)
        objective = loss - entropy_coef * masked_entropy(logits).mean()
        optimizer.zero_grad(set_to_none=True)
        objective.backward()
        optimizer.step()
    with torch.no_grad():
        logits = agent.net.logits(x, masks)
        accuracy = float((logits.argmax(dim=1) == actions).float().mean())
        entropy = float(masked_entropy(logits).mean())
    return {
        "steps": len(demos),
        "loss": float(loss.detach()),
        "accuracy": accuracy,
        "entropy": entropy,
    }
