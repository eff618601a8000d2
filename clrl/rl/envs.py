"""Atari vector environments for SB3 with the baselines' wrapper semantics.

``make_vec_env`` returns an SB3 ``VecEnv`` of ``<Game>NoFrameskip-v4``-style envs: no sticky
actions, minimal action set, frame skip 4 with max-pool, 84x84 gray, 4 stacked frames, and the
life-loss semantics of the baselines' ``EpisodicLifeEnv`` + ``FireResetEnv`` + ``VecFrameStack``
as SB3's ``AtariWrapper`` and the a2c-ppo-acktr code (the AGS-CL authors') apply them:

* reset: random no-ops, then FIRE and action 2 in games whose action 1 is FIRE;
* after every lost life, in training *and* evaluation: one NOOP agent step, then FIRE and
  action 2 where the game has FIRE (a policy that never presses FIRE does not stall);
* the frame stack restarts (zeros + the new frame) at every game start and lost life.

For training (``train=True``) a lost life also ends the *learner's* episode and rewards are
sign-clipped; for evaluation neither. ``info["episode"]`` always carries the raw (unclipped)
score of a *full game*, as SB3's Monitor would, with its learner steps and emulator frames.
The shared logic is :class:`_AtariBatch`; two backends give it per-env emulators:

* ``ale_vector`` (default): one ``ale_py.vector_env.AtariVectorEnv`` of a single env per env,
  C++ preprocessing and one C++ worker thread each, all sent their actions before any result
  is received (see :class:`_AleEmulators` for why not one vector env of ``n``). Its own
  ``episodic_life`` would restart the whole game at a lost life, its ``reward_clipping`` would
  hide the raw score and its FIRE reset comes before the no-ops, so none of them is used.
* ``gymnasium``: ``ALE/<Game>-v5`` with ``frameskip=1`` + ``AtariPreprocessing``, stepped in a
  Python loop; slower; a fallback and a cross-check (same frames bit for bit without no-ops).

A step can also be split over groups of envs (``AtariVecEnv.send_group`` / ``recv_group``): a
group's emulators start at its send and are waited for at its receive, so the rollout loop can
run inference for one group while others step (``train.rollout_groups``); each env sees exactly
what a full ``step`` gives it (``tests/test_life_loss.py``).

Known differences from the baselines' wrappers: the no-ops are ``k ~ U{0..noop_max-1}`` single
frames (the C++ env's rule; ``NoopResetEnv`` draws ``U{1..noop_max}``), and both backends
max-pool *gray* frames where SB3 max-pools RGB frames and then converts to gray, which changes
about 0.15% of the pixels (by up to 10-17 gray levels in StarGunner and DemonAttack);
``tests/test_envs.py`` checks everything else step for step against SB3's wrappers.

Determinism: every env is seeded at reset (``seed + i`` for env ``i``); later auto-resets draw
from that env's own generator, so the same seed and actions give the same observations and
rewards. Each C++ env owns its emulator, RNG and worker thread, and results are gathered in
env order, so threads do not change per-env dynamics.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, Protocol

import ale_py
import gymnasium as gym
import numpy as np
from ale_py.vector_env import AtariVectorEnv  # at import: evaluation threads build envs at once
from gymnasium import spaces
from stable_baselines3.common.vec_env.base_vec_env import VecEnv, VecEnvIndices, VecEnvStepReturn

from clrl.config import EnvConfig
from clrl.rl.games import minimal_action_count, resolve_game, rom_id
from clrl.rl.priority import build_with_lower_priority

__all__ = ["AtariVecEnv", "action_count", "make_vec_env", "FULL_ACTION_COUNT", "OBS_SIZE"]

FULL_ACTION_COUNT = 18
OBS_SIZE = 84
_SEED_MOD = 2**31 - 1  # the C++ envs take a non-negative int32 seed


def action_count(game: str, env: EnvConfig) -> int:
    """Size of the action space: the game's minimal action set, or 18 with ``full_action_space``."""
    return FULL_ACTION_COUNT if env.full_action_space else minimal_action_count(game)


