"""The sweep file: a base experiment config plus a grid, expanded into validated trials.

A sweep file (``configs/sweep_*.yaml``)::

    name: digits
    base: split_digits.yaml          # experiment config, relative to this file
    config: {train: {batch_size: 64}}  # optional inline config merged over base (or instead of it)
    seeds: [0, 1, 2]
    set: {train.epochs: 5}           # dotted keys for every trial (values taken literally)
    grid: {model.activation: [relu, "lwta:block=2"]}   # optional axes crossed with every method
    methods:                         # one entry per method; a list value is a grid axis
      finetune: {regularizer.name: none}
      ewc: {regularizer.name: ewc, regularizer.lamb: [1000, 10000]}
    reference: auto                  # auto | <method> | null
    resources: {cpu: 1, gpu: 0.25}   # per trial (Ray); fractional GPUs allowed
    retries: 1                       # re-runs of a crashed trial, from its checkpoint

In ``methods`` and ``grid`` a list is always a grid axis; a config key whose value is itself a
list takes a list of lists there (``model.hidden: [[64, 64], [128, 128]]``, or ``[[64, 64]]`` for
one fixed value). ``set`` and ``--set`` values are taken literally. Precedence, lowest first:
base file, inline ``config``, ``set``, ``grid``, the method's keys, ``--set``, the seed.

Every trial is validated through :mod:`clrl.config` here, before anything runs, so a bad grid
value fails fast with the sweep file, the trial and the key in the message. Fine-tuning trials
(``regularizer.name: none``) are the references: each other trial's ``reference`` is the
fine-tuning trial of the same seed (and the same ``grid`` point), and references come first in
the returned order (AGS-CL Sec. 4.2 normalizes every method by the fine-tuning run's scores).
"""

from __future__ import annotations

import itertools
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError, field_validator

from clrl.config import (
    Strict,
    _check_name,
    _validate,
    apply_overrides,
    config_to_dict,
    format_validation_error,
    read_yaml_mapping,
)
from clrl.errors import ConfigError

#: keys a sweep sets itself; a sweep file may not set them per trial
RESERVED_KEYS = ("name", "seed")
AUTO = "auto"


class Resources(Strict):
    """What one trial asks of a Ray node (the local backend sizes its pool by ``cpu``)."""

    cpu: float = Field(1.0, gt=0, description="CPU cores per trial (also torch's thread count)")
    gpu: float = Field(0.0, ge=0, description="GPUs per trial; a fraction shares one GPU between trials")


class SweepConfig(Strict):
    """The schema of a sweep file (see the module docstring)."""

    name: str = Field(description="names the sweep folder runs/sweep-<name>")
    base: str | None = Field(None, description="experiment config, relative to the sweep file")
    config: dict[str, Any] = Field({}, description="inline experiment config merged over base")
    seeds: list[int] | None = Field(None, min_length=1, description="default: the base config's seed")
    set: dict[str, Any] = Field({}, description="dotted keys applied to every trial, values taken literally")
    grid: dict[str, Any] = Field({}, description="axes (lists) crossed with every method")
    methods: dict[str, dict[str, Any]] = Field(min_length=1, description="method name -> dotted overrides")
    reference: str | None = Field(AUTO, description="auto: the fine-tuning method(s); a method name; null: none")
    resources: Resources = Resources()
    retries: int = Field(1, ge=0, description="re-runs of a crashed trial, resuming from its checkpoint; errors "
                         "inside the run and deaths of its worker together")

    _name = field_validator("name")(lambda cls, v: _check_name(v))

    @field_validator("methods")
    @classmethod
    def _method_names(cls, methods: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        for name in methods:
            if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_+]*", name):
                raise ValueError(f"method name {name!r}: use letters, digits, _ and + (it starts trial names)")
        return methods

    @field_validator("seeds")
    @classmethod
    def _unique_seeds(cls, seeds: list[int] | None) -> list[int] | None:
        if seeds is not None and len(set(seeds)) != len(seeds):
            raise ValueError(f"seeds repeat: {seeds}")
        return seeds

@dataclass
class Trial:
    """One run of the grid. ``config`` is the resolved, validated experiment config as a dict."""

    name: str
    method: str
    seed: int
    params: dict[str, Any]
    config: dict[str, Any]
    is_reference: bool = False
    reference: str | None = None  # name of the reference trial in this sweep
    grid_point: tuple = field(default=(), repr=False)
    validated: Any = field(default=None, repr=False)  # ``config`` as its config object (set by expand)


@dataclass
class SweepPlan:
    """A sweep file expanded: its spec, where it lives, and its trials, references first."""

    spec: SweepConfig
    source: Path
    out: Path
    trials: list[Trial]
    overrides: list[str] = field(default_factory=list)

    def trial(self, name: str) -> Trial:
        return next(t for t in self.trials if t.name == name)

    def trial_dir(self, trial: Trial | str) -> Path:
        return self.out / (trial if isinstance(trial, str) else trial.name)


