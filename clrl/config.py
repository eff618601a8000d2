"""Typed, validated experiment configs read from YAML.

One YAML file describes one experiment (DESIGN.md, "Configs"). Top-level keys:
``name, kind, seed, device, reference, tasks, model, regularizer, train, eval, output``.
``kind`` (``rl`` or ``supervised``) picks the shape of ``tasks``, ``model``, ``train`` and
``eval``; ``regularizer.name`` picks the regularizer's hyperparameters.

Every mistake is reported with the file, the dotted key path, what was given and what is
allowed, and for a misspelled key the closest valid one::

    configs/x.yaml: regularizer.lamda: unknown key (did you mean 'lamb'?); allowed: name, mu, ...

``--set dotted.key=value`` overrides go through the same validation; values are parsed as
YAML (``--set 'tasks.games=[Boxing,Pong]'``, ``--set train.learning_rate=1e-3``).
"""

from __future__ import annotations

import difflib
import os
import re
import types
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from clrl.errors import ConfigError, short_repr

FLOAT32_MAX = 3.4028234663852886e38  # numpy.finfo(numpy.float32).max


def _scalar_types(annotation: Any) -> tuple:
    """The plain types a field annotation allows (``float | None`` -> (float, NoneType))."""
    if get_origin(annotation) in (Union, types.UnionType):
        return get_args(annotation)
    return (annotation,)


class Strict(BaseModel):
    """Base for every config section: unknown keys are errors, assignments re-validate.

    Numbers must be finite (no ``.inf``/``.nan``), within float32's range (the tensors they
    scale are float32), and numbers, not ``true``/``false`` (YAML booleans would pass as 1/0).
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False, allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _no_bool_for_numbers(cls, data: Any) -> Any:
        """A YAML true/false given to a number field is handed on as the text 'true'/'false', so
        that the field's own error names the key (pydantic would take it as 1/0)."""
        if not isinstance(data, dict):
            return data
        out = dict(data)
        for key, value in data.items():
            field = cls.model_fields.get(key) if isinstance(key, str) else None
            if isinstance(value, bool) and field is not None:
                allowed = _scalar_types(field.annotation)
                if bool not in allowed and (int in allowed or float in allowed):
                    out[key] = str(value).lower()
        return out

    @field_validator("*", mode="after")
    @classmethod
    def _float32_range(cls, value: Any, info: ValidationInfo) -> Any:
        if isinstance(value, float) and abs(value) > FLOAT32_MAX:
            raise ValueError(f"beyond float32's range ({FLOAT32_MAX:.3g}): the float32 tensors it scales would be inf")
        return value


# --------------------------------------------------------------------------- regularizers


class NoRegularizer(Strict):
    """Fine-tuning: no regularizer (the baseline every other method is compared to)."""

    name: Literal["none"] = "none"


class EWCConfig(Strict):
    """Elastic weight consolidation (Kirkpatrick et al. 2017), diagonal Fisher."""

    name: Literal["ewc"]
    lamb: float = Field(5000.0, ge=0, description="penalty weight lambda in lambda/2 * sum F (theta - theta*)^2")
    mode: Literal["separate", "online"] = "separate"
    gamma: float = Field(1.0, ge=0, le=1, description="online mode: decay of the old Fisher")
    fisher: Literal["true", "empirical"] = "true"
    include_heads: bool = False
    max_samples: int = Field(2560, ge=1, description="samples used to estimate the Fisher")
    penalty_clipped: bool = Field(
        False, description="add the penalty gradient before gradient clipping (the AGS-CL code) instead of after"
    )


class MASConfig(Strict):
    """Memory aware synapses (Aljundi et al. 2018)."""

    name: Literal["mas"]
    lamb: float = Field(10.0, ge=0)
    norm: Literal["squared", "l2"] = "squared"
    accumulate: Literal["sum", "mean"] = "sum"
    include_heads: bool = False
    max_samples: int = Field(2560, ge=1)
    penalty_clipped: bool = Field(
        False, description="add the penalty gradient before gradient clipping (the AGS-CL code) instead of after"
    )