class _Emulators(Protocol):
    """``num_envs`` full-game Atari emulators stepped one agent step (frame skip, max-pool, 84x84
    gray) at a time, any subset at once, with same-step auto-reset (the backends' common shape).

    Frames are single ``(84, 84)`` images: stacking, life-loss restarts and FIRE resets are done
    by :class:`_AtariBatch` above them, identically for both backends.
    """

    num_envs: int
    has_fire: bool

    def reset(self, idx: np.ndarray, seeds: Sequence[int | None]) -> tuple[np.ndarray, np.ndarray]:
        """Start new games (random no-ops included) in envs ``idx``; returns (frames, lives)."""

    def send(self, idx: np.ndarray, actions: np.ndarray) -> None:
        """Start one agent step in envs ``idx`` (it may run while the caller does other work)."""

    def recv(self, idx: np.ndarray) -> tuple[np.ndarray, ...]:
        """Finish the step sent to envs ``idx``; returns (frames, raw_reward, game_over,
        truncated, lives, final).

        The frame of an env whose game ended is already the first one of its next game;
        ``final[k]`` is then its last frame of the finished game (zeros elsewhere).
        """

    def close(self) -> None: ...


def _step(emu: _Emulators, idx: np.ndarray, actions: np.ndarray) -> tuple[np.ndarray, ...]:
    """One agent step of envs ``idx``, waited for (``send`` then ``recv``)."""
    emu.send(idx, actions)
    return emu.recv(idx)


def _step_arrays(k: int) -> tuple[np.ndarray, ...]:
    """Zeroed (frames, raw_reward, game_over, truncated, lives, final) for ``k`` envs."""
    frame = (k, OBS_SIZE, OBS_SIZE)
    return (np.zeros(frame, dtype=np.uint8), np.zeros(k, dtype=np.float64), np.zeros(k, dtype=bool),
            np.zeros(k, dtype=bool), np.zeros(k, dtype=np.int64), np.zeros(frame, dtype=np.uint8))


# --------------------------------------------------------------------------- ale_vector backend