# --------------------------------------------------------------------------- reading


def load_sweep(path: str | os.PathLike) -> SweepConfig:
    """Read and validate a sweep file; errors name the file and the dotted key."""
    path = Path(path)
    data = read_yaml_mapping(path, "sweep file")
    try:
        spec = SweepConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, SweepConfig, str(path))) from None
    if spec.base is None and not spec.config:
        raise ConfigError(f"{path}: base: a sweep needs `base: <experiment.yaml>` or an inline `config:` (or both)")
    if spec.reference not in (None, AUTO) and spec.reference not in spec.methods:
        allowed = ", ".join(["auto", "null", *spec.methods])
        raise ConfigError(f"{path}: reference: given {spec.reference!r}, not a method of this sweep; allowed: {allowed}")
    return spec


def _flatten(data: dict[str, Any], prefix: str) -> dict[str, Any]:
    """``{a: {b: 1}, c.d: 2}`` -> ``{a.b: 1, c.d: 2}`` (no config value is itself a mapping)."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(_flatten(value, dotted + "."))
        else:
            out[dotted] = value
    return out


def _deep_merge(low: dict, high: dict) -> dict:
    out = dict(low)
    for key, value in high.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _base_data(spec: SweepConfig, source: Path) -> dict:
    data: dict = {}
    if spec.base is not None:
        base = (source.parent / spec.base).resolve() if not Path(spec.base).is_absolute() else Path(spec.base)
        if not base.is_file():
            raise ConfigError(f"{source}: base: {spec.base!r} not found (looked for {base})")
        data = read_yaml_mapping(base)
    return _deep_merge(data, spec.config)


def _set_keys(data: dict, values: dict[str, Any], where: str, protected: set[str] | None = None) -> dict:
    """Apply dotted keys through clrl.config's override parser (JSON is YAML flow syntax);
    ``protected`` keys, set before, survive a switch of ``regularizer.name``."""
    items = []
    for key, value in values.items():
        try:
            items.append(f"{key}={json.dumps(value)}")
        except TypeError:  # YAML gives dates and timestamps, which no config key takes
            raise ConfigError(
                f"{where}: {key}: {value!r} is a {type(value).__name__}, not a string, number, list or mapping "
                "(quote it)"
            ) from None
    try:
        return apply_overrides(data, items, protected or ())
    except ConfigError as exc:
        raise ConfigError(f"{where}: {str(exc).removeprefix('--set ')}") from None


# --------------------------------------------------------------------------- names


def format_value(value: Any) -> str:
    """A grid value as it appears in a trial name: ``1000.0 -> 1000``, ``lwta:block=2 -> lwta_block=2``."""
    if isinstance(value, bool) or value is None:
        text = str(value).lower()
    elif isinstance(value, float):
        text = f"{value:g}" if math.isfinite(value) else str(value)
    elif isinstance(value, (list, tuple)):
        text = "_".join(format_value(v) for v in value)
    else:
        text = str(value)
    return re.sub(r"[^A-Za-z0-9._+-]+", "_", text).strip("_") or "_"


def axis_labels(keys: list[str]) -> dict[str, str]:
    """Shortest dotted suffix of each key that is unique among ``keys`` (``regularizer.lamb -> lamb``)."""
    labels: dict[str, str] = {}
    for key in keys:
        parts = key.split(".")
        for n in range(1, len(parts) + 1):
            label = ".".join(parts[-n:])
            if all(o == key or not (o == label or o.endswith("." + label)) for o in keys):
                break
        labels[key] = label
    return labels


def trial_name(method: str, params: dict[str, Any], seed: int, labels: dict[str, str]) -> str:
    parts = [method] + [f"{labels[k]}={format_value(v)}" for k, v in params.items()] + [f"seed={seed}"]
    return "-".join(parts)


# --------------------------------------------------------------------------- expansion


def _check_reserved(keys: Any, where: str) -> None:
    for key in keys:
        if key in RESERVED_KEYS:
            what = "list seeds under `seeds:`" if key == "seed" else "trial names are made by the sweep"
            raise ConfigError(f"{where}: {key}: the sweep sets this itself ({what})")


def _axes(values: dict[str, Any], where: str) -> tuple[dict[str, Any], dict[str, list]]:
    """Split dotted keys into fixed values and grid axes (lists)."""
    _check_reserved(values, where)
    fixed, axes = {}, {}
    for key, value in values.items():
        if isinstance(value, list):
            if not value:
                raise ConfigError(f"{where}: {key}: empty list (a list is a grid axis and needs a value)")
            axes[key] = value
        else:
            fixed[key] = value
    return fixed, axes


def expand(
    path: str | os.PathLike, out: str | os.PathLike | None = None, overrides: list[str] | None = None
) -> SweepPlan:
    """Expand a sweep file into validated trials (references first); nothing is written.

    ``out`` is the sweep folder (default ``<base output.dir>/sweep-<name>``); trials'
    ``reference`` keys point at absolute run directories under it, so every node of a cluster
    that mounts the folder at the same path finds them.
    """
    source = Path(path)
    spec = load_sweep(source)
    base = _base_data(spec, source)
    common = _flatten(spec.set, "")  # taken literally: `set: {tasks.games: [Boxing, Pong]}` is one value
    _check_reserved(common, f"{source}: set")
    if overrides:  # --set on the command line: literal values too, checked here before any trial
        _check_reserved(_flatten(apply_overrides({}, overrides), ""), "--set")
    grid_fixed, grid_axes = _axes(_flatten(spec.grid, ""), f"{source}: grid")
    if grid_fixed:
        bad = next(iter(grid_fixed))
        raise ConfigError(f"{source}: grid: {bad}: needs a list of values (fixed values go under `set:`)")
    seeds = spec.seeds
    if seeds is None:
        seed = base.get("seed", 0)
        seeds = [seed if isinstance(seed, int) else 0]
    if out is None:
        out_dir = base.get("output", {}).get("dir", "runs") if isinstance(base.get("output"), dict) else "runs"
        out = Path(out_dir) / f"sweep-{spec.name}"
    out = Path(out).resolve()

    trials: list[Trial] = []
    for method, raw in spec.methods.items():
        trials += _method_trials(source, method, raw, base, common, grid_axes, seeds, overrides or [])
    names = [t.name for t in trials]
    dup = next((n for n in names if names.count(n) > 1), None)
    if dup:
        raise ConfigError(f"{source}: two trials are both named {dup!r}; a grid list repeats a value")

    _wire_references(spec, source, trials, out)
    for t in trials:  # validate every trial before anything runs
        t.validated = _validate(t.config, f"{source} (trial {t.name})")
        t.config = config_to_dict(t.validated)
    trials.sort(key=lambda t: not t.is_reference)  # stable: references first, grid order kept
    return SweepPlan(spec=spec, source=source, out=out, trials=trials, overrides=list(overrides or []))


def _method_trials(
    source: Path,
    method: str,
    raw: dict[str, Any],
    base: dict,
    common: dict[str, Any],
    grid_axes: dict[str, list],
    seeds: list[int],
    overrides: list[str],
) -> list[Trial]:
    """One method's trials: its own axes x the sweep-wide grid x seeds, in that nesting order."""
    where = f"{source}: methods.{method}"
    fixed, axes = _axes(_flatten(raw, ""), where)
    for key in grid_axes:
        if key in axes or key in fixed:
            raise ConfigError(f"{where}: {key}: also a `grid` axis; set it in one place")
    all_axes = axes | grid_axes
    labels = axis_labels(list(all_axes))
    trials = []
    for m_point in itertools.product(*axes.values()):
        method_values = fixed | dict(zip(axes, m_point, strict=True))
        for g_point in itertools.product(*grid_axes.values()):
            grid_values = dict(zip(grid_axes, g_point, strict=True))
            shown = {k: v for k, v in (method_values | grid_values).items() if len(all_axes.get(k, ())) > 1}
            # a switch of regularizer.name (in any part) drops the base's hyperparameters, never
            # a value set here: each part's keys are protected in the parts after it
            data, given = base, set()
            for values, part in ((common, f"{source}: set"), (grid_values, f"{source}: grid"), (method_values, where)):
                data = _set_keys(data, values, part, given)
                given |= set(values)
            data = apply_overrides(data, overrides, given)  # the command line beats the file
            for seed in seeds:
                name = trial_name(method, shown, seed, labels)
                config = {**data, "name": name, "seed": seed}
                trials.append(Trial(name, method, seed, shown, config, grid_point=tuple(map(_key, g_point))))
    return trials