class AGSCLConfig(Strict):
    """Adaptive group sparsity based continual learning (Jung et al. 2020), eq. (2)."""

    name: Literal["agscl"]
    mu: float = Field(0.1, ge=0, description="group-lasso weight on unimportant nodes")
    lamb: float = Field(100.0, ge=0, description="weight of the importance-scaled group penalty")
    rho: float = Field(1.0, ge=0, le=1, description="probability of re-initializing an unimportant node (I.2)")
    eta: float = Field(0.9, gt=0, le=1, description="decay of accumulated importance Omega (eq. 8), 0 < eta <= 1")
    prox_every: int | None = Field(
        None, ge=1, description="optimizer steps between proximal steps; default: one PPO epoch / one epoch"
    )


RegularizerConfig = Annotated[
    NoRegularizer | EWCConfig | MASConfig | AGSCLConfig, Field(discriminator="name")
]

# --------------------------------------------------------------------------- shared pieces


class VCLConfig(Strict):
    """Variance-constancy loss on pre-activations (Littwin & Wolf 2018); gamma 0 switches it off."""

    gamma: float = Field(0.0, ge=0)
    n: int = Field(5, ge=1, description="samples in each of the two disjoint subsets")


class OutputConfig(Strict):
    dir: str = Field("runs", description="parent folder of run directories")
    tensorboard: bool = True
    figures: bool = True
    checkpoint_every_minutes: float = Field(5.0, gt=0)
    progress: bool = True


def _check_activation(spec: str | list[str]) -> str | list[str]:
    try:
        from clrl.layers import build_activation
    except ImportError:  # layer library not importable: validated when the net is built
        return spec
    for one in [spec] if isinstance(spec, str) else spec:
        build_activation(one)
    return spec


# --------------------------------------------------------------------------- RL


class RLTasks(Strict):
    games: list[str] = Field(min_length=1, description="ALE game names in training order (`clrl games`)")
    steps_per_task: int = Field(ge=1, description="environment steps (agent steps, not frames) per game")

    @field_validator("games")
    @classmethod
    def _known_games(cls, games: list[str]) -> list[str]:
        from clrl.rl.games import resolve_game

        resolved = [resolve_game(g) for g in games]
        twice = sorted({g for g in resolved if resolved.count(g) > 1})
        if twice:
            raise ValueError(f"{', '.join(twice)} given more than once; tasks are named by their game, so each must differ")
        return resolved


class RLModel(Strict):
    channels: list[Annotated[int, Field(ge=1)]] = Field([32, 64, 64], min_length=3, max_length=3)
    hidden: int = Field(512, ge=1)
    activation: str | list[str] = "relu"
    init: Literal["orthogonal", "default"] = Field(
        "orthogonal",
        description="orthogonal: PPO's init (SB3, CleanRL, openai baselines): gain sqrt(2) trunk, 0.01 policy "
        "heads, 1 value heads, zero biases, also for later tasks' heads; default: PyTorch's (the AGS-CL code's)",
    )

    _activation = field_validator("activation")(lambda cls, v: _check_activation(v))


class EnvConfig(Strict):
    """Atari preprocessing; defaults are the AGS-CL paper's (`<Game>NoFrameskip-v4` semantics)."""

    backend: Literal["ale_vector", "gymnasium"] = "ale_vector"
    sticky_actions: float = Field(0.0, ge=0, le=1, description="repeat_action_probability")
    full_action_space: bool = False
    noop_max: int = Field(30, ge=0)
    frame_skip: int = Field(4, ge=1)
    frame_stack: int = Field(4, ge=1)
    episodic_life: bool = True
    clip_rewards: bool = True
    fire_reset: bool = True
    max_frames_per_episode: int = Field(108_000, ge=1)
    num_threads: int = Field(
        0, ge=0, description="kept for old configs: every env now has its own C++ worker thread (FIRE after a lost life needs per-env stepping)"
    )
    emulator_nice: int = Field(
        10, ge=0, le=19, description="the envs' C++ worker threads run this many nice levels below the learner "
        "(Linux; clrl.rl.priority): with fewer cores than envs the learner's inference then never waits behind "
        "emulators, which fill the remaining core time; 0 = same priority. Changes only timing, never results"
    )