class _AleEmulators:
    """One ``AtariVectorEnv(num_envs=1)`` per env, stepped together with ``send``/``recv``.

    Why not one ``AtariVectorEnv`` of ``n`` envs: a synchronous vector env steps every env at
    once, so it cannot press FIRE in the one env that just lost a life while the others wait
    for the learner. One single-env instance per env (each with its own C++ worker thread)
    can: all envs are sent their action before any result is received, so they still step in
    parallel, and the extra agent steps of a life loss or reset go to just the envs that need
    them. Preprocessing (frame skip 4 with max-pool of the last two gray frames, resize to 84x84)
    stays in C++; the frame stack is kept in Python (``stack_num=1``) so that it can restart at
    a life loss. ``noop_max``: the C++ reset draws ``k ~ U{0..noop_max-1}`` single-frame no-ops
    (the baselines' ``NoopResetEnv`` draws ``U{1..noop_max}``).
    """

    def __init__(self, game: str, n_envs: int, env: EnvConfig, max_frames: int) -> None:
        self.num_envs = n_envs
        self._envs: list[Any] = []
        # built (worker threads started) below the learner's priority: clrl.rl.priority
        build_with_lower_priority(lambda: self._build(game, n_envs, env, max_frames), env.emulator_nice)
        self.has_fire = _has_fire(list(self._envs[0].ale.get_action_set()))
        self._paddle = np.ones(1, dtype=np.float32)  # paddle strength: unused by discrete actions

    def _build(self, game: str, n_envs: int, env: EnvConfig, max_frames: int) -> None:
        try:
            for _ in range(n_envs):
                self._envs.append(
                    AtariVectorEnv(
                        rom_id(game),
                        1,
                        num_threads=1,
                        max_num_frames_per_episode=max_frames,
                        repeat_action_probability=env.sticky_actions,
                        full_action_space=env.full_action_space,
                        autoreset_mode="SameStep",
                        img_height=OBS_SIZE,
                        img_width=OBS_SIZE,
                        grayscale=True,
                        stack_num=1,
                        frameskip=env.frame_skip,
                        maxpool=True,
                        noop_max=env.noop_max,
                        episodic_life=False,  # it would restart the whole game at a lost life
                        life_loss_info=False,
                        reward_clipping=False,  # it would hide the raw score
                        use_fire_reset=False,  # FIRE comes after the no-ops, from _AtariBatch
                    )
                )
        except BaseException:
            self.close()
            raise

    def reset(self, idx: np.ndarray, seeds: Sequence[int | None]) -> tuple[np.ndarray, np.ndarray]:
        frames = np.zeros((len(idx), OBS_SIZE, OBS_SIZE), dtype=np.uint8)
        lives = np.zeros(len(idx), dtype=np.int64)
        for k, (i, s) in enumerate(zip(idx, seeds, strict=True)):
            obs, info = self._envs[i].reset(seed=np.array([-1 if s is None else s], dtype=np.int64))
            frames[k] = obs[0, -1]
            lives[k] = int(info["lives"][0])
        return frames, lives

    def send(self, idx: np.ndarray, actions: np.ndarray) -> None:
        # the C++ call itself: the Python wrapper's checks and allocations cost more than the call
        paddle = self._paddle
        for i, a in zip(idx, actions, strict=True):
            self._envs[i].ale.send(np.array([a], dtype=np.int64), paddle)

    def recv(self, idx: np.ndarray) -> tuple[np.ndarray, ...]:
        frames, raw, over, trunc, lives, final = _step_arrays(len(idx))
        for n, i in enumerate(idx):
            obs, rew, term, tr, info = self._envs[i].ale.recv()
            frames[n] = obs[0, -1]
            raw[n], over[n], trunc[n] = rew[0], term[0], tr[0] and not term[0]
            lives[n] = int(info["lives"][0])
            if over[n] or trunc[n]:
                final[n] = info["final_obs"][0, -1]
        return frames, raw, over, trunc, lives, final

    def close(self) -> None:
        envs, self._envs = self._envs, []
        for venv in envs:
            venv.close()
            del venv.ale  # joins the C++ worker thread now, not at garbage collection


# --------------------------------------------------------------------------- gymnasium backend


class _NoopReset(gym.Wrapper):
    """Reset with ``k ~ U{0..noop_max-1}`` single-frame no-ops, as the C++ env draws them,
    restarting the game if it ends meanwhile (FIRE follows from :class:`_AtariBatch`)."""

    def __init__(self, env: gym.Env, noop_max: int) -> None:
        super().__init__(env)

        self._noop_max = noop_max
        self._noop = ale_py.Action.NOOP

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[Any, dict]:
        obs, info = self.env.reset(seed=seed, options=options)
        ale = self.env.unwrapped.ale
        rng = self.env.unwrapped.np_random
        for _ in range(int(rng.integers(0, self._noop_max)) if self._noop_max > 0 else 0):
            ale.act(self._noop)
            if ale.game_over():
                ale.reset_game()
        return obs, info


