"""The rollout store of :class:`clrl.rl.agent.TaskPPO`: SB3's buffer, filled in place, on the device.

:class:`RolloutStore` is a stable-baselines3 ``RolloutBuffer`` (same arrays, same shapes, same
``compute_returns_and_advantage``: GAE of Schulman et al. 2016, eq. 16, with SB3's
``episode_starts`` convention), so anything that reads an SB3 buffer reads this one. What it
changes is how the arrays are filled and moved, which is where SB3's loop loses time:

* the arrays are allocated once and overwritten in place each rollout (SB3 re-allocates and
  zeroes ~29 MB of observations per update; every slot is written before ``full`` is set);
* an observation batch is copied once, from the env's array into its rollout slot; inference
  reads that slot (on the CPU a zero-copy view; on a GPU the slot's one host->device copy, from
  pinned memory, into a device-side rollout that training then reads without another transfer);
* values and log-probabilities are written into device tensors and come back to the host once
  per rollout, not twice per env step;
* training draws SB3's minibatch permutations (``np.random.permutation`` per epoch, as
  ``RolloutBuffer.get``) and gathers minibatches on the device from the step-major arrays: no
  ``swap_and_flatten`` copy, no per-minibatch host->device transfer.

Observations stay uint8 until the network's :func:`clrl.rl.policy.preprocess`. Image rollouts
are stored pixel-major (channels-last), the layout :class:`clrl.rl.envs.AtariVecEnv` hands frames
in and the network reads, so neither inference nor training transposes them.

Every host<->device copy goes through :func:`to_device` / :func:`to_host`, so tests count them;
``separate=True`` gives the GPU's copy path on a CPU (device tensors distinct from the host arrays)
so that the device-independent parts of that path are tested without a GPU.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import torch
from gymnasium import spaces
from stable_baselines3.common.buffers import RolloutBuffer
from stable_baselines3.common.type_aliases import RolloutBufferSamples
from torch import Tensor

__all__ = ["RolloutStore", "to_device", "to_host"]


def to_device(dst: Tensor, src: Tensor) -> Tensor:
    """Host -> device copy into ``dst`` (asynchronous from pinned memory); returns ``dst``."""
    return dst.copy_(src, non_blocking=True)


def to_host(t: Tensor) -> np.ndarray:
    """Device -> host (on a GPU this waits for the device: a synchronization)."""
    return t.detach().cpu().numpy()


class RolloutStore(RolloutBuffer):
    """SB3 ``RolloutBuffer`` written in place, with device mirrors of what the network reads.

    ``separate`` (default: the device is not the CPU) keeps device tensors apart from the host
    arrays and copies between them; otherwise the "device" tensors are views of the numpy arrays.
    Host arrays are pinned when the device is CUDA.
    """

    def __init__(
        self,
        buffer_size: int,
        observation_space: spaces.Space,
        action_space: spaces.Space,
        device: torch.device | str = "auto",
        gae_lambda: float = 1,
        gamma: float = 0.99,
        n_envs: int = 1,
        separate: bool | None = None,
    ) -> None:
        if not isinstance(action_space, spaces.Discrete):
            raise ValueError(f"RolloutStore holds Discrete actions, got {action_space}")
        if not isinstance(observation_space, spaces.Box):
            raise ValueError(f"RolloutStore holds Box observations, got {observation_space}")
        self._allocated = False
        self._separate_arg = separate
        super().__init__(buffer_size, observation_space, action_space, device, gae_lambda, gamma, n_envs)

    # ------------------------------------------------------------------ allocation

    def _allocate(self) -> None:
        n, e = self.buffer_size, self.n_envs
        dev = torch.device(self.device)
        self.separate = (dev.type != "cpu") if self._separate_arg is None else bool(self._separate_arg)
        if dev.type != "cpu" and not self.separate:
            raise ValueError(f"separate=False keeps the rollout in host memory, which a {dev.type} network "
                             "cannot read: leave separate unset (or True) for a device that is not the CPU")
        self.pinned = dev.type == "cuda" and torch.cuda.is_available()
        obs_dtype = torch.from_numpy(np.zeros(0, dtype=self.observation_space.dtype)).dtype
        # image rollouts are stored pixel-major, (n, e, H, W, C), and read through (n, e, C, H, W)
        # views: the layout the env hands its frames in and the network reads (channels-last), so
        # a step's copy is a plain one and training gathers minibatches without a transpose
        images = len(self.obs_shape) == 3
        order = (0, 1, 4, 2, 3) if images else tuple(range(2 + len(self.obs_shape)))
        stored = (n, e, *self.obs_shape[1:], self.obs_shape[0]) if images else (n, e, *self.obs_shape)
        self._obs_host = torch.zeros(stored, dtype=obs_dtype, pin_memory=self.pinned).permute(order)
        self.observations = self._obs_host.numpy()
        self.actions = np.zeros((n, e, self.action_dim), dtype=self.action_space.dtype)
        for name in ("rewards", "returns", "episode_starts", "values", "log_probs", "advantages"):
            setattr(self, name, np.zeros((n, e), dtype=np.float32))
        # what training reads: actions (as float32, like SB3's samples), advantages, returns
        self._packed_host = torch.zeros((3, n, e), dtype=torch.float32, pin_memory=self.pinned)
        if self.separate:
            self.obs_device = torch.zeros(stored, dtype=obs_dtype, device=dev).permute(order)
            self.values_device = torch.zeros((n, e), dtype=torch.float32, device=dev)
            self.log_probs_device = torch.zeros((n, e), dtype=torch.float32, device=dev)
            self._packed_device = torch.zeros((3, n, e), dtype=torch.float32, device=dev)
        else:
            self.obs_device = self._obs_host
            self.values_device = torch.from_numpy(self.values)
            self.log_probs_device = torch.from_numpy(self.log_probs)
            self._packed_device = self._packed_host
        self._allocated = True

    def _in_place(self) -> bool:
        """The arrays are still the step-major ones allocated here (``get`` flattens them)."""
        return (
            self._allocated
            and not self.generator_ready
            and self.observations.shape[:2] == (self.buffer_size, self.n_envs)
            and self.values.shape == (self.buffer_size, self.n_envs)
        )

    def reset(self) -> None:
        """Start a rollout, reusing the arrays: every slot is written before ``full`` is set."""
        if not self._in_place():
            self._allocate()
        self.generator_ready = False
        self.pos = 0
        self.full = False

    # ------------------------------------------------------------------ filling, one env step at a time

    def put_obs(self, step: int, obs: np.ndarray, envs: slice = slice(None)) -> Tensor:
        """Copy the observation batch of ``envs`` into slot ``step``; returns it on the device for
        inference (a contiguous block: the envs of one slot are adjacent)."""
        np.copyto(self.observations[step, envs], obs, casting="safe")
        if self.separate:
            return to_device(self.obs_device[step, envs], self._obs_host[step, envs])
        return self.obs_device[step, envs]

    def put_policy(self, step: int, values: Tensor, log_probs: Tensor, envs: slice = slice(None)) -> None:
        """Values and log pi(a|s) of slot ``step``, written on the device (no synchronization)."""
        self.values_device[step, envs].copy_(values.detach().reshape(-1))
        self.log_probs_device[step, envs].copy_(log_probs.detach().reshape(-1))

    def put_step(self, step: int, actions: np.ndarray, rewards: np.ndarray, episode_starts: np.ndarray,
                 envs: slice = slice(None)) -> None:
        self.actions[step, envs] = actions.reshape(-1, self.action_dim)
        self.rewards[step, envs] = rewards
        self.episode_starts[step, envs] = episode_starts

    def obs_to_device(self, obs: np.ndarray) -> Tensor:
        """An observation batch outside the rollout (the last one, a terminal one) on the device."""
        host = torch.from_numpy(np.ascontiguousarray(obs))
        if not self.separate:
            return host
        if self.pinned:
            host = host.pin_memory()
        return to_device(torch.empty(host.shape, dtype=host.dtype, device=self.obs_device.device), host)

    def finish(self, last_values: Tensor, dones: np.ndarray, bootstrap: list[tuple[int, int]] | None = None,
               bootstrap_values: Tensor | None = None) -> None:
        """End the rollout: values, log-probs and ``last_values`` to the host (one copy),
        timeout bootstraps, then SB3's GAE.

        ``bootstrap[k] = (step, env)`` adds ``bootstrap_values[k]`` (gamma * V(terminal obs)) to
        that reward, as SB3 does for a ``TimeLimit.truncated`` episode end (SB3 issue #633).
        """
        size = self.values.size
        if self.separate:  # one device->host copy: values, log-probs and the last values
            both = to_host(torch.cat((self.values_device.reshape(-1), self.log_probs_device.reshape(-1),
                                      last_values.detach().reshape(-1))))
            self.values[...] = both[:size].reshape(self.values.shape)
            self.log_probs[...] = both[size : 2 * size].reshape(self.values.shape)
            last_values = torch.from_numpy(both[2 * size :].copy())
        if bootstrap:
            extra = to_host(bootstrap_values.reshape(-1))
            for (step, env), value in zip(bootstrap, extra, strict=True):
                self.rewards[step, env] += value
        self.pos = self.buffer_size
        self.full = True
        self.compute_returns_and_advantage(last_values=last_values, dones=dones)

    # ------------------------------------------------------------------ training

    def _training_observations(self) -> Callable[[Tensor], Tensor]:
        """Minibatch gatherer over the rollout's observations, in the network's input layout.

        The network reads image batches channels-last (:func:`clrl.rl.policy.preprocess`), and
        the rollout stores them that way (pixel-major, see ``_allocate``): a minibatch is a
        gather of whole samples, handed over as the same (B, C, H, W) values with channels-last
        strides, which ``preprocess`` takes as they are. A step-major (N, C, H, W) rollout would
        be transposed at every gather, ``n_epochs`` times per sample. Same values, same layout at
        the network: the same training, bit for bit (``tests/test_rollout.py``).
        """
        total = self.buffer_size * self.n_envs
        if len(self.obs_shape) != 3:  # not images: the storage is the plain layout
            flat = self.obs_device.reshape(total, *self.obs_shape)
            return lambda i: flat.index_select(0, i)
        c, h, w = self.obs_shape
        pixels = self.obs_device.permute(0, 1, 3, 4, 2).view(total, h, w, c)  # the storage itself
        return lambda i: pixels.index_select(0, i).permute(0, 3, 1, 2)

    def epochs(self, batch_size: int, n_epochs: int) -> list[Iterator[RolloutBufferSamples]]:
        """The minibatches of ``n_epochs`` epochs, as SB3's ``get(batch_size)`` once per epoch.

        The permutations are SB3's (``np.random.permutation`` of the env-major flat index, one per
        epoch, drawn in epoch order); they are drawn here, before the first epoch, which gives the
        same numbers as long as nothing else draws from numpy's global generator during training
        (nothing in clrl does). The rollout goes to the device once: the packed actions,
        advantages and returns and the permutations, one copy each (observations, values and
        log-probs are there already).
        """
        if not self.full:
            raise RuntimeError("the rollout is not complete")
        n, e = self.buffer_size, self.n_envs
        total = n * e
        perms = np.stack([np.random.permutation(total) for _ in range(n_epochs)])
        # SB3's flat index k is env-major (k = env * n_steps + step); the arrays here are step-major
        rows = torch.from_numpy((perms % n) * e + perms // n)
        packed = self._packed_host
        packed[0].copy_(torch.from_numpy(self.actions.reshape(n, e)))
        packed[1].copy_(torch.from_numpy(self.advantages))
        packed[2].copy_(torch.from_numpy(self.returns))
        dev = self.obs_device.device
        if self.separate:
            to_device(self._packed_device, packed)
            if self.pinned:
                rows = rows.pin_memory()
            rows = to_device(torch.empty(rows.shape, dtype=rows.dtype, device=dev), rows)
        flat = self._packed_device.view(3, total)
        obs = self._training_observations()
        values = self.values_device.view(total)
        log_probs = self.log_probs_device.view(total)

        def epoch(idx: Tensor) -> Iterator[RolloutBufferSamples]:
            for start in range(0, total, batch_size):
                i = idx[start : start + batch_size]
                yield RolloutBufferSamples(
                    observations=obs(i),
                    actions=flat[0].index_select(0, i).unsqueeze(1),
                    old_values=values.index_select(0, i),
                    old_log_prob=log_probs.index_select(0, i),
                    advantages=flat[1].index_select(0, i),
                    returns=flat[2].index_select(0, i),
                )

        return [epoch(rows[k]) for k in range(n_epochs)]