class PPOConfig(Strict):
    """PPO settings; every one the paper's runs use is reachable (configs/atari_paper_*.yaml set them)."""

    n_envs: int = Field(8, ge=1)
    n_steps: int = Field(128, ge=1, description="rollout length per env")
    n_epochs: int = Field(4, ge=1)
    n_minibatches: int = Field(4, ge=1)
    learning_rate: float = Field(2.5e-4, gt=0)
    lr_schedule: Literal["constant", "linear"] = Field("linear", description="linear: decays to 0 within each task")
    adam_eps: float = Field(1e-5, gt=0)
    clip_range: float = Field(0.1, gt=0)
    clip_range_vf: float | None = Field(None, gt=0)
    vf_coef: float = Field(0.5, ge=0)
    ent_coef: float = Field(0.01, ge=0)
    gamma: float = Field(0.99, ge=0, le=1)
    gae_lambda: float = Field(0.95, ge=0, le=1)
    max_grad_norm: float = Field(0.5, gt=0)
    value_loss: Literal["sb3", "baselines"] = Field(
        "sb3",
        description="sb3: vf_coef * mean((V' - R)^2), V' the clipped value when clip_range_vf is set; "
        "baselines (openai baselines / a2c-ppo-acktr, the AGS-CL code): vf_coef * 0.5 * mean(max((V - R)^2, "
        "(V' - R)^2)), i.e. half the weight",
    )
    advantage_norm: Literal["minibatch", "rollout", "none"] = Field(
        "minibatch",
        description="standardize advantages per minibatch (SB3, eps 1e-8), once over the whole rollout "
        "(a2c-ppo-acktr, eps 1e-5) or not at all",
    )
    normalize_advantage: bool | None = Field(
        None, description="older spelling, still read: false = advantage_norm none; merged into advantage_norm "
        "when a config is read (then null)"
    )
    rollout_groups: int = Field(
        1, ge=1, description="rollouts step the envs in this many groups, inference for one group running while "
        "the others' emulators step (clrl.rl.agent.TaskPPO.collect_rollouts); 1 = SB3's order: all envs, then "
        "the network. The sampling draws come in the same env order either way (on the CPU here the rollout is the "
        "same bit for bit; smaller inference batches may round differently elsewhere). On 2 cores "
        "2 groups pay only with one inference thread (rollout_threads 1; clrl bench ppo)"
    )
    rollout_threads: int = Field(
        0, ge=0, description="torch CPU threads while collecting rollouts and playing evaluation games (small-"
        "batch inference between emulator steps), training keeping torch_threads; 0 = the same as training. 1 with rollout_groups 2 frees a core for "
        "the emulators: 1.05x faster on the small trunk on 2 cores (clrl bench ppo --net quick)"
    )
    consolidation_samples: int = Field(2560, ge=1, description="states of the trained policy used by end_task")
    vcl: VCLConfig = VCLConfig()
    deterministic: bool = Field(
        False,
        description="bit-identical CPU resume: checkpoints only every checkpoint_every_updates PPO updates, "
        "where the training envs are re-seeded and reset (in every run, interrupted or not), torch "
        "threads pinned; output.checkpoint_every_minutes is then not used",
    )
    checkpoint_every_updates: int = Field(
        50, ge=1, description="deterministic mode: PPO updates between checkpoints (and env re-seeds)"
    )
    torch_threads: int = Field(
        0, ge=0, description="torch intra-op CPU threads; 0 = torch's default (one per core). 1 is often "
        "faster on a busy or small machine, where torch's threads and the emulator threads compete"
    )

    @model_validator(mode="before")
    @classmethod
    def _advantage_keys(cls, data: Any) -> Any:
        """Reconcile ``normalize_advantage`` (older key) with ``advantage_norm``.

        Only ``normalize_advantage`` given (an older config): ``true`` is ``minibatch`` (what
        it meant), ``false`` is ``none``; both given and contradicting: an error. The older key
        is then cleared, so ``advantage_norm`` alone says what happens and a dumped config (or
        an assignment to ``advantage_norm``) never contradicts it.
        """
        if not isinstance(data, dict):
            return data
        flag, scope = data.get("normalize_advantage"), data.get("advantage_norm")
        if (flag is not None and not isinstance(flag, bool)) or scope not in (None, "minibatch", "rollout", "none"):
            return data  # wrong types and values are reported by the field validation
        if scope is None:
            scope = "minibatch" if flag in (None, True) else "none"
        elif flag is not None and flag != (scope != "none"):
            raise ValueError(
                f"normalize_advantage: {str(flag).lower()} contradicts advantage_norm: {scope}; "
                "give advantage_norm only (normalize_advantage is the older spelling)"
            )
        return {**data, "advantage_norm": scope, "normalize_advantage": None}

    @model_validator(mode="after")
    def _minibatches_divide(self) -> PPOConfig:
        batch = self.n_envs * self.n_steps
        if batch % self.n_minibatches:
            raise ValueError(
                f"n_envs*n_steps = {batch} is not divisible by n_minibatches = {self.n_minibatches}"
            )
        if batch // self.n_minibatches < 2:  # SB3 asserts it at the task's start, after the run began
            raise ValueError(
                f"minibatches of n_envs*n_steps/n_minibatches = {self.n_envs}*{self.n_steps}/{self.n_minibatches} = "
                f"{batch // self.n_minibatches} sample; PPO needs at least 2 (advantage normalization takes their std)"
            )
        if self.vcl.gamma > 0 and batch // self.n_minibatches < 2 * self.vcl.n:
            raise ValueError(
                f"vcl.n = {self.vcl.n} needs minibatches of at least 2n = {2 * self.vcl.n} samples; "
                f"n_envs*n_steps/n_minibatches is {batch // self.n_minibatches}"
            )
        return self


