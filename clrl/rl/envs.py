"""Atari vector environments for SB3 with the AGS-CL paper's semantics (REFERENCE.md).

``make_vec_env`` returns an SB3 ``VecEnv`` of ``<Game>NoFrameskip-v4``-style envs: no sticky
actions, minimal action set, up to 30 no-ops and FIRE on reset, frame skip 4 with max-pool,
84x84 gray, 4 stacked frames. For training (``train=True``) a lost life ends the *learner's*
episode and rewards are sign-clipped; for evaluation neither. ``info["episode"]`` always
carries the raw (unclipped) score of a *full game*, as SB3's Monitor would.

Two backends give the same semantics:

* ``ale_vector`` (default, ~7x faster): ``ale_py.vector_env.AtariVectorEnv``, C++ threads with
  preprocessing in C++. Its own ``episodic_life`` flag is not used: it restarts the *whole
  game* on a life loss (the C++ ``PreprocessedEnv`` treats a lost life as the episode's end and
  auto-resets it), so games are never played past the first life and full-game scores do not
  exist. Its ``reward_clipping`` is not used either, since it would hide the raw score. Here the
  C++ side runs plain full games (``terminated`` = game over, raw rewards, same-step
  auto-reset) and the Python side below adds the life-loss terminal (``0 < lives < previous``,
  the baselines ``EpisodicLifeEnv`` rule) and the clipping, keeping the raw score per game.
* ``gymnasium``: ``ALE/<Game>-v5`` with ``frameskip=1`` + ``AtariPreprocessing`` + zero-padded
  ``FrameStackObservation`` stepped in a Python loop; reset does FIRE and no-ops the way the C++
  env does (see ``_FireNoopReset``). Slower; a fallback and a cross-check.

Determinism: every env is seeded at reset (``seed + i`` for env ``i``); later auto-resets draw
from that env's own generator, so the same seed and actions give the same observations and
rewards. Each C++ env owns its emulator and RNG and the vector interface returns results in env
order in synchronous mode, so the number of worker threads does not change per-env dynamics
(``tests/test_envs.py`` checks 1 thread against the default).
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from typing import Any, Protocol

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from stable_baselines3.common.vec_env.base_vec_env import VecEnv, VecEnvIndices, VecEnvStepReturn

from clrl.config import EnvConfig
from clrl.rl.games import minimal_action_count, resolve_game, rom_id

__all__ = ["AtariVecEnv", "action_count", "make_vec_env", "FULL_ACTION_COUNT", "OBS_SIZE"]

FULL_ACTION_COUNT = 18
OBS_SIZE = 84
_SEED_MOD = 2**31 - 1  # the C++ envs take a non-negative int32 seed


def action_count(game: str, env: EnvConfig) -> int:
    """Size of the action space: the game's minimal action set, or 18 with ``full_action_space``."""
    return FULL_ACTION_COUNT if env.full_action_space else minimal_action_count(game)


class _Batch(Protocol):
    """A batch of full-game Atari envs with same-step auto-reset (the backends' common shape)."""

    num_envs: int

    def reset(self, seeds: Sequence[int | None]) -> tuple[np.ndarray, np.ndarray]:
        """Reset every env; returns (obs, lives)."""

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, ...]:
        """Returns (obs, raw_reward, game_over, truncated, lives, final_obs or None).

        ``obs`` of an env whose game ended is already the first observation of its next game;
        ``final_obs[i]`` is then its last observation of the finished game.
        """

    def close(self) -> None: ...


# --------------------------------------------------------------------------- ale_vector backend


