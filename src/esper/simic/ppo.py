"""PPO with action masks: the learner behind simic's growth policy.

Read top to bottom: the configuration, running statistics for normalisation, the actor-critic
network, and the agent (``act`` / ``update`` / checkpoints). The rollout buffer and GAE are in
:mod:`esper.simic.rollout`; collecting episodes in one process, in :mod:`esper.simic.episodes`.

Two consistency rules run through the file:

* The policy an episode was collected with is the policy ``update`` starts from. The
  observation statistics are therefore frozen while collecting and during every epoch of an
  update, and refreshed only at the end of ``update``; the log-probabilities stored by ``act``
  then equal the ones recomputed on the first minibatch (``first_minibatch_ratio_max_dev``).
* Illegal actions get the most negative finite logit, never ``-inf``: their probability is
  exactly 0, while log-softmax, entropy and their gradients stay finite.

The critic may see more than the actor (an asymmetric actor-critic): ``critic_dim`` extra
inputs that only the training environment has, passed as ``critic_obs``. The value only shapes
the advantages during training, so a policy acting where those inputs do not exist is the same
policy; its value is then unknown (NaN).
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from esper._atomic import atomic_path
from esper.simic.rollout import Batch, RolloutBuffer, compute_gae, explained_variance

#: Observations are clipped to this many standard deviations after normalisation, so one
#: outlier cannot saturate the tanh trunk.
OBS_CLIP = 10.0
#: Bumped when the checkpoint layout changes (format 1, of the development versions, had no
#: critic-only inputs).
CHECKPOINT_FORMAT = 2
_READABLE_FORMATS = (CHECKPOINT_FORMAT,)


@dataclass(frozen=True)
class PPOConfig:
    """Hyperparameters of PPO. Defaults are the usual ones for small discrete-action problems."""

    #: Discount per step; 1.0 suits short finite episodes whose return is what counts.
    gamma: float = 0.99
    #: GAE's bias/variance trade-off: 0 is one-step TD, 1 is Monte Carlo.
    gae_lambda: float = 0.95
    #: Half-width of the trust region on the probability ratio.
    clip: float = 0.2
    #: Passes over each batch of experience.
    update_epochs: int = 4
    #: Steps per gradient step; a batch smaller than this is one minibatch.
    minibatch_size: int = 64
    #: Adam's learning rate.
    lr: float = 3e-4
    #: Weight of the value loss against the policy loss.
    value_coef: float = 0.5
    #: Weight of the entropy bonus, which keeps the policy exploring.
    entropy_coef: float = 0.01
    #: Gradients are rescaled to at most this global norm.
    max_grad_norm: float = 0.5
    #: Stop the update's remaining minibatches and epochs once a minibatch's approximate KL to
    #: the collecting policy exceeds this (that minibatch takes no step); None never stops.
    target_kl: float | None = None
    #: Clip the value prediction to within this of the collected value (in normalised return
    #: units), as PPO's value loss sometimes does; None uses the plain squared error.
    value_clip: float | None = None
    #: Hidden widths of the actor's and the critic's MLPs (each has its own trunk).
    hidden: tuple[int, ...] = (64, 64)
    #: Feed the networks observations standardised by running statistics.
    normalize_observations: bool = True
    #: Fit the critic to returns divided by a running standard deviation of returns, so the
    #: value loss has the same scale whatever the reward scale.
    normalize_returns: bool = True

    def __post_init__(self) -> None:
        for name in ("gamma", "gae_lambda"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        for name in ("clip", "lr", "max_grad_norm"):
            if not getattr(self, name) > 0.0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        for name in ("value_coef", "entropy_coef"):
            if not getattr(self, name) >= 0.0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("update_epochs", "minibatch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("target_kl", "value_clip"):
            value = getattr(self, name)
            if value is not None and not value > 0.0:
                raise ValueError(f"{name} must be > 0 or None, got {value}")
        hidden = tuple(self.hidden)
        if not hidden or any(int(w) != w or w < 1 for w in hidden):
            raise ValueError(f"hidden must be a non-empty tuple of widths >= 1, got {self.hidden}")
        object.__setattr__(self, "hidden", tuple(int(w) for w in hidden))


class RunningMeanStd:
    """Running mean and (population) variance over batches, merged exactly (Chan et al.).

    Float64 torch tensors, so the statistics are deterministic and fit a ``weights_only``
    checkpoint. Before the first update the mean is 0 and the variance 1: normalising is then
    the identity (up to ``eps``).

    Args:
        shape: shape of one sample (``()`` for scalars).
        eps: added to the variance before the square root.
    """

    def __init__(self, shape: tuple[int, ...] = (), eps: float = 1e-8):
        self.shape = tuple(shape)
        self.eps = eps
        self.mean = torch.zeros(self.shape, dtype=torch.float64)
        self.var = torch.ones(self.shape, dtype=torch.float64)
        self.count = 0

    def update(self, x: Tensor | np.ndarray) -> None:
        """Merge a batch of samples ``x`` of shape ``(N, *shape)``.

        Raises:
            ValueError: ``x`` has the wrong shape or no samples.
        """
        x = torch.as_tensor(x, dtype=torch.float64)
        if tuple(x.shape[1:]) != self.shape or x.shape[0] == 0:
            raise ValueError(
                f"expected a batch of shape (N>0, *{self.shape}), got {tuple(x.shape)}"
            )
        n = x.shape[0]
        batch_mean = x.mean(dim=0)
        batch_var = x.var(dim=0, unbiased=False)
        total = self.count + n
        delta = batch_mean - self.mean
        # Sum of squared deviations of both parts plus the spread between their means.
        m2 = self.var * self.count + batch_var * n + delta.square() * (self.count * n / total)
        self.mean = self.mean + delta * (n / total)
        self.var = m2 / total
        self.count = total

    @property
    def std(self) -> Tensor:
        """Standard deviation, with ``eps`` added to the variance."""
        return torch.sqrt(self.var + self.eps)

    def normalize(self, x: Tensor, clip: float | None = OBS_CLIP) -> Tensor:
        """``(x - mean) / std``, clipped to ``[-clip, clip]``, in ``x``'s dtype."""
        out = (x.to(torch.float64) - self.mean) / self.std
        if clip is not None:
            out = out.clamp(-clip, clip)
        return out.to(x.dtype)

    def state_dict(self) -> dict[str, Any]:
        return {"mean": self.mean.clone(), "var": self.var.clone(), "count": self.count}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        mean, var = state["mean"], state["var"]
        if tuple(mean.shape) != self.shape or tuple(var.shape) != self.shape:
            raise ValueError(
                f"statistics of shape {tuple(mean.shape)} do not fit a RunningMeanStd of shape "
                f"{self.shape}"
            )
        self.mean = mean.to(torch.float64).clone()
        self.var = var.to(torch.float64).clone()
        self.count = int(state["count"])


