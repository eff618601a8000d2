"""A stand-in for an Atari env in tests that need no emulator: random uint8 (4, 84, 84) frames
from the env's own seeded generator. Subclasses say what a step pays and when episodes end."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
from gymnasium import spaces


class RandomFrames(gym.Env):
    def __init__(self, n_actions: int = 3) -> None:
        self.observation_space = spaces.Box(0, 255, (4, 84, 84), np.uint8)
        self.action_space = spaces.Discrete(n_actions)
        self.t = 0

    def reset(self, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return self._obs(), {}

    def _obs(self) -> np.ndarray:
        return self.np_random.integers(0, 256, (4, 84, 84), dtype=np.uint8)