class RLEval(Strict):
    every_steps: int = Field(50_000, ge=1, description="env steps between evaluations of all seen games")
    episodes: int = Field(10, ge=1, description="finished games averaged per evaluation")
    n_envs: int = Field(10, ge=1)
    deterministic: bool = Field(True, description="argmax actions")
    max_frames: int = Field(27_000, ge=1, description="frame cap per evaluation game")
    baseline: bool = Field(
        False, description="before training, score every game with the untrained network (results.baseline)"
    )
    analysis: bool = Field(True, description="representation analysis of every seen game at every evaluation")
    analysis_tau: float = Field(0.025, ge=0, description="ReDo's tau: a unit is dormant below tau x the layer mean")
    analysis_probes: int = Field(256, ge=2, description="probe states kept per game at its end")
    analysis_every: int = Field(1, ge=1, description="analyse every k-th evaluation point (task ends always)")


class RLConfig(Strict):
    name: str
    kind: Literal["rl"]
    seed: int = Field(0, ge=0, lt=2**32, description="numpy seeds are 32-bit unsigned")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    reference: str | None = Field(None, description="run directory of a fine-tuning run for normalized scores")
    tasks: RLTasks
    model: RLModel = RLModel()
    regularizer: RegularizerConfig = NoRegularizer()
    train: PPOConfig = PPOConfig()
    env: EnvConfig = EnvConfig()
    eval: RLEval = RLEval()
    output: OutputConfig = OutputConfig()

    _name = field_validator("name")(lambda cls, v: _check_name(v))


# --------------------------------------------------------------------------- supervised

DATASETS = ("split_digits", "split_cifar100", "cifar10_100", "single_pass_cifar100")


class SupervisedTasks(Strict):
    dataset: Literal["split_digits", "split_cifar100", "cifar10_100", "single_pass_cifar100"]
    root: str | None = Field(None, description="folder holding cifar-10-batches-py / cifar-100-python")
    n_tasks: int | None = Field(None, ge=1, description="default: the benchmark's (5, 10, 11, 20)")
    shuffle_classes: bool = True
    class_split: Literal["auto", "blocks", "random"] = Field(
        "auto",
        description="how classes form tasks: 'blocks' = fixed blocks of consecutive class ids whose order the "
        "seed shuffles (the AGS-CL/UCL code's Split CIFAR-100); 'random' = chunks of a seeded class permutation; "
        "'auto' = blocks for the CIFAR benchmarks, random for split_digits",
    )
    validation: float = Field(0.1, ge=0, lt=1)
    test_fraction: float = Field(0.3, gt=0, lt=1, description="split_digits only: held-out share")

    @model_validator(mode="after")
    def _root_for_cifar(self) -> SupervisedTasks:
        if self.dataset != "split_digits" and not self.root:
            raise ValueError(f"dataset {self.dataset!r} needs tasks.root: the folder holding the CIFAR data")
        return self