def _mlp(sizes: list[int], out_gain: float, generator: torch.Generator | None) -> nn.Sequential:
    """Tanh MLP with orthogonal weights (gain sqrt 2 inside, ``out_gain`` on the last layer)."""
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        # skip_init: nn.Linear's own default init would draw from the global RNG.
        linear = nn.utils.skip_init(nn.Linear, n_in, n_out)
        last = i == len(sizes) - 2
        nn.init.orthogonal_(
            linear.weight, gain=out_gain if last else math.sqrt(2), generator=generator
        )
        nn.init.zeros_(linear.bias)
        layers.append(linear)
        if not last:
            layers.append(nn.Tanh())
    return nn.Sequential(*layers)


class ActorCritic(nn.Module):
    """Separate tanh MLPs for the policy logits and the value (no shared trunk, so the value
    loss cannot pull the policy's features around).

    Args:
        obs_dim: length of an observation.
        n_actions: number of discrete actions.
        hidden: hidden widths of each MLP.
        generator: RNG for the initial weights (the global RNG is never used when given).
        critic_dim: extra inputs the critic reads after the observation (0: none).
    """

    def __init__(
        self,
        obs_dim: int,
        n_actions: int,
        hidden: tuple[int, ...] = (64, 64),
        generator: torch.Generator | None = None,
        critic_dim: int = 0,
    ):
        super().__init__()
        if obs_dim < 1 or n_actions < 1 or critic_dim < 0:
            raise ValueError(
                "obs_dim and n_actions must be >= 1 and critic_dim >= 0, got "
                f"{obs_dim}, {n_actions}, {critic_dim}"
            )
        self.obs_dim, self.n_actions, self.critic_dim = obs_dim, n_actions, critic_dim
        # A small gain on the policy head starts it near uniform over the legal actions.
        self.actor = _mlp([obs_dim, *hidden, n_actions], 0.01, generator)
        self.critic = _mlp([obs_dim + critic_dim, *hidden, 1], 1.0, generator)

    def forward(
        self, obs: Tensor, mask: Tensor, critic_obs: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """Masked logits and values.

        Args:
            obs: ``(B, obs_dim)`` (already normalised) observations.
            mask: ``(B, n_actions)`` bool, True for legal actions.
            critic_obs: ``(B, critic_dim)`` (normalised) critic-only inputs; needed when
                ``critic_dim > 0``.

        Returns:
            ``(masked_logits (B, n_actions), value (B,))``; illegal actions' logits are
            ``torch.finfo(dtype).min``.

        Raises:
            ValueError: wrong shapes, a non-bool mask, or a row with no legal action.
        """
        return self.logits(obs, mask), self.value(obs, critic_obs)  # (B, n_actions), (B,)

    def logits(self, obs: Tensor, mask: Tensor) -> Tensor:
        """The policy alone: ``(B, n_actions)`` masked logits (see :meth:`forward`)."""
        if obs.dim() != 2 or obs.shape[1] != self.obs_dim:
            raise ValueError(f"obs must be (B, {self.obs_dim}), got {tuple(obs.shape)}")
        if mask.dtype != torch.bool or tuple(mask.shape) != (obs.shape[0], self.n_actions):
            raise ValueError(
                f"mask must be a bool tensor of shape ({obs.shape[0]}, {self.n_actions}), "
                f"got {mask.dtype} {tuple(mask.shape)}"
            )
        empty = ~mask.any(dim=1)
        if bool(empty.any()):
            rows = torch.nonzero(empty).flatten().tolist()
            raise ValueError(f"rows {rows} of the action mask allow no action")
        logits = self.actor(obs)  # (B, n_actions)
        return logits.masked_fill(~mask, torch.finfo(logits.dtype).min)

    def value(self, obs: Tensor, critic_obs: Tensor | None = None) -> Tensor:
        """``(B,)`` values of ``(B, obs_dim)`` normalised observations (no mask needed) and,
        when the critic has extra inputs, their ``(B, critic_dim)`` normalised values."""
        if self.critic_dim:
            if critic_obs is None or tuple(critic_obs.shape) != (obs.shape[0], self.critic_dim):
                got = None if critic_obs is None else tuple(critic_obs.shape)
                raise ValueError(
                    f"the critic needs critic_obs of shape ({obs.shape[0]}, {self.critic_dim}), "
                    f"got {got}"
                )
            obs = torch.cat([obs, critic_obs.to(obs.dtype)], dim=1)
        return self.critic(obs).squeeze(-1)


def masked_entropy(masked_logits: Tensor) -> Tensor:
    """``(B,)`` entropy of the categorical over the legal actions (illegal ones have p = 0)."""
    log_p = F.log_softmax(masked_logits, dim=-1)
    # p * log p is exactly 0 for illegal actions: p underflows to 0 and log p stays finite.
    return -(log_p.exp() * log_p).sum(dim=-1)


class PPO:
    """A PPO agent over a discrete, masked action space.

    Deterministic for a given ``seed``: the initial weights, every sampled action and every
    minibatch shuffle come from the agent's own ``torch.Generator``; the global RNG is never
    touched.

    Args:
        obs_dim: length of an observation.
        n_actions: number of discrete actions.
        config: hyperparameters; defaults to :class:`PPOConfig`.
        seed: seeds the agent's generator.
        critic_dim: critic-only inputs (see the module docstring); 0 for none.
    """

    def __init__(
        self,
        obs_dim: int,
        n_actions: int,
        config: PPOConfig | None = None,
        seed: int = 0,
        critic_dim: int = 0,
    ):
        self.obs_dim, self.n_actions = int(obs_dim), int(n_actions)
        self.critic_dim = int(critic_dim)
        self.config = config or PPOConfig()
        self.seed = int(seed)
        self.generator = torch.Generator().manual_seed(self.seed)
        self.net = ActorCritic(
            self.obs_dim, self.n_actions, self.config.hidden, self.generator, self.critic_dim
        )
        self.optimizer = torch.optim.Adam(self.net.parameters(), lr=self.config.lr, eps=1e-5)
        self.obs_rms = RunningMeanStd((self.obs_dim,))
        self.critic_rms = RunningMeanStd((self.critic_dim,))
        self.ret_rms = RunningMeanStd(())

    # -- acting --------------------------------------------------------------------------------

    def normalize_obs(self, obs: Tensor) -> Tensor:
        """``obs`` as the networks see it: standardised by the running statistics (if on)."""
        if not self.config.normalize_observations:
            return obs
        return self.obs_rms.normalize(obs)

    def normalize_critic_obs(self, critic_obs: Tensor) -> Tensor:
        """The critic-only inputs as the critic sees them (standardised like observations)."""
        if not self.config.normalize_observations:
            return critic_obs
        return self.critic_rms.normalize(critic_obs)

    def _critic_tensor(self, critic_obs: np.ndarray | None) -> Tensor | None:
        """``(1, critic_dim)`` normalised critic inputs, or None when the critic has none or
        they were not given."""
        if not self.critic_dim or critic_obs is None:
            return None
        x = torch.as_tensor(np.asarray(critic_obs, dtype=np.float32))
        if tuple(x.shape) != (self.critic_dim,):
            raise ValueError(
                f"critic_obs must have shape ({self.critic_dim},), got {tuple(x.shape)}"
            )
        return self.normalize_critic_obs(x)[None]

    def _return_scale(self) -> float:
        """Critic outputs are returns divided by this."""
        return float(self.ret_rms.std) if self.config.normalize_returns else 1.0

    def _obs_tensor(self, obs: np.ndarray) -> Tensor:
        x = torch.as_tensor(np.asarray(obs, dtype=np.float32))
        if tuple(x.shape) != (self.obs_dim,):
            raise ValueError(f"obs must have shape ({self.obs_dim},), got {tuple(x.shape)}")
        return x

    @torch.no_grad()
    def act(
        self,
        obs: np.ndarray,
        mask: np.ndarray,
        greedy: bool = False,
        critic_obs: np.ndarray | None = None,
    ) -> tuple[int, float, float]:
        """Choose an action for one observation.

        Args:
            obs: ``(obs_dim,)`` raw observation.
            mask: ``(n_actions,)`` bool, True for legal actions.
            greedy: take the most probable legal action instead of sampling.
            critic_obs: ``(critic_dim,)`` raw critic-only inputs (ignored when the critic has
                none). Without them the action is the same; only the value is unknown.

        Returns:
            ``(action, log_prob, value)``: the log-prob under the masked policy and the value in
            return units (NaN when the critic needs ``critic_obs`` and got none).

        Raises:
            TypeError: ``mask`` is not boolean.
            ValueError: wrong shapes, or a mask with no legal action.
        """
        x = self._obs_tensor(obs)
        mask_arr = np.asarray(mask)
        if mask_arr.dtype != np.bool_:
            raise TypeError(f"mask must be a bool array, got dtype {mask_arr.dtype}")
        legal = torch.from_numpy(mask_arr.copy())
        x = self.normalize_obs(x)[None]
        extra = self._critic_tensor(critic_obs)
        logits = self.net.logits(x, legal[None])
        if self.critic_dim and extra is None:
            value = torch.full((1,), math.nan)
        else:
            value = self.net.value(x, extra)
        log_p = F.log_softmax(logits[0], dim=-1)  # (n_actions,)
        if greedy:
            # -inf (not finfo.min) here, so even a tie can only pick a legal action.
            action = int(torch.where(legal, logits[0], -math.inf).argmax())
        else:
            # Zeroing the illegal probabilities makes sampling one impossible, not just unlikely.
            probs = log_p.exp().masked_fill(~legal, 0.0)
            action = int(torch.multinomial(probs, 1, generator=self.generator))
        return action, float(log_p[action]), float(value[0]) * self._return_scale()

    @torch.no_grad()
    def value(self, obs: np.ndarray, critic_obs: np.ndarray | None = None) -> float:
        """Value (in return units) of one raw observation (and its critic-only inputs, which a
        critic that has them needs)."""
        x = self.normalize_obs(self._obs_tensor(obs))[None]
        return float(self.net.value(x, self._critic_tensor(critic_obs))[0]) * self._return_scale()

    # -- learning ------------------------------------------------------------------------------

    def update(self, buffer: RolloutBuffer) -> dict[str, float]:
        """One PPO update on a buffer collected with the current policy.

        Advantages come from GAE over the buffer and are normalised per minibatch. Each epoch
        reshuffles the steps (with the agent's generator) into minibatches and takes one
        gradient step per minibatch on ``clipped surrogate + value_coef * value loss -
        entropy_coef * entropy``. The observation statistics are updated with the buffer's
        observations only after the last epoch (see the module docstring).

        Returns:
            Stats: ``policy_loss``, ``value_loss``, ``entropy``, ``approx_kl`` and
            ``clip_fraction`` (means over the minibatches evaluated), ``explained_variance``
            (of the collected values against the returns, before the update), ``epochs_run``
            (epochs begun), ``minibatches_run`` (gradient steps taken), ``early_stopped``
            (1.0 if ``target_kl`` stopped the update) and ``first_minibatch_ratio_max_dev``
            (max ``|ratio - 1|`` on the first minibatch, ~0 when the stored log-probs match the
            policy).

        Raises:
            ValueError: the buffer is empty or its shapes do not fit the agent.
        """
        cfg = self.config
        batch = buffer.to_batch()
        self._check_batch(batch)
        advantages, returns = compute_gae(
            batch.rewards, batch.values, batch.dones, buffer.last_value, cfg.gamma, cfg.gae_lambda
        )
        ev = explained_variance(batch.values, returns)
        if cfg.normalize_returns:
            # Refreshed before the epochs: it only rescales the critic's targets, never the
            # policy, so the stored log-probs stay valid.
            self.ret_rms.update(returns)
        scale = self._return_scale()
        targets, old_values = returns / scale, batch.values / scale  # (T,)
        obs = self.normalize_obs(batch.obs)  # (T, obs_dim), statistics frozen since collection
        critic_obs = (
            self.normalize_critic_obs(batch.critic_obs) if self.critic_dim else None
        )  # (T, critic_dim)
        sums, evaluated, progress = self._run_epochs(
            batch, obs, critic_obs, advantages, targets, old_values
        )
        if cfg.normalize_observations:
            self.obs_rms.update(batch.obs)
            if self.critic_dim:
                self.critic_rms.update(batch.critic_obs)
        stats = {key: value / evaluated for key, value in sums.items()}
        stats.update(explained_variance=ev, **progress)
        return stats

    def _check_batch(self, batch: Batch) -> None:
        """Refuse a buffer whose widths do not fit this agent."""
        if batch.obs.shape[1] != self.obs_dim or batch.mask.shape[1] != self.n_actions:
            raise ValueError(
                f"buffer has obs width {batch.obs.shape[1]} and {batch.mask.shape[1]} actions; "
                f"the agent expects {self.obs_dim} and {self.n_actions}"
            )
        if self.critic_dim and batch.critic_obs.shape[1] != self.critic_dim:
            raise ValueError(
                f"buffer has {batch.critic_obs.shape[1]} critic inputs per step; the critic "
                f"expects {self.critic_dim}"
            )

    def _run_epochs(
        self,
        batch: Batch,
        obs: Tensor,
        critic_obs: Tensor | None,
        advantages: Tensor,
        targets: Tensor,
        old_values: Tensor,
    ) -> tuple[dict[str, float], int, dict[str, float]]:
        """The update's epochs of shuffled minibatches, each a gradient step unless
        ``target_kl`` stops the update first.

        Returns:
            The summed minibatch stats, how many minibatches were evaluated, and the progress
            stats (``epochs_run``, ``minibatches_run``, ``early_stopped``,
            ``first_minibatch_ratio_max_dev``).
        """
        cfg = self.config
        n = len(batch.actions)
        size = min(cfg.minibatch_size, n)
        sums = dict.fromkeys(
            ("policy_loss", "value_loss", "entropy", "approx_kl", "clip_fraction"), 0.0
        )
        evaluated = steps = epochs = 0
        first_dev = math.nan
        stopped = False
        for _ in range(cfg.update_epochs):
            epochs += 1
            order = torch.randperm(n, generator=self.generator)
            for start in range(0, n, size):
                idx = order[start : start + size]
                mb = self._minibatch_loss(
                    obs[idx], None if critic_obs is None else critic_obs[idx],
                    batch.mask[idx], batch.actions[idx], batch.log_probs[idx],
                    advantages[idx], targets[idx], old_values[idx],
                )  # fmt: skip
                if evaluated == 0:
                    first_dev = mb["ratio_max_dev"]
                evaluated += 1
                for key in sums:
                    sums[key] += mb[key]
                if cfg.target_kl is not None and mb["approx_kl"] > cfg.target_kl:
                    stopped = True  # this minibatch already left the trust region: no step
                    break
                self.optimizer.zero_grad(set_to_none=True)
                mb["loss"].backward()
                nn.utils.clip_grad_norm_(self.net.parameters(), cfg.max_grad_norm)
                self.optimizer.step()
                steps += 1
            if stopped:
                break
        progress = {
            "epochs_run": float(epochs),
            "minibatches_run": float(steps),
            "early_stopped": float(stopped),
            "first_minibatch_ratio_max_dev": first_dev,
        }
        return sums, evaluated, progress

    def _minibatch_loss(
        self,
        obs: Tensor,
        critic_obs: Tensor | None,
        mask: Tensor,
        actions: Tensor,
        old_log_probs: Tensor,
        advantages: Tensor,
        targets: Tensor,
        old_values: Tensor,
    ) -> dict[str, Any]:
        """The PPO loss of one minibatch (a tensor, ``loss``) and its diagnostics (floats)."""
        cfg = self.config
        logits, values = self.net(obs, mask, critic_obs)  # (M, n_actions), (M,)
        log_p = F.log_softmax(logits, dim=-1).gather(1, actions[:, None]).squeeze(1)  # (M,)
        log_ratio = log_p - old_log_probs
        ratio = log_ratio.exp()
        if advantages.numel() > 1:
            advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
        surrogate = torch.min(
            ratio * advantages, ratio.clamp(1.0 - cfg.clip, 1.0 + cfg.clip) * advantages
        )
        policy_loss = -surrogate.mean()
        value_error = (values - targets).square()
        if cfg.value_clip is not None:
            clipped = old_values + (values - old_values).clamp(-cfg.value_clip, cfg.value_clip)
            value_error = torch.max(value_error, (clipped - targets).square())
        value_loss = 0.5 * value_error.mean()
        entropy = masked_entropy(logits).mean()
        loss = policy_loss + cfg.value_coef * value_loss - cfg.entropy_coef * entropy
        with torch.no_grad():
            # (r - 1) - log r >= 0 is an unbiased, low-variance estimate of KL(old || new).
            approx_kl = ((ratio - 1.0) - log_ratio).mean()
            clip_fraction = ((ratio - 1.0).abs() > cfg.clip).float().mean()
            dev = (ratio - 1.0).abs().max()
        return {
            "loss": loss,
            "policy_loss": policy_loss.item(),
            "value_loss": value_loss.item(),
            "entropy": entropy.item(),
            "approx_kl": float(approx_kl),
            "clip_fraction": float(clip_fraction),
            "ratio_max_dev": float(dev),
        }

    # -- checkpoints ---------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume: construction arguments, network, optimizer, the
        normalisers and the generator state (tensors and plain Python values only)."""
        config = asdict(self.config)
        config["hidden"] = list(config["hidden"])
        return {
            "format": CHECKPOINT_FORMAT,
            "obs_dim": self.obs_dim,
            "n_actions": self.n_actions,
            "critic_dim": self.critic_dim,
            "seed": self.seed,
            "config": config,
            "network": self.net.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "obs_rms": self.obs_rms.state_dict(),
            "critic_rms": self.critic_rms.state_dict(),
            "ret_rms": self.ret_rms.state_dict(),
            "generator": self.generator.get_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict` taken from an agent of the same shape and config.

        Raises:
            ValueError: the checkpoint's format, shapes or config differ from this agent's.
        """
        _check_format(state)
        saved = (
            state["obs_dim"],
            state["n_actions"],
            _critic_dim(state),
            _config_from_dict(state["config"]),
        )
        if saved != (self.obs_dim, self.n_actions, self.critic_dim, self.config):
            raise ValueError(
                f"checkpoint is for obs_dim={saved[0]}, n_actions={saved[1]}, "
                f"critic_dim={saved[2]}, {saved[3]}; this agent has obs_dim={self.obs_dim}, "
                f"n_actions={self.n_actions}, critic_dim={self.critic_dim}, {self.config}. "
                "Use PPO.from_state_dict to rebuild the saved agent."
            )
        self.net.load_state_dict(state["network"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.obs_rms.load_state_dict(state["obs_rms"])
        if self.critic_dim:
            self.critic_rms.load_state_dict(state["critic_rms"])
        self.ret_rms.load_state_dict(state["ret_rms"])
        self.generator.set_state(state["generator"])
        self.seed = int(state["seed"])

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> PPO:
        """A new agent built from a checkpoint's construction arguments, then restored."""
        _check_format(state)
        agent = cls(
            state["obs_dim"],
            state["n_actions"],
            _config_from_dict(state["config"]),
            state["seed"],
            _critic_dim(state),
        )
        agent.load_state_dict(state)
        return agent

    def save(self, path: str | os.PathLike) -> None:
        """Write :meth:`state_dict` to ``path`` atomically."""
        with atomic_path(path) as tmp:
            torch.save(self.state_dict(), tmp)

    @classmethod
    def load(cls, path: str | os.PathLike) -> PPO:
        """Rebuild the agent saved at ``path`` (loaded with ``weights_only=True``)."""
        return cls.from_state_dict(torch.load(path, weights_only=True))


def _check_format(state: dict[str, Any]) -> None:
    if state.get("format") not in _READABLE_FORMATS:
        raise ValueError(
            f"checkpoint format {state.get('format')!r} is not one of {_READABLE_FORMATS}; "
            "it was written by another version of esper.simic.ppo"
        )


def _critic_dim(state: dict[str, Any]) -> int:
    """A checkpoint's critic-only inputs."""
    return int(state["critic_dim"])


def _config_from_dict(data: dict[str, Any]) -> PPOConfig:
    return PPOConfig(**{**data, "hidden": tuple(data["hidden"])})
