"""Simic: learning Tamiyo's growth policy with reinforcement learning.

One episode is one training run; one step is one epoch's decision. The environment wraps the
real trainer through its observe / apply / end_epoch steps; the policy is trained with PPO.
"""