class _GymEmulators:
    """``ALE/<Game>-v5`` (frameskip 1) + ``AtariPreprocessing``, stepped in a Python loop."""

    def __init__(self, game: str, n_envs: int, env: EnvConfig, max_frames: int) -> None:

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
            wrapped = gym.wrappers.AtariPreprocessing(
                _NoopReset(base, env.noop_max),
                noop_max=0,
                frame_skip=env.frame_skip,
                screen_size=OBS_SIZE,
                terminal_on_life_loss=False,
                grayscale_obs=True,
                scale_obs=False,
            )
            self._envs.append(wrapped)
        self.has_fire = _has_fire(list(self._envs[0].unwrapped._action_set))
        self._steps = np.zeros(n_envs, dtype=np.int64)
        self._pending = np.zeros(n_envs, dtype=np.int64)

    def _lives(self, i: int) -> int:
        return int(self._envs[i].unwrapped.ale.lives())

    def reset(self, idx: np.ndarray, seeds: Sequence[int | None]) -> tuple[np.ndarray, np.ndarray]:
        frames = np.stack(
            [np.asarray(self._envs[i].reset(seed=s)[0]) for i, s in zip(idx, seeds, strict=True)]
        )
        self._steps[idx] = 0
        return frames, np.array([self._lives(i) for i in idx], dtype=np.int64)

    def send(self, idx: np.ndarray, actions: np.ndarray) -> None:
        self._pending[idx] = actions  # stepped at recv: a Python loop has nothing to overlap

    def recv(self, idx: np.ndarray) -> tuple[np.ndarray, ...]:
        k = len(idx)
        frames, raw, over, trunc, lives, final = _step_arrays(k)
        for n, (i, a) in enumerate(zip(idx, self._pending[idx], strict=True)):
            e = self._envs[i]
            o, r, te, tr, _ = e.step(int(a))
            self._steps[i] += 1
            tr = bool(tr) or self._steps[i] * self._frame_skip >= self._max_frames
            raw[n], over[n], trunc[n] = r, te, tr and not te
            if te or tr:
                final[n] = o
                o, _ = e.reset()
                self._steps[i] = 0
            frames[n] = o
            lives[n] = self._lives(i)
        return frames, raw, over, trunc, lives, final

    def close(self) -> None:
        for e in self._envs:
            e.close()
        self._envs = []


# --------------------------------------------------------------------------- life loss, FIRE, stack

_NOOP, _FIRE, _AFTER_FIRE = 0, 1, 2  # minimal-set indices; FireResetEnv presses 1 then 2


def _has_fire(action_set: Sequence[Any]) -> bool:
    """The baselines' ``FireResetEnv`` condition: action 1 is FIRE (and there is an action 2)."""

    return len(action_set) >= 3 and action_set[_FIRE] == ale_py.Action.FIRE


