"""Experience for PPO: the rollout buffer parallel workers fill, and the estimates computed
from it (generalised advantages, explained variance)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor


def compute_gae(
    rewards: Tensor,
    values: Tensor,
    dones: Tensor,
    last_value: float,
    gamma: float,
    lam: float,
) -> tuple[Tensor, Tensor]:
    """Generalised advantage estimates over one contiguous buffer of steps.

    ``delta_t = r_t + gamma * V_{t+1} * (1 - done_t) - V_t`` and
    ``A_t = delta_t + gamma * lam * (1 - done_t) * A_{t+1}``, where ``V_T = last_value``.

    Args:
        rewards: ``(T,)`` rewards.
        values: ``(T,)`` value estimates of the states the actions were taken in.
        dones: ``(T,)`` bool; True where the episode ended at that step (nothing is bootstrapped
            across it).
        last_value: value of the state after the last step; ignored when that step is done.
        gamma: discount.
        lam: GAE lambda.

    Returns:
        ``(advantages, returns)``, each ``(T,)`` in ``values``' dtype; returns = advantages +
        values.

    Raises:
        ValueError: tensors that are not 1-D of one length, or gamma / lam outside [0, 1].
    """
    if rewards.dim() != 1 or rewards.shape != values.shape or rewards.shape != dones.shape:
        raise ValueError(
            "rewards, values and dones must be 1-D of one length, got "
            f"{tuple(rewards.shape)}, {tuple(values.shape)}, {tuple(dones.shape)}"
        )
    if not (0.0 <= gamma <= 1.0 and 0.0 <= lam <= 1.0):
        raise ValueError(f"gamma and lam must be in [0, 1], got {gamma}, {lam}")
    r = rewards.to(torch.float64)
    v = values.to(torch.float64)
    live = 1.0 - dones.to(torch.float64)  # 0 where the episode ended
    advantages = torch.zeros_like(v)
    next_value, running = float(last_value), 0.0
    for t in range(r.shape[0] - 1, -1, -1):
        delta = r[t] + gamma * next_value * live[t] - v[t]
        running = delta + gamma * lam * live[t] * running
        advantages[t] = running
        next_value = v[t]
    return advantages.to(values.dtype), (advantages + v).to(values.dtype)


def explained_variance(predictions: Tensor, targets: Tensor) -> float:
    """``1 - Var[targets - predictions] / Var[targets]``: 1 is perfect, 0 no better than the
    mean, negative worse; NaN when the targets do not vary."""
    var = targets.to(torch.float64).var(unbiased=False)
    if var.item() == 0.0:
        return float("nan")
    residual = (targets.to(torch.float64) - predictions.to(torch.float64)).var(unbiased=False)
    return float(1.0 - residual / var)


@dataclass
class Batch:
    """A rollout as tensors: obs ``(T, obs_dim)`` raw, critic_obs ``(T, critic_dim)`` raw
    (``critic_dim`` may be 0), mask ``(T, n_actions)`` bool, and ``(T,)`` actions (int64),
    log-probs, values, rewards (float32) and dones (bool)."""

    obs: Tensor
    critic_obs: Tensor
    mask: Tensor
    actions: Tensor
    log_probs: Tensor
    values: Tensor
    rewards: Tensor
    dones: Tensor


@dataclass(eq=False)  # numpy fields have no single truth value; compare ``to_batch()`` instead
class RolloutBuffer:
    """Steps in the order they happened: obs (raw, before normalisation), the critic-only
    inputs (an empty array where there are none), the legal-action mask the policy saw, the
    action, its log-prob under the masked policy, the value, the reward and whether the episode
    ended there.

    ``last_value`` is the value of the state after the last step, used only when the last step is
    not done (a buffer cut mid-episode). Buffers of whole episodes concatenate with
    :meth:`extend`, so parallel workers can each return one.
    """

    obs: list[np.ndarray] = field(default_factory=list)
    critic_obs: list[np.ndarray] = field(default_factory=list)
    masks: list[np.ndarray] = field(default_factory=list)
    actions: list[int] = field(default_factory=list)
    log_probs: list[float] = field(default_factory=list)
    values: list[float] = field(default_factory=list)
    rewards: list[float] = field(default_factory=list)
    dones: list[bool] = field(default_factory=list)
    last_value: float = 0.0

    def __len__(self) -> int:
        return len(self.actions)

    def add(
        self,
        obs: np.ndarray,
        mask: np.ndarray,
        action: int,
        log_prob: float,
        value: float,
        reward: float,
        done: bool,
        critic_obs: np.ndarray | None = None,
    ) -> None:
        """Append one step (copies of ``obs``, ``mask`` and ``critic_obs`` are kept).

        Raises:
            ValueError: ``critic_obs`` has another length than the buffer's earlier steps'.
        """
        extra = np.array([] if critic_obs is None else critic_obs, dtype=np.float32).ravel()
        if self.critic_obs and extra.shape != self.critic_obs[0].shape:
            raise ValueError(
                f"critic_obs of length {extra.shape[0]} after steps with "
                f"{self.critic_obs[0].shape[0]}"
            )
        self.obs.append(np.array(obs, dtype=np.float32))
        self.critic_obs.append(extra)
        self.masks.append(np.array(mask, dtype=np.bool_))
        self.actions.append(int(action))
        self.log_probs.append(float(log_prob))
        self.values.append(float(value))
        self.rewards.append(float(reward))
        self.dones.append(bool(done))

    def extend(self, other: RolloutBuffer) -> None:
        """Append ``other``'s steps after this buffer's.

        Raises:
            ValueError: this buffer ends mid-episode (GAE would bootstrap across the seam).
        """
        if len(self) and not self.dones[-1]:
            raise ValueError("cannot extend a buffer whose last episode is unfinished")
        if (
            self.critic_obs
            and other.critic_obs
            and (self.critic_obs[0].shape != other.critic_obs[0].shape)
        ):
            raise ValueError("cannot join buffers with different numbers of critic inputs")
        self.obs += other.obs
        self.critic_obs += other.critic_obs
        self.masks += other.masks
        self.actions += other.actions
        self.log_probs += other.log_probs
        self.values += other.values
        self.rewards += other.rewards
        self.dones += other.dones
        self.last_value = other.last_value

    @classmethod
    def concat(cls, buffers: list[RolloutBuffer]) -> RolloutBuffer:
        """One buffer holding ``buffers``' steps in order (see :meth:`extend`)."""
        out = cls()
        for buffer in buffers:
            out.extend(buffer)
        return out

    def to_batch(self) -> Batch:
        """The steps as tensors.

        Raises:
            ValueError: the buffer is empty.
        """
        if not len(self):
            raise ValueError("the rollout buffer is empty")
        return Batch(
            obs=torch.from_numpy(np.stack(self.obs)),
            critic_obs=torch.from_numpy(np.stack(self.critic_obs)),
            mask=torch.from_numpy(np.stack(self.masks)),
            actions=torch.tensor(self.actions, dtype=torch.int64),
            log_probs=torch.tensor(self.log_probs, dtype=torch.float32),
            values=torch.tensor(self.values, dtype=torch.float32),
            rewards=torch.tensor(self.rewards, dtype=torch.float32),
            dones=torch.tensor(self.dones, dtype=torch.bool),
        )