class SupervisedModel(Strict):
    net: Literal["auto", "digits", "cifar", "single_pass"] = "auto"
    hidden: list[Annotated[int, Field(ge=1)]] = Field([128, 128], min_length=1, description="digits MLP widths")
    activation: str | list[str] = "relu"
    dropout: bool = True

    _activation = field_validator("activation")(lambda cls, v: _check_activation(v))


class SupervisedTrain(Strict):
    regime: Literal["offline", "single_pass"] = Field(
        "offline", description="offline: epochs with validation; single_pass: one pass with reservoir replay"
    )
    epochs: int = Field(100, ge=1, description="offline regime: maximum epochs per task")
    batch_size: int = Field(256, ge=1)
    optimizer: Literal["adam", "sgd"] = "adam"
    learning_rate: float = Field(1e-3, gt=0)
    momentum: float = Field(0.0, ge=0, lt=1)
    lr_patience: int = Field(5, ge=1, description="epochs without validation gain before lr /= lr_factor")
    lr_factor: float = Field(3.0, gt=1)
    reset_optimizer_on_lr_drop: bool = Field(
        False,
        description="at each lr drop start the optimizer's state (Adam's moments) afresh, as the AGS-CL/HAT "
        "code does by building a new optimizer; false keeps it",
    )
    min_lr: float = Field(1e-6, ge=0)
    early_stop: int | None = Field(None, ge=1, description="stop a task after this many lr drops")
    buffer_size: int = Field(0, ge=0, description="reservoir replay buffer size M (single-pass)")
    replay_batch: int = Field(20, ge=1)
    vcl: VCLConfig = VCLConfig()
    consolidation_samples: int | None = Field(
        None, ge=1, description="training examples of a finished task handed to the regularizer's end_task; null = all"
    )
    deterministic: bool = False

    @model_validator(mode="after")
    def _buffer_needs_single_pass(self) -> SupervisedTrain:
        if self.buffer_size > 0 and self.regime != "single_pass":
            raise ValueError(
                f"buffer_size = {self.buffer_size}: the reservoir replays only in the single-pass regime, the "
                f"{self.regime} regime would ignore it; set regime: single_pass, or buffer_size: 0"
            )
        return self

    @model_validator(mode="after")
    def _vcl_fits_batch(self) -> SupervisedTrain:
        if self.vcl.gamma > 0 and self.batch_size < 2 * self.vcl.n:
            raise ValueError(
                f"vcl.n = {self.vcl.n} needs batches of at least 2n = {2 * self.vcl.n} examples; batch_size is {self.batch_size}"
            )
        return self


class SupervisedEval(Strict):
    batch_size: int = Field(1000, ge=1)
    fwt_baseline: bool = Field(True, description="score a randomly initialized model on every task for FWT")
    every_epochs: int = Field(
        1, ge=0, description="offline regime: a curve point (test accuracy of the seen tasks) every this many epochs; 0 = task ends only"
    )
    analysis: bool = Field(True, description="representation analysis of every seen task at every evaluation")
    analysis_tau: float = Field(0.025, ge=0, description="ReDo's tau: a unit is dormant below tau x the layer mean")
    analysis_probes: int = Field(256, ge=2, description="test images kept per task as its probe set")
    analysis_every: int = Field(1, ge=1, description="analyse every k-th evaluation point (task ends always)")


class SupervisedConfig(Strict):
    name: str
    kind: Literal["supervised"]
    seed: int = Field(0, ge=0, lt=2**32, description="numpy seeds are 32-bit unsigned")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    reference: str | None = None
    tasks: SupervisedTasks
    model: SupervisedModel = SupervisedModel()
    regularizer: RegularizerConfig = NoRegularizer()
    train: SupervisedTrain = SupervisedTrain()
    eval: SupervisedEval = SupervisedEval()
    output: OutputConfig = OutputConfig()

    _name = field_validator("name")(lambda cls, v: _check_name(v))


Config = Annotated[RLConfig | SupervisedConfig, Field(discriminator="kind")]
CONFIG_CLASSES: dict[str, type[Strict]] = {"rl": RLConfig, "supervised": SupervisedConfig}
REGULARIZER_CLASSES: dict[str, type[Strict]] = {
    "none": NoRegularizer,
    "ewc": EWCConfig,
    "mas": MASConfig,
    "agscl": AGSCLConfig,
}