def _key(value: Any) -> str:
    return json.dumps(value, sort_keys=True)


def _regularizer_name(data: dict) -> str:
    reg = data.get("regularizer")
    return reg.get("name", "none") if isinstance(reg, dict) else "none"


def _wire_references(spec: SweepConfig, source: Path, trials: list[Trial], out: Path) -> None:
    """Mark reference trials and point every other trial at its seed's reference run."""
    if spec.reference is None:
        return
    if spec.reference == AUTO:
        ref_methods = {t.method for t in trials if _regularizer_name(t.config) == "none"}
    else:
        ref_methods = {spec.reference}
    if not ref_methods:
        return  # no fine-tuning method: trials keep the base config's reference, if any
    refs = [t for t in trials if t.method in ref_methods]
    for t in refs:
        t.is_reference = True
        t.config["reference"] = None
    for t in trials:
        if t.is_reference:
            continue
        match = [r for r in refs if r.seed == t.seed and r.grid_point == t.grid_point]
        if len(match) > 1:
            raise ConfigError(
                f"{source}: reference: trial {t.name} could use any of {', '.join(r.name for r in match)}; "
                "set `reference: <method>` to one method with a single trial per seed"
            )
        if match:
            t.reference = match[0].name
            t.config["reference"] = str(out / match[0].name)