class _AleBatch:
    """``AtariVectorEnv`` playing full games: raw rewards, terminal only at game over."""

    def __init__(self, game: str, n_envs: int, env: EnvConfig, max_frames: int) -> None:
        from ale_py.vector_env import AtariVectorEnv

        threads = env.num_threads or min(n_envs, os.cpu_count() or 1)
        self.num_envs = n_envs
        self._venv = AtariVectorEnv(
            rom_id(game),
            n_envs,
            num_threads=threads,
            max_num_frames_per_episode=max_frames,
            repeat_action_probability=env.sticky_actions,
            full_action_space=env.full_action_space,
            autoreset_mode="SameStep",
            img_height=OBS_SIZE,
            img_width=OBS_SIZE,
            grayscale=True,
            stack_num=env.frame_stack,
            frameskip=env.frame_skip,
            maxpool=True,
            noop_max=env.noop_max,
            episodic_life=False,  # see the module docstring: it would restart the whole game
            life_loss_info=False,
            reward_clipping=False,
            use_fire_reset=env.fire_reset,
        )

    def reset(self, seeds: Sequence[int | None]) -> tuple[np.ndarray, np.ndarray]:
        seed_arr = np.array([-1 if s is None else s for s in seeds], dtype=np.int64)
        obs, info = self._venv.reset(seed=seed_arr)
        order = self._order(info)
        return obs[order], np.asarray(info["lives"])[order]

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, ...]:
        obs, rew, term, trunc, info = self._venv.step(actions)
        order = self._order(info)
        final = info.get("final_obs")
        return (
            obs[order],
            np.asarray(rew, dtype=np.float64)[order],
            np.asarray(term, dtype=bool)[order],
            np.asarray(trunc, dtype=bool)[order],
            np.asarray(info["lives"])[order],
            None if final is None else final[order],
        )

    def _order(self, info: dict) -> slice | np.ndarray:
        """Rows sorted by env id (already so in synchronous mode; checked, not assumed)."""
        ids = np.asarray(info["env_id"])
        if np.array_equal(ids, np.arange(self.num_envs)):
            return slice(None)
        return np.argsort(ids, kind="stable")

    def close(self) -> None:
        venv, self._venv = self._venv, None
        if venv is not None:
            venv.close()
            del venv.ale  # joins the C++ worker threads now, not at garbage collection


# --------------------------------------------------------------------------- gymnasium backend


class _FireNoopReset(gym.Wrapper):
    """Reset like ale-py's C++ vector env: one FIRE frame (if enabled and the game has FIRE),
    then ``k ~ U{0..noop_max-1}`` no-op frames (``k - 1`` after a FIRE), restarting the game
    if it ends meanwhile. The baselines ``NoopResetEnv`` draws ``U{1..noop_max}`` instead."""

    def __init__(self, env: gym.Env, noop_max: int, fire: bool) -> None:
        super().__init__(env)
        import ale_py

        self._noop_max = noop_max
        self._fire = fire and ale_py.Action.FIRE in list(env.unwrapped._action_set)
        self._actions = ale_py.Action

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[Any, dict]:
        obs, info = self.env.reset(seed=seed, options=options)
        ale = self.env.unwrapped.ale
        if self._fire:
            ale.act(self._actions.FIRE)
        rng = self.env.unwrapped.np_random
        noops = (int(rng.integers(0, self._noop_max)) if self._noop_max > 0 else 0) - int(
            self._fire
        )
        for _ in range(noops):
            ale.act(self._actions.NOOP)
            if ale.game_over():
                ale.reset_game()
        return obs, info


class _GymBatch:
    """``ALE/<Game>-v5`` + ``AtariPreprocessing`` + frame stack, stepped in a Python loop."""

    def __init__(self, game: str, n_envs: int, env: EnvConfig, max_frames: int) -> None:
        import ale_py

        gym.register_envs(ale_py)
        self.num_envs = n_envs
        self._max_frames = max_frames
        self._frame_skip = env.frame_skip
        self._envs: list[gym.Env] = []
        for _ in range(n_envs):
            base = gym.make(
                f"ALE/{game}-v5",
                frameskip=1,
                repeat_action_probability=env.sticky_actions,
                full_action_space=env.full_action_space,
                # the cap is applied below in agent steps, as the C++ env does (reset frames
                # do not count); ALE's own cap only has to stay out of the way
                max_num_frames_per_episode=max_frames + env.noop_max + 2 * env.frame_skip,
            )
            wrapped = _FireNoopReset(base, env.noop_max, env.fire_reset)
            wrapped = gym.wrappers.AtariPreprocessing(
                wrapped,
                noop_max=0,
                frame_skip=env.frame_skip,
                screen_size=OBS_SIZE,
                terminal_on_life_loss=False,
                grayscale_obs=True,
                scale_obs=False,
            )
            wrapped = gym.wrappers.FrameStackObservation(
                wrapped, env.frame_stack, padding_type="zero"
            )
            self._envs.append(wrapped)
        self._steps = np.zeros(n_envs, dtype=np.int64)

    def _lives(self, i: int) -> int:
        return int(self._envs[i].unwrapped.ale.lives())

    def reset(self, seeds: Sequence[int | None]) -> tuple[np.ndarray, np.ndarray]:
        obs = np.stack(
            [np.asarray(e.reset(seed=s)[0]) for e, s in zip(self._envs, seeds, strict=True)]
        )
        self._steps[:] = 0
        return obs, np.array([self._lives(i) for i in range(self.num_envs)])

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, ...]:
        n = self.num_envs
        obs_list, final = [], None
        rew = np.zeros(n)
        term = np.zeros(n, dtype=bool)
        trunc = np.zeros(n, dtype=bool)
        lives = np.zeros(n, dtype=np.int64)
        for i, e in enumerate(self._envs):
            o, r, te, tr, _ = e.step(int(actions[i]))
            self._steps[i] += 1
            tr = bool(tr) or self._steps[i] * self._frame_skip >= self._max_frames
            rew[i], term[i], trunc[i] = r, te, tr and not te
            if te or tr:
                if final is None:
                    final = np.zeros((n, *np.shape(o)), dtype=np.uint8)
                final[i] = o
                o, _ = e.reset()
                self._steps[i] = 0
            obs_list.append(np.asarray(o))
            lives[i] = self._lives(i)
        return np.stack(obs_list), rew, term, trunc, lives, final

    def close(self) -> None:
        for e in self._envs:
            e.close()
        self._envs = []


