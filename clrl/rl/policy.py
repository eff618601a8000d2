"""The multi-head actor-critic of sequential Atari PPO and its SB3 view for one task.

:class:`ActorCritic` owns the modules that live for the whole run: the shared trunk
(:func:`clrl.nets.atari_trunk`), one actor head and one critic head per task
(:class:`clrl.nets.MultiHead`, sized by each game's minimal action set, as in the AGS-CL code)
and, optionally, the VCL betas. :class:`TaskPolicy` is the stable-baselines3 policy for ONE
task: it reads that task's heads and owns a fresh Adam over the trunk and that task's heads
only, so a finished task's heads never move again, not even through Adam's momentum
(bug 3 in the README's "Departures from the authors' code"). The runner makes a new ``TaskPolicy`` (and a new PPO object, whose
action space is the new game's) at every task switch; the modules are shared, not copied.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch
from gymnasium import spaces
from stable_baselines3.common.policies import BasePolicy
from torch import Tensor, nn
from torch.nn import functional as F

from clrl.layers import VCL
from clrl.nets import MultiHead, atari_trunk
from clrl.nets.init import POLICY_GAIN, TRUNK_GAIN, VALUE_GAIN, check_scheme, orthogonal_init_

__all__ = ["ActorCritic", "TaskPolicy", "build_actor_critic", "preprocess", "sample_actions"]


def preprocess(obs: Tensor) -> Tensor:
    """uint8 frames -> float in [0, 1] (the Nature-CNN input scaling), in channels-last layout.

    Same values, another memory layout: on CPU the convolutions' forward+backward then run about
    1.2x faster (`clrl bench ppo`'s compute bound: 1,958 -> 2,387 samples/s); the weights stay
    contiguous, so the regularizers' views of them are unaffected. A batch of one is read in the
    plain layout, whatever its strides: it gains nothing from channels-last, and the per-sample
    gradients of EWC and MAS (``torch.func.vmap`` over single samples) cannot change memory
    formats.
    """
    batch = obs.dim() == 4 and obs.shape[0] > 1
    if obs.dtype == torch.uint8:
        # the layout change on the uint8 frames (a quarter of the bytes), then one conversion
        # pass and one in-place division: same values as float -> /255 -> channels-last. Input
        # already in the target layout (the env's frames, the rollout's slots and minibatches)
        # is not copied.
        obs = obs.contiguous(memory_format=torch.channels_last) if batch else obs.contiguous()
        return obs.float().div_(255.0)
    x = obs.float() / 255.0
    return x.contiguous(memory_format=torch.channels_last) if batch else x


def sample_actions(probs: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """One action per row of ``probs`` (n, actions): ``torch.multinomial(probs, 1)``'s draw.

    For a single sample ``torch.multinomial`` is the exponential race: ``argmax(p / q)`` with
    ``q ~ Exp(1)`` drawn by ``exponential_`` from the same generator (Gumbel-max with the
    exponential applied). This is that race without its input checks (a max, a min, a row sum
    and two host reads per call): the same draws from the same generator state, bit for bit
    (``tests/test_rl_policy.py`` compares them over seeds, batch sizes and action counts), and
    no device synchronization on a GPU. What the checks caught, non-finite probabilities, is
    left to the NaN guard (:mod:`clrl.rl.runner`): they come from non-finite weights or
    activations, whose log-probabilities then make the next update's loss non-finite, and the
    guard reads the loss and the weights after every update.
    """
    race = torch.empty_like(probs).exponential_(1, generator=generator)
    return torch.div(probs, race).argmax(dim=1)


class ActorCritic(nn.Module):
    """Shared trunk + per-task actor heads (logits) and critic heads (one value).

    ``vcl`` (when enabled) holds the variance-constancy betas; its loss is added to the PPO
    loss by :class:`clrl.rl.agent.TaskPPO`.

    ``init`` (config ``model.init``, :mod:`clrl.nets.init`): ``"orthogonal"`` re-initializes the
    trunk here (gain sqrt(2)) and every head :meth:`add_task` creates, also for later tasks
    (actor 0.01, critic 1, zero biases); ``"default"`` keeps PyTorch's init everywhere.
    """

    def __init__(self, trunk: nn.Module, init: str = "default") -> None:
        super().__init__()
        self.init = check_scheme(init)
        if self.init == "orthogonal":
            orthogonal_init_(trunk, TRUNK_GAIN)
        self.trunk = trunk
        width = int(trunk.out_features)
        self.actor = MultiHead(width)
        self.critic = MultiHead(width)
        self.vcl: VCL | None = None

    # ------------------------------------------------------------------ structure

    def add_task(self, task: int, n_actions: int) -> None:
        """Create the actor head (``n_actions`` logits) and critic head of ``task``."""
        device = next(self.trunk.parameters()).device
        actor = self.actor.add_head(task, n_actions)
        critic = self.critic.add_head(task, 1)
        if self.init == "orthogonal":
            orthogonal_init_(actor, POLICY_GAIN)
            orthogonal_init_(critic, VALUE_GAIN)
        actor.to(device)
        critic.to(device)

    @property
    def tasks(self) -> list[int]:
        return self.actor.tasks

    def n_actions(self, task: int) -> int:
        return int(self.actor.heads[task].out_features)

    def enable_vcl(self, gamma: float, n: int) -> VCL:
        """Attach VCL (Littwin & Wolf 2018, eq. 17) to every Conv/Linear of the trunk."""
        shape = tuple(getattr(self.trunk, "input_shape", (4, 84, 84)))
        device = next(self.trunk.parameters()).device
        self.vcl = VCL(self.trunk, gamma, n, example_input=torch.zeros(2, *shape, device=device))
        return self.vcl

    def task_parameters(self, task: int) -> list[nn.Parameter]:
        """What task ``task`` trains: the trunk, its own two heads and the VCL betas."""
        params = [*self.trunk.parameters(), *self.actor.parameters_of(task), *self.critic.parameters_of(task)]
        if self.vcl is not None:
            params += list(self.vcl.parameters())
        return params

    # ------------------------------------------------------------------ forward

    def features(self, obs: Tensor) -> Tensor:
        return self.trunk(preprocess(obs))

    def logits(self, obs: Tensor, task: int) -> Tensor:
        """Action logits of ``task``'s actor head (the ``forward`` handed to ``end_task``)."""
        return self.actor(self.features(obs), task)

    def forward(self, obs: Tensor, task: int) -> tuple[Tensor, Tensor]:
        feats = self.features(obs)
        return self.actor(feats, task), self.critic(feats, task)

    def actor_fn(self, task: int, deterministic: bool = True, generator: torch.Generator | None = None):
        """A numpy-in, numpy-out action function for evaluation (eval mode, no grad)."""
        device = next(self.trunk.parameters()).device

        def act(obs: np.ndarray) -> np.ndarray:
            was = self.training
            self.eval()
            try:
                with torch.no_grad():
                    logits = self.logits(torch.as_tensor(obs, device=device), task)
                    if deterministic:
                        actions = logits.argmax(dim=1)
                    else:
                        actions = sample_actions(F.softmax(logits.float().cpu(), dim=1), generator)
            finally:
                self.train(was)
            return actions.cpu().numpy()

        return act


def build_actor_critic(
    channels: Sequence[int], hidden: int, activation: str | Sequence[str], in_channels: int = 4, init: str = "default"
) -> ActorCritic:
    """The Nature/AGS-CL CNN trunk with the given activation spec(s) and init scheme, no heads yet."""
    trunk = atari_trunk(channels=channels, hidden=hidden, activation=activation, in_channels=in_channels)
    return ActorCritic(trunk, init=init)


class TaskPolicy(BasePolicy):
    """The SB3 policy of one task: categorical actor and value from that task's heads.

    Constructed by SB3 (``policy_class(observation_space, action_space, lr_schedule, **kwargs)``)
    with ``net`` (the shared :class:`ActorCritic`) and ``task`` in ``policy_kwargs``. The
    optimizer is Adam over :meth:`ActorCritic.task_parameters` only.
    """

    def __init__(
        self,
        observation_space: spaces.Space,
        action_space: spaces.Space,
        lr_schedule: Callable[[float], float],
        *,
        net: ActorCritic,
        task: int,
        adam_eps: float = 1e-5,
        use_sde: bool = False,
    ) -> None:
        if use_sde:
            raise ValueError("TaskPolicy has discrete actions: gSDE does not apply")
        super().__init__(observation_space, action_space, normalize_images=False, optimizer_kwargs={"eps": adam_eps})
        if not isinstance(action_space, spaces.Discrete):
            raise ValueError(f"TaskPolicy needs a Discrete action space, got {action_space}")
        if task not in net.actor:
            raise ValueError(f"the network has no heads for task {task}; call net.add_task first")
        if net.n_actions(task) != int(action_space.n):
            raise ValueError(
                f"task {task}'s actor head has {net.n_actions(task)} outputs but the game has "
                f"{int(action_space.n)} actions"
            )
        self.net = net
        self.task = int(task)
        self.optimizer = torch.optim.Adam(net.task_parameters(task), lr=lr_schedule(1.0), eps=adam_eps)

    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        for group in self.optimizer.param_groups:
            yield from group["params"]

    def _heads(self, obs: Tensor) -> tuple[Tensor, Tensor]:
        return self.net(obs, self.task)

    def forward(self, obs: Tensor, deterministic: bool = False) -> tuple[Tensor, Tensor, Tensor]:
        """Rollout step: sampled (or argmax) actions, values (n, 1), log-probabilities."""
        logits, values = self._heads(obs)
        logp = F.log_softmax(logits, dim=1)
        if deterministic:
            actions = logp.argmax(dim=1)
        else:
            actions = sample_actions(logp.exp())
        return actions, values, logp.gather(1, actions.unsqueeze(1)).squeeze(1)

    def evaluate_actions(self, obs: Tensor, actions: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Values, log pi(a|s) and the policy entropy for a PPO minibatch."""
        logits, values = self._heads(obs)
        logp = F.log_softmax(logits, dim=1)
        entropy = -(logp.exp() * logp).sum(dim=1)
        return values, logp.gather(1, actions.long().view(-1, 1)).squeeze(1), entropy

    def predict_values(self, obs: Tensor) -> Tensor:
        return self.net.critic(self.net.features(obs), self.task)

    def _predict(self, observation: Tensor, deterministic: bool = False) -> Tensor:
        return self.forward(observation, deterministic)[0]