def _check_name(name: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._+=-]*", name):
        raise ValueError("must be letters, digits and . _ - + = (it names the run folder)")
    return name


# --------------------------------------------------------------------------- loading


MAX_YAML_NODES = 100_000  # values after alias expansion; a config holds a few hundred


class SafeLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses duplicate keys and bounds alias expansion.

    A duplicate key would silently win over the first; aliases to aliases (a "billion laughs"
    file of a few hundred bytes) would expand to more values than memory holds downstream.
    """

    def compose_document(self) -> yaml.Node:
        node = super().compose_document()
        _expanded_size(node, {}, set())
        return node

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, yaml.Node] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge" or not isinstance(key_node, yaml.ScalarNode):
                    continue
                key = self.construct_object(key_node)
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        "while constructing a mapping", node.start_mark,
                        f"duplicate key {short_repr(key)} (first given on line {seen[key].start_mark.line + 1})",
                        key_node.start_mark,
                    )
                seen[key] = key_node
        return super().construct_mapping(node, deep=deep)


def _expanded_size(node: yaml.Node, memo: dict[int, int], open_: set[int]) -> int:
    """Values ``node`` stands for with every alias expanded; refuses more than MAX_YAML_NODES."""
    key = id(node)
    if key in memo:
        return memo[key]
    if key in open_:
        raise yaml.YAMLError("an alias refers to a value that contains it (a recursive structure)")
    open_.add(key)
    size = 1
    if isinstance(node, yaml.SequenceNode):
        size += sum(_expanded_size(child, memo, open_) for child in node.value)
    elif isinstance(node, yaml.MappingNode):
        size += sum(_expanded_size(k, memo, open_) + _expanded_size(v, memo, open_) for k, v in node.value)
    open_.discard(key)
    if size > MAX_YAML_NODES:
        raise yaml.YAMLError(
            f"aliases expand to more than {MAX_YAML_NODES:,} values (an alias bomb?); write the values out"
        )
    memo[key] = size
    return size


def load_yaml(text: str) -> Any:
    """``yaml.safe_load`` with :class:`SafeLoader`'s limits (duplicate keys, alias expansion)."""
    try:
        return yaml.load(text, Loader=SafeLoader)  # noqa: S506 - SafeLoader subclasses yaml.SafeLoader
    except RecursionError:
        raise yaml.YAMLError("values nested too deeply") from None


def read_yaml_mapping(path: str | os.PathLike, what: str = "config file") -> dict:
    """A YAML file's top-level mapping, read with :func:`load_yaml`; errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: {what} not found")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not a UTF-8 text file (byte {exc.start}: {exc.reason}); is it a YAML {what}?") from exc
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the {what} ({exc.strerror or exc})") from exc
    try:
        data = load_yaml(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {_one_line(exc)}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of keys at the top level, got {type(data).__name__}")
    return data


def load_config(path: str | os.PathLike, overrides: list[str] | None = None) -> RLConfig | SupervisedConfig:
    """Read a YAML config, apply ``--set`` overrides, validate; errors name the file and key."""
    return config_from_dict(read_yaml_mapping(path), source=str(path), overrides=overrides)


# Keys added after run directories were written, with the behaviour runs had before each key
# existed (where the new default differs). A run's saved config.yaml is the fully resolved
# config, so one that lacks such a key was written by an older clrl: resuming it keeps the old
# behaviour instead of switching the loss or the later tasks' head init in mid-run.
LEGACY_DEFAULTS: dict[str, dict[tuple[str, str], Any]] = {
    "rl": {("model", "init"): "default", ("train", "value_loss"): "baselines"},
}


def load_saved_config(path: str | os.PathLike) -> RLConfig | SupervisedConfig:
    """A run directory's saved config (for resume): :data:`LEGACY_DEFAULTS` fill missing keys."""
    data = read_yaml_mapping(path, "saved config")
    for (section, key), value in LEGACY_DEFAULTS.get(str(data.get("kind")), {}).items():
        node = data.get(section)
        if node is None:
            node = data[section] = {}
        if isinstance(node, dict) and key not in node:
            node[key] = value
    return config_from_dict(data, source=str(path))