class _AtariBatch:
    """The baselines' wrapper semantics over per-env emulators, the same for both backends.

    Following a2c-ppo-acktr (the AGS-CL authors' code, which evaluates with its training
    wrappers) and SB3's ``AtariWrapper``, in training and evaluation alike:

    * reset: the emulator's random no-ops, then, in games whose action 1 is FIRE,
      ``FireResetEnv``'s FIRE and action 2 (one agent step each);
    * after a lost life (``0 < lives < previous``, ``EpisodicLifeEnv``'s rule): its one NOOP
      agent step, then FIRE and action 2 where the game has FIRE, so that games waiting for FIRE
      go on (an argmax policy that never presses FIRE would otherwise stall to the frame cap);
    * the frame stack restarts (zeros, then the new frame) at every game start and lost life,
      as ``VecFrameStack`` does at a done.

    These scripted agent steps are invisible to the learner (no transition, no reward), but
    their raw rewards count in the game's score, as SB3's ``Monitor`` (innermost wrapper)
    counts them, and they count towards the frame cap. A game that ends during them ends at
    the learner's step. Per game the batch keeps its raw score (``r``), learner steps (``l``)
    and emulator frames of all its agent steps (``f`` = agent steps x frame skip; the reset
    no-ops are not counted).
    """

    def __init__(self, emu: _Emulators, frame_stack: int, fire_reset: bool, frame_skip: int) -> None:
        self.emu = emu
        self.num_envs = n = emu.num_envs
        self.fire = bool(fire_reset and emu.has_fire)
        self.frame_skip = int(frame_skip)
        # the frames are stored pixel-major, (n, H, W, stack), and handed out as (n, stack, H, W)
        # views of that memory: the channels-last layout the network reads (clrl.rl.policy
        # .preprocess), so neither a rollout step nor a training minibatch transposes them
        self._pixels = np.zeros((n, OBS_SIZE, OBS_SIZE, frame_stack), dtype=np.uint8)
        self.stack = self._pixels.transpose(0, 3, 1, 2)
        self.lives = np.zeros(n, dtype=np.int64)
        self.ep_return = np.zeros(n, dtype=np.float64)
        self.ep_steps = np.zeros(n, dtype=np.int64)  # learner steps
        self.ep_agent_steps = np.zeros(n, dtype=np.int64)  # learner + scripted steps
        self.scripted_steps = 0  # scripted agent steps so far, all envs together
        self.in_flight = np.zeros(n, dtype=bool)  # sent, not yet received

    def _fire_seq(self) -> list[int]:
        return [_FIRE, _AFTER_FIRE] if self.fire else []

    def _script(
        self, idx: np.ndarray, seq: list[int], frames: np.ndarray, lives: np.ndarray
    ) -> tuple[np.ndarray, ...]:
        """Play the agent steps ``seq`` in envs ``idx`` (an env whose game ends drops out).

        Returns (raw reward gained, frames, lives, game_over, truncated, steps), per env of
        ``idx``; ``frames``/``lives`` start as the given ones and end as the last seen."""
        k = len(idx)
        frames, lives = frames.copy(), lives.copy()
        gained = np.zeros(k)
        over = np.zeros(k, dtype=bool)
        trunc = np.zeros(k, dtype=bool)
        steps = np.zeros(k, dtype=np.int64)
        active = np.arange(k)
        for action in seq:
            if not len(active):
                break
            f, r, o, t, lv, _ = _step(self.emu, idx[active], np.full(len(active), action))
            gained[active] += r
            steps[active] += 1
            frames[active], lives[active] = f, lv
            over[active] |= o
            trunc[active] |= t
            active = active[~(o | t)]
        self.scripted_steps += int(steps.sum())
        return gained, frames, lives, over, trunc, steps

    def _start_games(self, idx: np.ndarray, frames: np.ndarray, lives: np.ndarray) -> None:
        """New games in ``idx`` (emulators already reset): FIRE reset, counters, fresh stack."""
        gained, frames, lives, *_, steps = self._script(idx, self._fire_seq(), frames, lives)
        self.ep_return[idx] = gained
        self.ep_steps[idx] = 0
        self.ep_agent_steps[idx] = steps
        self.lives[idx] = lives
        self.stack[idx] = 0
        self.stack[idx, -1] = frames

    def reset(self, seeds: Sequence[int | None]) -> tuple[np.ndarray, np.ndarray]:
        idx = np.arange(self.num_envs)
        if self.in_flight.any():  # a step still running (an interrupted rollout): let it finish
            self.emu.recv(np.flatnonzero(self.in_flight))
            self.in_flight[:] = False
        frames, lives = self.emu.reset(idx, seeds)
        self._start_games(idx, frames, lives)
        return self.stack.copy(order="K"), self.lives.copy()

    def _push(self, lo: int, hi: int, frames: np.ndarray) -> None:
        """Shift the stacks of envs ``lo..hi-1`` by one frame and put ``frames`` last.

        In the pixel-major memory a shift is one move of every byte by one place (each pixel's
        frames move down a slot; the byte that crosses into the previous pixel's last slot is
        overwritten by the new frame): a contiguous move, where slicing the (n, stack, H, W) view
        would be a strided copy, an order of magnitude slower.
        """
        flat = self._pixels[lo:hi].reshape(hi - lo, -1)
        flat[:, :-1] = flat[:, 1:]  # numpy copies overlapping operands as if through a buffer
        self.stack[lo:hi, -1] = frames

    def step(self, actions: np.ndarray) -> dict[str, Any]:
        """One learner step of every env (``send`` then ``recv`` of all of them)."""
        self.send(0, self.num_envs, actions)
        return self.recv(0, self.num_envs)

    def send(self, lo: int, hi: int, actions: np.ndarray) -> None:
        """Start the learner step of envs ``lo..hi-1``; other envs can be sent or received meanwhile."""
        if self.in_flight[lo:hi].any():
            raise RuntimeError(f"envs {lo}..{hi - 1}: a step was sent before the previous one was received")
        self.emu.send(np.arange(lo, hi), np.asarray(actions))
        self.in_flight[lo:hi] = True

    def recv(self, lo: int, hi: int) -> dict[str, Any]:
        """Finish the learner step of envs ``lo..hi-1``; see the class docstring. Returns a dict
        of arrays over those envs: ``obs``, ``reward`` (raw, this learner step), ``game_over``,
        ``truncated``, ``life_lost``, ``lives``, ``final_obs`` (the learner's terminal
        observations, or None when no env ended a game or lost a life) and ``episode`` (``r``,
        ``l``, ``f`` of the games that ended, valid where ``game_over | truncated``)."""
        if not self.in_flight[lo:hi].all():
            raise RuntimeError(f"envs {lo}..{hi - 1}: recv without a step sent")
        env = slice(lo, hi)
        frames, raw, over, trunc, lives, final = self.emu.recv(np.arange(lo, hi))
        self.in_flight[env] = False
        self.ep_return[env] += raw
        self.ep_steps[env] += 1
        self.ep_agent_steps[env] += 1
        ended = over | trunc
        stack = self.stack[env]
        self._push(lo, hi, frames)
        stack[ended, -1] = final[ended]  # a finished game's terminal stack ends on its last frame
        life_lost = (lives > 0) & (lives < self.lives[env]) & ~ended
        final_obs = stack.copy(order="K") if (ended | life_lost).any() else None
        lost = np.flatnonzero(life_lost)
        if len(lost):
            seq = [_NOOP, *self._fire_seq()]
            gained, f, lv, o, t, steps = self._script(lo + lost, seq, frames[lost], lives[lost])
            self.ep_return[lo + lost] += gained
            self.ep_agent_steps[lo + lost] += steps
            frames[lost], lives[lost] = f, lv
            over[lost] |= o
            trunc[lost] |= t & ~o
            ended = over | trunc
            life_lost &= ~ended
        episode = None
        new = np.flatnonzero(ended)
        if len(new):
            episode = {
                "r": self.ep_return[env].copy(),
                "l": self.ep_steps[env].copy(),
                "f": self.ep_agent_steps[env] * self.frame_skip,
            }
            self._start_games(lo + new, frames[new], lives[new])
        if len(lost):
            restart = np.flatnonzero(life_lost)
            stack[restart] = 0
            stack[restart, -1] = frames[restart]
            self.lives[lo + restart] = lives[restart]
        keep = ~(ended | life_lost)
        self.lives[env][keep] = lives[keep]
        return {
            "obs": stack.copy(order="K"),
            "reward": raw,
            "game_over": over,
            "truncated": trunc,
            "life_lost": life_lost,
            "lives": self.lives[env].copy(),
            "final_obs": final_obs,
            "episode": episode,
        }

    def close(self) -> None:
        self.emu.close()


