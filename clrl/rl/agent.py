"""PPO glue: one stable-baselines3 PPO object per task over the shared multi-head network.

Why a PPO object per task: SB3 fixes the action space (and the rollout buffer, and the
policy's optimizer) when a model is built, and every game has its own minimal action set. A
fresh :class:`TaskPPO` per task gets the new game's action space, a policy that reads the new
task's heads, and a fresh Adam over the trunk and those heads only (bug 3 in the README's "Departures from the authors' code").

Why ``train`` is overridden: the paper's PPO (the a2c-ppo-acktr code the AGS-CL authors used)
differs from SB3's in ways the runs depend on, and clrl needs hooks into the loss:

* the value loss follows ``train.value_loss`` (:func:`value_loss`): SB3's ``mean((V' - R)^2)``
  (``V'`` the clipped value when ``clip_range_vf`` is set) or the pessimistic
  ``0.5 * mean(max((V - R)^2, (V' - R)^2))`` of OpenAI baselines / a2c-ppo-acktr, which gives
  the value function half SB3's weight at the same ``vf_coef``;
* advantages are standardized per minibatch (SB3), once over the rollout (a2c-ppo-acktr) or
  not at all, as ``train.advantage_norm`` says (:func:`normalize_rollout_advantages`);
* the VCL loss (Littwin & Wolf 2018, eq. 17) of the minibatch's own forward pass is added to
  the PPO loss, so its gradient flows through the same ``backward`` and clipping;
* gradients are clipped over the parameters this task trains (past heads hold no gradient);
* the learning rate decays linearly to 0 within each task with the paper's schedule
  ``lr * (1 - j / J)`` for update ``j`` of ``J``, which the runner sets before each update;
* the losses stay on the device until the end of the update (one synchronization per update).

Why ``collect_rollouts`` is overridden (``lean=True``, the default): SB3's loop spends its
overhead on per-step host/device round trips (values and log-probs copied back twice per env
step), re-allocating and zeroing the buffer every update, flattening copies of the whole rollout
before training and one host->device copy per minibatch. The lean loop fills a
:class:`clrl.rl.rollout.RolloutStore` (an SB3 ``RolloutBuffer``) with the same contents bit for
bit (``tests/test_rollout.py`` checks it against SB3's loop): same policy calls on the same
batches, so the same random draws; the same timeout bootstrapping with ``terminal_observation``
(SB3 issue #633), evaluated one terminal observation at a time as SB3 does but after the last
step, so no synchronization interrupts the rollout; SB3's GAE and minibatch permutations.
Per env step it makes one device->host copy (the actions the env needs) and, on a GPU, one
host->device copy (the observations inference needs); a rollout reaches the device once.
``lean=False`` is SB3's loop and buffer, for comparisons. ``train.rollout_groups`` > 1 pipelines
groups of envs (one group's inference while the others' emulators step; the same draws in the same
env order); on a 2-core machine it pays only with one inference thread (``train.rollout_threads: 1``,
training keeping its threads): ``clrl bench ppo``'s pipelined row. The default is SB3's order;
the main job's config (configs/atari_quick.yaml) pipelines.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from stable_baselines3 import PPO
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.vec_env import VecEnv
from torch import Tensor

from clrl.config import PPOConfig
from clrl.device import torch_threads
from clrl.rl.policy import ActorCritic, TaskPolicy
from clrl.rl.rollout import RolloutStore, to_host

__all__ = [
    "TaskPPO", "learning_rate_schedule", "collect_states", "value_loss", "normalize_rollout_advantages",
    "clip_grad_norm", "VALUE_LOSS_WEIGHT", "MINIBATCH_ADV_EPS", "ROLLOUT_ADV_EPS", "ROLLOUT_PHASES",
]

# weight of mean((V - R)^2) in the loss per vf_coef, without value clipping
VALUE_LOSS_WEIGHT = {"sb3": 1.0, "baselines": 0.5}
MINIBATCH_ADV_EPS = 1e-8  # SB3's PPO.train
ROLLOUT_ADV_EPS = 1e-5  # a2c-ppo-acktr's PPO.update


def value_loss(
    values: Tensor, returns: Tensor, old_values: Tensor, clip_vf: float | None, convention: str
) -> Tensor:
    """The value term that ``vf_coef`` multiplies, in SB3's or openai baselines' convention.

    ``sb3`` (``stable_baselines3.PPO.train``): ``mean((V' - R)^2)`` with ``V' = V_old +
    clip(V - V_old, -c, c)`` when ``clip_vf`` is set, else ``V' = V``. ``baselines`` (ppo2,
    a2c-ppo-acktr): ``0.5 * mean(max((V - R)^2, (V' - R)^2))``, i.e. ``0.5 * mean((V - R)^2)``
    unclipped.
    """
    if convention not in VALUE_LOSS_WEIGHT:
        raise ValueError(f"unknown value-loss convention {convention!r}; allowed: {', '.join(VALUE_LOSS_WEIGHT)}")
    if clip_vf is None:
        err = (values - returns) ** 2
    else:
        clipped = old_values + torch.clamp(values - old_values, -clip_vf, clip_vf)
        clipped_err = (clipped - returns) ** 2
        err = clipped_err if convention == "sb3" else torch.max((values - returns) ** 2, clipped_err)
    return VALUE_LOSS_WEIGHT[convention] * err.mean()


def normalize_rollout_advantages(advantages: np.ndarray) -> np.ndarray:
    """``(A - mean A) / (std A + 1e-5)`` over the whole rollout, std with Bessel's correction,
    as a2c-ppo-acktr does once before its epochs (torch's ``std`` is unbiased)."""
    a = np.asarray(advantages, dtype=np.float64)
    if a.size < 2:
        return a.astype(np.float32)
    return ((a - a.mean()) / (a.std(ddof=1) + ROLLOUT_ADV_EPS)).astype(np.float32)


@torch.no_grad()
def clip_grad_norm(params: list[Tensor], max_norm: float) -> Tensor:
    """``torch.nn.utils.clip_grad_norm_(params, max_norm)`` (L2, SB3's PPO.train) with less work.

    The same operations on the same gradients, so the same norm and gradients bit for bit
    (``tests/test_rl_policy.py`` compares them): the norm of the per-tensor norms, then the
    gradients times ``min(max_norm / (norm + 1e-6), 1)``. What torch adds around them, grouping
    the tensors by device and dtype and checking each for foreach support, and the product by 1
    this skips, cost 0.05-0.08 ms per call on the Nature CNN on this CPU when it clips and about
    0.3 ms when it does not (``scripts/bench_clip.py``). On the CPU the
    multiplication is also skipped when the factor is exactly 1 (``g * 1.0 == g`` for every
    float), the steps where the gradient is within the bound; on a GPU that test would be a
    device synchronization per step, so the product is always taken there, as torch does. The
    parameters are one policy's: one device and dtype, which torch's grouping is for.
    """
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.tensor(0.0)
    total = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads, 2.0)), 2.0)
    factor = torch.clamp(float(max_norm) / (total + 1e-6), max=1.0)
    if grads[0].device.type != "cpu" or float(factor) != 1.0:
        torch._foreach_mul_(grads, factor)
    return total

# Where a lean rollout's time goes (seconds, cumulative in TaskPPO.rollout_seconds): env steps,
# the policy's forward passes (on a GPU: their launch), buffer writes (with the observations'
# host->device copies), conversions (the actions to the host: on a GPU this waits for the
# forward pass), other (episode bookkeeping).
ROLLOUT_PHASES = ("env", "inference", "buffer", "conversions", "other")


def env_groups(n_envs: int, groups: int) -> list[tuple[int, int]]:
    """``groups`` adjacent, near-equal ranges ``(lo, hi)`` of ``n_envs`` envs (at most one per env)."""
    groups = max(1, min(int(groups), n_envs))
    edges = [n_envs * g // groups for g in range(groups + 1)]
    return list(zip(edges[:-1], edges[1:], strict=True))


def learning_rate_schedule(ppo: PPOConfig) -> Callable[[float], float]:
    """SB3 schedule of ``progress_remaining`` (1 -> 0 over a task): linear or constant."""
    lr = float(ppo.learning_rate)
    if ppo.lr_schedule == "linear":
        return lambda progress: lr * float(progress)
    return lambda progress: lr


class _NoCallback(BaseCallback):
    def _on_step(self) -> bool:
        return True


class TaskPPO(PPO):
    """SB3 PPO on one game with :class:`TaskPolicy` for task ``task`` of ``net``.

    The runner drives it one update at a time (:meth:`update`) instead of ``learn()`` so that
    evaluation, checkpoints, interrupts and the NaN guard happen between updates.
    """

    def __init__(
        self,
        env: VecEnv,
        net: ActorCritic,
        task: int,
        ppo: PPOConfig,
        device: torch.device | str = "cpu",
        *,
        lean: bool = True,
        separate_device: bool | None = None,
    ) -> None:
        batch = env.num_envs * ppo.n_steps
        if batch % ppo.n_minibatches:
            raise ValueError(f"n_envs*n_steps = {batch} is not divisible by n_minibatches = {ppo.n_minibatches}")
        super().__init__(
            TaskPolicy,
            env,
            learning_rate=learning_rate_schedule(ppo),
            n_steps=ppo.n_steps,
            batch_size=batch // ppo.n_minibatches,
            n_epochs=ppo.n_epochs,
            gamma=ppo.gamma,
            gae_lambda=ppo.gae_lambda,
            clip_range=ppo.clip_range,
            clip_range_vf=ppo.clip_range_vf,
            normalize_advantage=ppo.advantage_norm == "minibatch",
            ent_coef=ppo.ent_coef,
            vf_coef=ppo.vf_coef,
            max_grad_norm=ppo.max_grad_norm,
            policy_kwargs={"net": net, "task": int(task), "adam_eps": ppo.adam_eps},
            rollout_buffer_class=RolloutStore if lean else None,
            rollout_buffer_kwargs={"separate": separate_device} if lean else None,
            device=device,
            verbose=0,
        )
        self.lean = bool(lean)
        self.rollout_seconds = dict.fromkeys(ROLLOUT_PHASES, 0.0)
        self.net = net
        self.task = int(task)
        self.value_loss_convention = ppo.value_loss
        self.advantage_norm = ppo.advantage_norm
        self.rollout_groups = int(ppo.rollout_groups)
        self.rollout_threads = int(ppo.rollout_threads)
        self.aux_loss: Callable[[], Tensor] | None = net.vcl.loss if net.vcl is not None and net.vcl.gamma > 0 else None
        self.optimizer_steps = 0
        self.last_stats: dict[str, float] = {}
        self.finished_episodes: list[dict[str, float]] = []
        self._callback = _NoCallback()
        self._callback.init_callback(self)

    # ------------------------------------------------------------------ driving

    @property
    def batch(self) -> int:
        return self.n_envs * self.n_steps

    def reset_envs(self, seed: int | None = None) -> None:
        """(Re-)start the rollouts from fresh episodes, optionally re-seeding the envs first."""
        if seed is not None:
            self.env.seed(int(seed))
        self._last_obs = self.env.reset()
        self._last_episode_starts = np.ones((self.env.num_envs,), dtype=bool)
        if self.ep_info_buffer is None:
            from collections import deque

            self.ep_info_buffer = deque(maxlen=self._stats_window_size)
            self.ep_success_buffer = deque(maxlen=self._stats_window_size)

    def update(self, progress_remaining: float) -> dict[str, float]:
        """Collect one rollout and run one PPO update; returns the update's statistics.

        ``progress_remaining`` is ``1 - j / J`` for update ``j`` of ``J`` in this task: it sets
        the learning rate (and clip ranges) of this update.
        """
        if self._last_obs is None:
            self.reset_envs()
        self.collect_rollouts(self.env, self._callback, self.rollout_buffer, n_rollout_steps=self.n_steps)
        self._current_progress_remaining = float(progress_remaining)
        self.train()
        return self.last_stats

    # ------------------------------------------------------------------ the lean rollout

    def collect_rollouts(self, env: VecEnv, callback: BaseCallback, rollout_buffer, n_rollout_steps: int) -> bool:
        """SB3's ``collect_rollouts`` with the same buffer contents and fewer per-step costs.

        With ``rollout_groups`` G > 1 (and an env that can step a group of its envs while the
        others wait, :meth:`clrl.rl.envs.AtariVecEnv.send_group`), the envs are split into G
        adjacent groups and pipelined: inference for one group runs while the emulators of the
        others step in their C++ threads. Each env still gets exactly one policy call per step on
        its own observation and the groups sample in env order, so the rollout is the same chain
        with the same draws as G = 1 (SB3's order); only the inference batches are smaller, which
        may change float rounding (on this CPU it does not: the main job's R is the same with 1 or
        2 groups). ``rollout_threads`` sets torch's threads for the rollout alone (one inference
        thread leaves a core to the emulators; a rollout step's batch is too small to gain from
        more). Falls back to SB3's loop when the buffer is not a :class:`RolloutStore`
        (``lean=False``).
        """
        with torch_threads(self.rollout_threads):  # inference only: training keeps its threads
            return self._collect(env, callback, rollout_buffer, n_rollout_steps)

    def _collect(self, env: VecEnv, callback: BaseCallback, rollout_buffer, n_rollout_steps: int) -> bool:
        if not isinstance(rollout_buffer, RolloutStore) or self.use_sde:
            return super().collect_rollouts(env, callback, rollout_buffer, n_rollout_steps)
        assert self._last_obs is not None, "No previous observation was provided"
        self.policy.set_training_mode(False)
        buf = rollout_buffer
        spent = self.rollout_seconds
        clock = time.perf_counter
        t0 = clock()
        buf.reset()
        callback.on_rollout_start()
        groups = env_groups(env.num_envs, self.rollout_groups if hasattr(env, "send_group") else 1)
        if len(groups) > 1:
            send, recv = env.send_group, env.recv_group
        else:  # SB3's order: one ``env.step`` per step (what SB3's loop calls, wrappers included)
            pending: list[np.ndarray] = []

            def send(lo: int, hi: int, actions: np.ndarray) -> None:
                pending.append(actions)

            def recv(lo: int, hi: int) -> Any:
                return env.step(pending.pop())
        bootstrap: list[tuple[int, int]] = []  # (step, env) of timeouts, SB3 issue #633
        terminal_obs: list[np.ndarray] = []
        # the latest observations: with one group the env's fresh batch each step (no copy); with
        # several, one array whose group slices are overwritten as the groups come back
        current = self._last_obs if len(groups) == 1 else np.array(self._last_obs)
        starts = np.array(self._last_episode_starts, dtype=bool)
        sent: dict[int, tuple[int, np.ndarray]] = {}  # group -> (step, actions) in flight
        spent["buffer"] += clock() - t0

        def infer_and_send(g: int, step: int) -> None:
            lo, hi = groups[g]
            t1 = clock()
            obs = buf.put_obs(step, current[lo:hi], slice(lo, hi))
            t2 = clock()
            with torch.no_grad():
                actions, values, log_probs = self.policy(obs)
            buf.put_policy(step, values, log_probs, slice(lo, hi))
            t3 = clock()
            actions_np = to_host(actions)  # the one synchronization per env step
            t4 = clock()
            send(lo, hi, actions_np)
            sent[g] = (step, actions_np)
            spent["buffer"] += t2 - t1
            spent["inference"] += t3 - t2
            spent["conversions"] += t4 - t3
            spent["env"] += clock() - t4

        def receive(g: int) -> bool:
            nonlocal current
            lo, hi = groups[g]
            step, actions_np = sent.pop(g)
            t4 = clock()
            new_obs, rewards, dones, infos = recv(lo, hi)
            t5 = clock()
            self.num_timesteps += hi - lo
            callback.update_locals(locals())
            if not callback.on_step():
                return False
            self._update_info_buffer(infos, dones)
            if dones.any():
                for k in np.flatnonzero(dones):
                    info = infos[k]
                    if info.get("terminal_observation") is not None and info.get("TimeLimit.truncated", False):
                        bootstrap.append((step, lo + int(k)))
                        terminal_obs.append(np.array(info["terminal_observation"]))
            t6 = clock()
            buf.put_step(step, actions_np, rewards, starts[lo:hi], slice(lo, hi))
            if len(groups) == 1:
                current = new_obs
            else:
                current[lo:hi] = new_obs
            starts[lo:hi] = dones
            spent["env"] += t5 - t4
            spent["other"] += t6 - t5
            spent["buffer"] += clock() - t6
            return True

        # group g's step t is sent once its step t-1 is back; after sending it, the next group's
        # step is received, so one group's inference runs while the others' emulators step
        for step in range(n_rollout_steps):
            for g in range(len(groups)):
                infer_and_send(g, step)
                nxt = (g + 1) % len(groups)
                if nxt in sent and not receive(nxt):
                    self._drain(recv, groups, sent)
                    return False
        for g in range(len(groups)):
            if g in sent and not receive(g):
                self._drain(recv, groups, sent)
                return False
        self._last_obs = current
        self._last_episode_starts = starts
        t1 = clock()
        with torch.no_grad():
            last_values = self.policy.predict_values(buf.obs_to_device(current))
            extra = None
            if terminal_obs:  # one at a time, as SB3 evaluates them (a batch of 1 each)
                extra = torch.cat([
                    self.gamma * self.policy.predict_values(buf.obs_to_device(o[None]))[0] for o in terminal_obs
                ])
        t2 = clock()
        spent["inference"] += t2 - t1
        buf.finish(last_values, starts, bootstrap, extra)
        callback.update_locals(locals())
        callback.on_rollout_end()
        spent["buffer"] += clock() - t2
        return True

    @staticmethod
    def _drain(recv: Callable[[int, int], Any], groups: list[tuple[int, int]], sent: dict) -> None:
        """Wait for the groups still stepping (a callback stopped the rollout)."""
        for g in list(sent):
            recv(*groups[g])
            del sent[g]

    def _update_info_buffer(self, infos: list[dict[str, Any]], dones: np.ndarray | None = None) -> None:
        super()._update_info_buffer(infos, dones)
        for info in infos:
            episode = info.get("episode")
            if episode is not None:
                self.finished_episodes.append({"r": float(episode["r"]), "l": float(episode["l"])})

    def drain_episodes(self) -> list[dict[str, float]]:
        """Episodes (raw full-game score ``r``, length ``l``) finished since the last call."""
        out, self.finished_episodes = self.finished_episodes, []
        return out

    # ------------------------------------------------------------------ the PPO update

    def train(self) -> None:
        """One PPO update (clipped surrogate, eq. 7 of Schulman et al. 2017) on the buffer."""
        self.policy.set_training_mode(True)
        optimizer = self.policy.optimizer
        for group in optimizer.param_groups:
            group["lr"] = float(self.lr_schedule(self._current_progress_remaining))
        clip = float(self.clip_range(self._current_progress_remaining))
        clip_vf = float(self.clip_range_vf(self._current_progress_remaining)) if self.clip_range_vf is not None else None
        params = list(self.policy.trainable_parameters())
        sums: dict[str, Tensor] = {}
        count = 0

        def add(key: str, value: Tensor) -> None:
            value = value.detach()
            sums[key] = sums[key] + value if key in sums else value.clone()

        buf = self.rollout_buffer
        if self.advantage_norm == "rollout":
            # once, before the epochs (and before RolloutStore.epochs copies them to the
            # device); the returns were computed before and are unchanged
            buf.advantages[...] = normalize_rollout_advantages(buf.advantages)
        epochs = buf.epochs(self.batch_size, self.n_epochs) if isinstance(buf, RolloutStore) else None
        for epoch in range(self.n_epochs):
            for data in epochs[epoch] if epochs is not None else buf.get(self.batch_size):
                actions = data.actions.long().flatten()
                values, log_prob, entropy = self.policy.evaluate_actions(data.observations, actions)
                values = values.flatten()
                adv = data.advantages
                if self.advantage_norm == "minibatch" and adv.numel() > 1:
                    adv = (adv - adv.mean()) / (adv.std() + MINIBATCH_ADV_EPS)
                log_ratio = log_prob - data.old_log_prob
                ratio = torch.exp(log_ratio)
                policy_loss = -torch.min(adv * ratio, adv * torch.clamp(ratio, 1 - clip, 1 + clip)).mean()
                v_loss = value_loss(values, data.returns, data.old_values, clip_vf, self.value_loss_convention)
                entropy_mean = entropy.mean()
                loss = policy_loss - self.ent_coef * entropy_mean + self.vf_coef * v_loss
                if self.aux_loss is not None:
                    aux = self.aux_loss()
                    loss = loss + aux
                    add("vcl_loss", aux)

                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                grad_norm = clip_grad_norm(params, self.max_grad_norm)
                optimizer.step()
                self.optimizer_steps += 1

                add("policy_loss", policy_loss)
                add("value_loss", v_loss)
                add("entropy", entropy_mean)
                add("loss", loss)
                add("grad_norm", grad_norm)
                with torch.no_grad():
                    add("approx_kl", ((ratio - 1) - log_ratio).mean())
                    add("clip_fraction", ((ratio - 1).abs() > clip).float().mean())
                count += 1
            self._n_updates += 1

        means = torch.stack(list(sums.values())) / max(count, 1)
        stats = dict(zip(sums.keys(), means.float().cpu().tolist(), strict=True))
        var_y = float(np.var(buf.returns))
        stats["explained_variance"] = float("nan") if var_y == 0 else float(1 - np.var(buf.returns - buf.values) / var_y)
        stats["learning_rate"] = float(optimizer.param_groups[0]["lr"])
        stats["clip_range"] = clip
        self.last_stats = stats


@torch.no_grad()
def collect_states(model: TaskPPO, n: int, batch_size: int = 256) -> list[Tensor]:
    """``n`` states the trained policy visits on its game, as uint8 batches on the device.

    This is what AGS-CL's Omega, EWC's Fisher and MAS's importance are estimated from at the end
    of a task (2,560 states in the AGS-CL code). Actions are sampled as in training; the steps
    are not training steps and are not counted.
    """
    if model._last_obs is None:
        model.reset_envs()
    model.policy.set_training_mode(False)
    env = model.env
    chunks: list[np.ndarray] = []
    have = 0
    obs = model._last_obs
    while have < n:
        chunks.append(np.asarray(obs).copy())
        have += len(chunks[-1])
        actions, _, _ = model.policy(torch.as_tensor(obs, device=model.device))
        obs, _, _, _ = env.step(actions.cpu().numpy())
    model._last_obs = obs
    states = torch.from_numpy(np.concatenate(chunks)[:n]).to(model.device)
    return list(states.split(batch_size))
