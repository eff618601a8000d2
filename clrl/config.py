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
from pathlib import Path
from typing import Annotated, Any, Literal, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from clrl.errors import ConfigError


class Strict(BaseModel):
    """Base for every config section: unknown keys are errors, assignments re-validate."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)


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


class MASConfig(Strict):
    """Memory aware synapses (Aljundi et al. 2018)."""

    name: Literal["mas"]
    lamb: float = Field(10.0, ge=0)
    norm: Literal["squared", "l2"] = "squared"
    accumulate: Literal["sum", "mean"] = "sum"
    include_heads: bool = False
    max_samples: int = Field(2560, ge=1)


class AGSCLConfig(Strict):
    """Adaptive group sparsity based continual learning (Jung et al. 2020), eq. (2)."""

    name: Literal["agscl"]
    mu: float = Field(0.1, ge=0, description="group-lasso weight on unimportant nodes")
    lamb: float = Field(100.0, ge=0, description="weight of the importance-scaled group penalty")
    rho: float = Field(1.0, ge=0, le=1, description="probability of re-initializing an unimportant node (I.2)")
    eta: float = Field(0.9, ge=0, le=1, description="decay of accumulated importance Omega (eq. 8)")
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

        return [resolve_game(g) for g in games]


class RLModel(Strict):
    channels: list[int] = Field([32, 64, 64], min_length=3, max_length=3)
    hidden: int = Field(512, ge=1)
    activation: str | list[str] = "relu"

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
    num_threads: int = Field(0, ge=0, description="ALE worker threads; 0 = one per env up to the cores")


class PPOConfig(Strict):
    """PPO settings; every one the paper's runs use is reachable (REFERENCE.md)."""

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
    normalize_advantage: bool = True
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

    @model_validator(mode="after")
    def _minibatches_divide(self) -> PPOConfig:
        batch = self.n_envs * self.n_steps
        if batch % self.n_minibatches:
            raise ValueError(
                f"n_envs*n_steps = {batch} is not divisible by n_minibatches = {self.n_minibatches}"
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
    seed: int = 0
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
    validation: float = Field(0.1, ge=0, lt=1)
    test_fraction: float = Field(0.3, gt=0, lt=1, description="split_digits only: held-out share")

    @model_validator(mode="after")
    def _root_for_cifar(self) -> SupervisedTasks:
        if self.dataset != "split_digits" and not self.root:
            raise ValueError(f"dataset {self.dataset!r} needs tasks.root: the folder holding the CIFAR data")
        return self


class SupervisedModel(Strict):
    net: Literal["auto", "digits", "cifar", "single_pass"] = "auto"
    hidden: list[int] = Field([128, 128], min_length=1, description="digits MLP widths")
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
    seed: int = 0
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


def read_yaml_mapping(path: str | os.PathLike, what: str = "config file") -> dict:
    """A YAML file's top-level mapping, read with ``safe_load``; errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: {what} not found")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {_one_line(exc)}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of keys at the top level, got {type(data).__name__}")
    return data


def load_config(path: str | os.PathLike, overrides: list[str] | None = None) -> RLConfig | SupervisedConfig:
    """Read a YAML config, apply ``--set`` overrides, validate; errors name the file and key."""
    return config_from_dict(read_yaml_mapping(path), source=str(path), overrides=overrides)


def config_from_dict(
    data: Any, source: str = "<config>", overrides: list[str] | None = None
) -> RLConfig | SupervisedConfig:
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping of keys at the top level, got {type(data).__name__}")
    _validate(data, source)  # the file alone first: its errors name the file
    if overrides:
        data = apply_overrides(data, overrides)
        return _validate(data, "--set " + " ".join(overrides))
    return _validate(data, source)


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Return a copy of ``data`` with ``dotted.key=value`` overrides applied (values parsed as YAML).

    Switching ``regularizer.name`` to another method starts that section afresh (its defaults),
    so ``--set regularizer.name=none`` works on an AGS-CL config; later ``--set
    regularizer.lamb=...`` items still apply to the new method.
    """
    import copy

    data = copy.deepcopy(data)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item}: expected dotted.key=value")
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        if not all(parts):
            raise ConfigError(f"--set {item}: empty part in key {key!r}")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as exc:
            raise ConfigError(f"--set {item}: value is not valid YAML: {_one_line(exc)}") from exc
        node = data
        for i, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                where = ".".join(parts[: i + 1])
                raise ConfigError(f"--set {item}: {where} is a value, not a section")
            node = child
        if parts == ["regularizer", "name"] and node.get("name") != value:
            node.clear()  # another method: the old method's hyperparameters do not apply
        node[parts[-1]] = value
    return data


def _validate(data: dict, source: str) -> RLConfig | SupervisedConfig:
    kind = data.get("kind")
    if kind not in CONFIG_CLASSES:
        allowed = ", ".join(CONFIG_CLASSES)
        given = "missing" if kind is None else f"{kind!r}"
        raise ConfigError(f"{source}: kind: given {given}; allowed: {allowed}")
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
            msg = f"given {given!r}; allowed: {err['ctx']['expected']}"
        elif etype == "union_tag_not_found":
            msg = f"needs a 'name' key; allowed: {', '.join(REGULARIZER_CLASSES)}"
        else:
            is_type_error = etype.endswith(("_type", "_parsing")) or "_type_" in etype
            expected = _expected_type(model, loc) if is_type_error else ""
            text = err["msg"]
            if text.startswith("Value error, "):
                text = text[len("Value error, ") :]
            msg = f"{text}; given {given!r}" + (f"; expected {expected}" if expected else "")
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


def _expected_type(model: type[BaseModel] | None, loc: list) -> str:
    if model is None or not loc or not isinstance(loc[-1], str):
        return ""
    field = model.model_fields.get(loc[-1])
    if field is None:
        return ""
    ann = field.annotation
    name = getattr(ann, "__name__", None)
    return name if name and get_origin(ann) is None else str(ann).replace("typing.", "")


def _one_line(exc: Exception) -> str:
    return " ".join(str(exc).split())


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