# --------------------------------------------------------------------------- SB3 VecEnv


class AtariVecEnv(VecEnv):
    """SB3 ``VecEnv`` over a batch of Atari games with episodic life, clipping and game scores.

    Per step and env ``i``: the learner's ``done`` is game over, frame-cap truncation, or (with
    ``episodic_life``) a lost life while the game goes on; ``infos[i]`` has ``lives``,
    ``raw_reward``, ``game_over``, ``TimeLimit.truncated``, and on done ``terminal_observation``
    (the pre-reset observation; after a life loss the game continues, so it equals the returned
    one); at the end of a full game ``episode = {"r": raw score, "l": agent steps, "t": s}``.
    """

    def __init__(
        self,
        batch: _Batch,
        game: str,
        n_actions: int,
        frame_stack: int,
        *,
        seed: int,
        episodic_life: bool,
        clip_rewards: bool,
        max_frames: int,
    ) -> None:
        self._batch: _Batch | None = batch
        self.game = game
        self.episodic_life = episodic_life
        self.clip_rewards = clip_rewards
        self.max_frames = max_frames
        self.render_mode = None
        obs_space = spaces.Box(0, 255, (frame_stack, OBS_SIZE, OBS_SIZE), dtype=np.uint8)
        super().__init__(batch.num_envs, obs_space, spaces.Discrete(n_actions))
        self.seed(seed)
        n = batch.num_envs
        self._actions: np.ndarray | None = None
        self._lives = np.zeros(n, dtype=np.int64)
        self._ep_return = np.zeros(n, dtype=np.float64)
        self._ep_len = np.zeros(n, dtype=np.int64)
        self._t0 = time.time()
        self.raw_rewards = np.zeros(n, dtype=np.float64)  # raw rewards of the last step

    # -- core
    def seed(self, seed: int | None = None) -> list[int | None]:
        """Seeds for the next ``reset``: ``seed + i`` for env ``i`` (folded into int32)."""
        seeds = super().seed(seed)
        self._seeds = [int(s) % _SEED_MOD for s in seeds]
        return list(self._seeds)

    def reset(self) -> np.ndarray:
        """Start new games in every env (seeded if ``seed`` was called since the last reset)."""
        obs, lives = self._live_batch().reset(self._seeds)
        self._reset_seeds()
        self._lives[:] = lives
        self._ep_return[:] = 0.0
        self._ep_len[:] = 0
        self.reset_infos = [{"lives": int(x)} for x in lives]
        return obs

    def step_async(self, actions: np.ndarray) -> None:
        actions = np.asarray(actions)
        if actions.dtype.kind not in "iu":
            if not np.all(np.equal(np.mod(actions, 1), 0)):
                raise ValueError(f"actions must be integers, got {actions.dtype}")
        actions = actions.astype(np.int64).reshape(-1)
        if actions.shape != (self.num_envs,):
            raise ValueError(f"expected {self.num_envs} actions, got shape {np.shape(actions)}")
        n = int(self.action_space.n)
        if actions.min() < 0 or actions.max() >= n:
            raise ValueError(
                f"actions must lie in [0, {n}) for {self.game}, got {actions.min()}..{actions.max()}"
            )
        self._actions = actions

    def step_wait(self) -> VecEnvStepReturn:
        if self._actions is None:
            raise RuntimeError("step_wait() without step_async()")
        obs, raw, game_over, truncated, lives, final = self._live_batch().step(self._actions)
        self._actions = None
        game_end = game_over | truncated
        if game_end.any() and final is None:
            raise RuntimeError(
                f"{self!r}: a game ended but the backend returned no final observation"
            )
        self.raw_rewards = raw
        self._ep_return += raw
        self._ep_len += 1
        life_lost = (lives > 0) & (lives < self._lives) & ~game_end
        dones = game_end | life_lost if self.episodic_life else game_end
        rewards = (np.sign(raw) if self.clip_rewards else raw).astype(np.float32)
        infos: list[dict[str, Any]] = []
        now = time.time()
        for i in range(self.num_envs):
            info: dict[str, Any] = {
                "lives": int(lives[i]),
                "raw_reward": float(raw[i]),
                "game_over": bool(game_over[i]),
                "TimeLimit.truncated": bool(truncated[i] and not game_over[i]),
            }
            if dones[i]:
                info["terminal_observation"] = final[i] if game_end[i] else obs[i].copy()
            if game_end[i]:
                info["episode"] = {
                    "r": float(self._ep_return[i]),
                    "l": int(self._ep_len[i]),
                    "t": round(now - self._t0, 6),
                }
                self._ep_return[i] = 0.0
                self._ep_len[i] = 0
            infos.append(info)
        self._lives[:] = lives  # after a game over: the new game's lives
        return obs, rewards, dones.copy(), infos

    def close(self) -> None:
        """Stop the emulators (and the C++ worker threads); safe to call twice."""
        batch, self._batch = self._batch, None
        if batch is not None:
            batch.close()

    def _live_batch(self) -> _Batch:
        if self._batch is None:
            raise RuntimeError("this vector env is closed")
        return self._batch

    def __enter__(self) -> AtariVecEnv:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass

    # -- the rest of SB3's VecEnv interface: one object, no sub-env wrappers
    def get_attr(self, attr_name: str, indices: VecEnvIndices = None) -> list[Any]:
        value = getattr(self, attr_name)
        return [value for _ in self._get_indices(indices)]

    def set_attr(self, attr_name: str, value: Any, indices: VecEnvIndices = None) -> None:
        raise AttributeError(f"AtariVecEnv sub-envs have no settable attributes ({attr_name!r})")

    def env_method(
        self, method_name: str, *method_args: Any, indices: VecEnvIndices = None, **kw: Any
    ) -> list[Any]:
        raise AttributeError(f"AtariVecEnv sub-envs expose no methods ({method_name!r})")

    def env_is_wrapped(
        self, wrapper_class: type[gym.Wrapper], indices: VecEnvIndices = None
    ) -> list[bool]:
        return [False for _ in self._get_indices(indices)]

    def __repr__(self) -> str:
        mode = "closed" if self._batch is None else type(self._batch).__name__
        return f"AtariVecEnv({self.game}, n_envs={self.num_envs}, {mode})"