def config_from_dict(
    data: Any, source: str = "<config>", overrides: list[str] | None = None
) -> RLConfig | SupervisedConfig:
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping of keys at the top level, got {type(data).__name__}")
    if overrides:
        # the merged config is what runs: an override may supply a key the file lacks (tasks.root
        # of a CIFAR config), so the file alone is not checked first. An error names the file and
        # the overrides, since the key at fault may come from either.
        merged = apply_overrides(data, overrides)
        return _validate(merged, config_source(source, overrides))
    return _validate(data, source)


def config_source(path: str | os.PathLike, overrides: list[str] | None = None) -> str:
    """How an error names a config: the file, and the ``--set`` overrides when there are any
    (the key at fault may come from either). Checks after loading (:mod:`clrl.preflight`) start
    their messages with it too."""
    return f"{path} with --set " + _cut(" ".join(overrides), 200) if overrides else str(path)


#: top-level keys only a sweep file has (clrl.sweep.spec.SweepConfig), never an experiment config
SWEEP_ONLY_KEYS = ("base", "methods", "grid", "seeds")


def looks_like_sweep(data: Any) -> bool:
    """True for a sweep file's mapping: no ``kind`` and a key only sweep files have."""
    return isinstance(data, dict) and "kind" not in data and any(k in data for k in SWEEP_ONLY_KEYS)


def apply_overrides(data: dict, overrides: list[str], protected: Iterable[str] = ()) -> dict:
    """Return a copy of ``data`` with ``dotted.key=value`` overrides applied (values parsed as YAML).

    Switching ``regularizer.name`` to another method starts that section afresh (its defaults),
    so ``--set regularizer.name=none`` works on an AGS-CL config: the config's own hyperparameters
    belong to its old method and are dropped. Values the overrides themselves give are kept,
    before or after the switch (``--set regularizer.lamb=5 --set regularizer.name=ewc`` is EWC
    with lamb 5), and so are the dotted keys in ``protected`` (what a caller set in earlier
    calls: a sweep's ``set:`` and ``grid:`` values, :mod:`clrl.sweep.spec`).
    """
    import copy

    data = copy.deepcopy(data)
    given = set(protected)  # dotted keys set by the caller, never dropped by a method switch
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {_cut(item)}: expected dotted.key=value")
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        if not all(parts):
            raise ConfigError(f"--set {_cut(item)}: empty part in key {key!r}")
        try:
            value = load_yaml(raw) if raw.strip() else ""
        except yaml.YAMLError as exc:
            raise ConfigError(f"--set {_cut(item)}: value is not valid YAML: {_one_line(exc)}") from exc
        node = data
        for i, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                where = ".".join(parts[: i + 1])
                raise ConfigError(f"--set {_cut(item)}: {where} is a value, not a section")
            node = child
        if parts == ["regularizer", "name"] and node.get("name") != value:
            kept = {k for k in node if f"regularizer.{k}" in given or "regularizer" in given}
            for k in [k for k in node if k not in kept]:
                del node[k]  # another method: the old method's hyperparameters do not apply
        node[parts[-1]] = value
        given.add(".".join(parts))
    return data


def _validate(data: dict, source: str) -> RLConfig | SupervisedConfig:
    kind = data.get("kind")
    if not isinstance(kind, str) or kind not in CONFIG_CLASSES:
        allowed = ", ".join(CONFIG_CLASSES)
        if "kind" not in data:
            hint = (" (this is a sweep file: run it with `clrl sweep`; `clrl validate` or `clrl sweep --dry-run` "
                    "checks every trial)") if looks_like_sweep(data) else ""
            raise ConfigError(f"{source}: kind: required key is missing; allowed: {allowed}{hint}")
        raise ConfigError(f"{source}: kind: given {short_repr(kind)}; allowed: {allowed}")
    cls = CONFIG_CLASSES[kind]
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, cls, source)) from None