# --------------------------------------------------------------------------- SB3 VecEnv


class AtariVecEnv(VecEnv):
    """SB3 ``VecEnv`` over a batch of Atari games with episodic life, clipping and game scores.

    Per step and env ``i``: the learner's ``done`` is game over, frame-cap truncation, or (with
    ``episodic_life``) a lost life while the game goes on; ``infos[i]`` has ``lives``,
    ``raw_reward``, ``game_over``, ``life_lost``, ``TimeLimit.truncated``, and on done
    ``terminal_observation`` (the learner's last observation before the frame stack restarts);
    at the end of a full game ``episode = {"r": raw score, "l": learner steps, "f": emulator
    frames, "t": s}``. FIRE after a lost life and the stack restarts: see ``_AtariBatch``.

    Observations are ``(n, stack, 84, 84)`` uint8 arrays whose memory is pixel-major (the strides
    of ``np.transpose`` of an ``(n, 84, 84, stack)`` array): the values any reader expects, in
    the channels-last layout the network reads. ``np.copy`` and ``torch.as_tensor`` keep it.
    """

    def __init__(
        self,
        batch: _AtariBatch,
        game: str,
        n_actions: int,
        frame_stack: int,
        *,
        seed: int,
        episodic_life: bool,
        clip_rewards: bool,
        max_frames: int,
    ) -> None:
        self._batch: _AtariBatch | None = batch
        self.game = game
        self.episodic_life = episodic_life
        self.clip_rewards = clip_rewards
        self.max_frames = max_frames
        self.render_mode = None
        obs_space = spaces.Box(0, 255, (frame_stack, OBS_SIZE, OBS_SIZE), dtype=np.uint8)
        super().__init__(batch.num_envs, obs_space, spaces.Discrete(n_actions))
        self.seed(seed)
        self._actions: np.ndarray | None = None
        self._t0 = time.time()
        self.raw_rewards = np.zeros(batch.num_envs, dtype=np.float64)  # raw rewards of the last step

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
        self.reset_infos = [{"lives": int(x)} for x in lives]
        return obs

    def step_async(self, actions: np.ndarray) -> None:
        self._actions = self._checked_actions(actions, self.num_envs)

    def step_wait(self) -> VecEnvStepReturn:
        if self._actions is None:
            raise RuntimeError("step_wait() without step_async()")
        actions, self._actions = self._actions, None
        return self._learner_step(self._live_batch().step(actions), 0)

    def send_group(self, lo: int, hi: int, actions: np.ndarray) -> None:
        """``step_async`` for envs ``lo..hi-1`` only: their emulators start stepping at once (in
        C++ threads), so the caller can run inference for other envs meanwhile."""
        self._live_batch().send(lo, hi, self._checked_actions(actions, hi - lo))

    def recv_group(self, lo: int, hi: int) -> VecEnvStepReturn:
        """``step_wait`` for envs ``lo..hi-1`` (sent with :meth:`send_group`): their (obs,
        rewards, dones, infos), as ``step_wait`` gives them for those envs."""
        return self._learner_step(self._live_batch().recv(lo, hi), lo)

    def _checked_actions(self, actions: np.ndarray, k: int) -> np.ndarray:
        actions = np.asarray(actions)
        if actions.dtype.kind not in "iu":
            if not np.all(np.equal(np.mod(actions, 1), 0)):
                raise ValueError(f"actions must be integers, got {actions.dtype}")
        actions = actions.astype(np.int64).reshape(-1)
        if actions.shape != (k,):
            raise ValueError(f"expected {k} actions, got shape {np.shape(actions)}")
        n = int(self.action_space.n)
        if actions.min() < 0 or actions.max() >= n:
            raise ValueError(
                f"actions must lie in [0, {n}) for {self.game}, got {actions.min()}..{actions.max()}"
            )
        return actions

    def _learner_step(self, out: dict[str, Any], lo: int) -> VecEnvStepReturn:
        """The learner's view of a batch step of envs ``lo..``: dones, clipped rewards, infos."""
        raw = out["reward"]
        game_over, truncated, life_lost = out["game_over"], out["truncated"], out["life_lost"]
        game_end = game_over | truncated
        self.raw_rewards[lo : lo + len(raw)] = raw
        dones = game_end | life_lost if self.episodic_life else game_end
        rewards = (np.sign(raw) if self.clip_rewards else raw).astype(np.float32)
        lives, final, episode = out["lives"], out["final_obs"], out["episode"]
        infos: list[dict[str, Any]] = []
        now = time.time()
        for i in range(len(raw)):
            info: dict[str, Any] = {
                "lives": int(lives[i]),
                "raw_reward": float(raw[i]),
                "game_over": bool(game_over[i]),
                "life_lost": bool(life_lost[i]),
                "TimeLimit.truncated": bool(truncated[i] and not game_over[i]),
            }
            if dones[i]:
                info["terminal_observation"] = final[i]
            if game_end[i]:
                info["episode"] = {
                    "r": float(episode["r"][i]),
                    "l": int(episode["l"][i]),
                    "f": int(episode["f"][i]),
                    "t": round(now - self._t0, 6),
                }
            infos.append(info)
        return out["obs"], rewards, dones, infos

    def close(self) -> None:
        """Stop the emulators (and the C++ worker threads); safe to call twice."""
        batch, self._batch = self._batch, None
        if batch is not None:
            batch.close()

    def _live_batch(self) -> _AtariBatch:
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
    emu_cls = {"ale_vector": _AleEmulators, "gymnasium": _GymEmulators}[env.backend]
    batch = _AtariBatch(emu_cls(name, n_envs, env, cap), env.frame_stack, env.fire_reset, env.frame_skip)
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