def make_vec_env(
    game: str,
    n_envs: int,
    env: EnvConfig,
    seed: int,
    *,
    train: bool,
    max_frames: int | None = None,
) -> AtariVecEnv:
    """SB3 vector env of ``n_envs`` copies of ``game`` (see the module docstring for semantics).

    ``train=True``: episodic life and sign-clipped rewards as ``env.episodic_life`` /
    ``env.clip_rewards`` say. ``train=False``: full games with raw rewards. ``max_frames`` caps a
    game in emulator frames (agent steps x frame skip; default ``env.max_frames_per_episode``);
    a capped game is truncated (``TimeLimit.truncated``) and still reports its score so far.
    Unknown games raise ``ConfigError`` with the closest names.
    """
    name = resolve_game(game)
    if n_envs < 1:
        raise ValueError(f"n_envs must be >= 1, got {n_envs}")
    cap = int(env.max_frames_per_episode if max_frames is None else max_frames)
    if cap < 1:
        raise ValueError(f"max_frames must be >= 1, got {max_frames}")
    batch_cls = {"ale_vector": _AleBatch, "gymnasium": _GymBatch}[env.backend]
    batch = batch_cls(name, n_envs, env, cap)
    try:
        return AtariVecEnv(
            batch,
            name,
            action_count(name, env),
            env.frame_stack,
            seed=seed,
            episodic_life=train and env.episodic_life,
            clip_rewards=train and env.clip_rewards,
            max_frames=cap,
        )
    except BaseException:
        batch.close()
        raise