def format_validation_error(exc: ValidationError, root: type[BaseModel], source: str) -> str:
    """One line per problem: ``source: dotted.key: problem; given X; allowed Y``."""
    lines = []
    for err in exc.errors():
        loc, model = _walk(root, err["loc"])
        dotted = ".".join(str(p) for p in loc) or "(top level)"
        etype = err["type"]
        given = err.get("input")
        if etype == "extra_forbidden":
            allowed = list(model.model_fields) if model else []
            close = difflib.get_close_matches(str(loc[-1]), allowed, n=1, cutoff=0.5)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            msg = f"unknown key{hint}; allowed: {', '.join(allowed)}"
        elif etype == "missing":
            msg = "required key is missing"
        elif etype == "union_tag_invalid":
            dotted += ".name"
            msg = f"given {err['ctx']['tag']!r}; allowed: {err['ctx']['expected_tags']}"
        elif etype == "literal_error":
            msg = f"given {short_repr(given)}; allowed: {err['ctx']['expected']}"
        elif etype == "union_tag_not_found":
            msg = f"needs a 'name' key; allowed: {', '.join(REGULARIZER_CLASSES)}"
        elif etype == "model_type" and _section_keys(model, loc):
            msg = f"given {short_repr(given)}; expected a section of keys ({', '.join(_section_keys(model, loc))})"
        elif loc == ["regularizer"] and not isinstance(given, dict):  # the union of the methods' sections
            msg = (f"given {short_repr(given)}; expected a section with a 'name' key "
                   f"({', '.join(REGULARIZER_CLASSES)}) and that method's settings")
        else:
            is_type_error = etype.endswith(("_type", "_parsing")) or "_type_" in etype
            expected = _expected_type(model, loc) if is_type_error else ""
            text = err["msg"]
            if text.startswith("Value error, "):
                text = text[len("Value error, ") :]
            msg = f"{text}; given {short_repr(given)}" + (f"; expected {expected}" if expected else "")
        lines.append(f"{source}: {dotted}: {msg}")
    return "\n".join(lines)


def _walk(root: type[BaseModel], loc: tuple) -> tuple[list, type[BaseModel] | None]:
    """Strip pydantic's union tags from ``loc``; return it and the model owning its last key."""
    clean: list = []
    owner: type[BaseModel] | None = root
    model: type[BaseModel] | None = root
    for part in loc:
        if model is None and isinstance(part, str) and part in REGULARIZER_CLASSES:
            model = REGULARIZER_CLASSES[part]  # the tag of the regularizer union, not a key
            continue
        clean.append(part)
        if isinstance(part, int):
            continue
        owner = model
        field = model.model_fields.get(part) if model is not None else None
        model = _model_of(field.annotation) if field is not None else None
    return clean, owner


def _model_of(annotation: Any) -> type[BaseModel] | None:
    """The config section class behind a field's annotation (None for unions and plain values)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return None


def _section_keys(model: type[BaseModel] | None, loc: list) -> list[str]:
    """The keys of the config section at ``loc`` (empty when ``loc`` is not a section)."""
    if model is None or not loc or not isinstance(loc[-1], str):
        return []
    field = model.model_fields.get(loc[-1])
    section = _model_of(field.annotation) if field is not None else None
    return list(section.model_fields) if section is not None else []


def _expected_type(model: type[BaseModel] | None, loc: list) -> str:
    if model is None or not loc or not isinstance(loc[-1], str):
        return ""
    field = model.model_fields.get(loc[-1])
    if field is None:
        return ""
    ann = field.annotation
    name = getattr(ann, "__name__", None)
    return name if name and get_origin(ann) is None else str(ann).replace("typing.", "")


def _cut(text: str, limit: int = 100) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _one_line(exc: Exception, limit: int = 300) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --------------------------------------------------------------------------- saving


def config_to_dict(cfg: BaseModel) -> dict:
    """The resolved config (defaults filled in) as plain YAML-able data."""
    return cfg.model_dump(mode="json")


def dump_config(cfg: BaseModel) -> str:
    return yaml.safe_dump(config_to_dict(cfg), sort_keys=False)


def regularizer_hparams(cfg: RLConfig | SupervisedConfig) -> tuple[str, dict]:
    """(name, hyperparameters) ready for ``build_regularizer``; unset options are left out."""
    reg = cfg.regularizer
    params = reg.model_dump(exclude={"name"})
    return reg.name, {k: v for k, v in params.items() if v is not None}
