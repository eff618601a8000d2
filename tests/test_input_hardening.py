"""Issue 15: bad input is refused up front with exit 2 and one short line, never a traceback.

`clrl validate` and the start of `clrl run` build what the run builds (before the run folder
exists); YAML alias bombs and duplicate keys; undecodable configs; paths that are files;
hostile CIFAR pickles; file modes under the umask; a report over a truncated results.json.
"""

from __future__ import annotations

import copy
import os
import pickle
import stat
from pathlib import Path

import pytest
import torch
import yaml

from clrl import cli
from clrl.config import MAX_YAML_NODES, load_yaml
from clrl.errors import UserError
from clrl.io import atomic_write_text
from clrl.preflight import rollout_bytes

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
RL_CONFIG = str(CONFIGS / "atari_quick.yaml")
SUP_CONFIG = str(CONFIGS / "split_digits.yaml")


@pytest.fixture(autouse=True)
def _threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def _refused(capsys, argv: list[str], *expect: str) -> str:
    """exit 2 with one short error naming ``expect``; no traceback."""
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "internal error" not in err
    for e in expect:
        assert e in err, err
    assert len(err) < 2000, err[:300]
    return err


# --------------------------------------------------------------------------- item 3

BAD_SETS = [
    (RL_CONFIG, "model.activation=st_hard:groups=7", "not divisible by groups 7"),
    (RL_CONFIG, "model.activation=lwta:block=3", "not divisible by block 3"),
    (RL_CONFIG, "model.activation=maxout:block=100000", "not divisible by block 100000"),
    (RL_CONFIG, "model.activation=[relu,relu]", "2 specs"),
    (RL_CONFIG, "model.channels=[-4,8,8]", "model.channels.0"),
    (RL_CONFIG, "model.hidden=-3", "model.hidden"),
    (RL_CONFIG, "seed=-1", "seed"),
    (RL_CONFIG, f"seed={2**32}", "seed"),
    (RL_CONFIG, "regularizer.lamb=1e48", "float32"),
    (RL_CONFIG, "regularizer.lamb=.inf", "finite"),
    (RL_CONFIG, "train.learning_rate=.inf", "train.learning_rate"),
    (RL_CONFIG, "tasks.steps_per_task=true", "tasks.steps_per_task"),
    (RL_CONFIG, "tasks.games=[Pong,Pong]", "more than once"),
    (RL_CONFIG, "train.n_envs=10000000", "memory"),
    (SUP_CONFIG, "model.hidden=[64,-1]", "model.hidden.1"),
    (SUP_CONFIG, "model.activation=lwta:block=7", "not divisible by block 7"),
    (SUP_CONFIG, "model.activation=[relu,relu,relu,relu,relu,relu]", "6 specs"),
    (SUP_CONFIG, "regularizer.name=ewc", None),  # a good one: must pass
]


@pytest.mark.parametrize(("config", "override", "expect"), BAD_SETS, ids=[b[1] for b in BAD_SETS])
def test_validate_and_run_refuse_what_the_run_could_not_build(tmp_path, capsys, config, override, expect):
    if expect is None:
        assert cli.main(["validate", config, "--set", override]) == 0
        return
    _refused(capsys, ["validate", config, "--set", override], expect)
    out = tmp_path / "never"
    _refused(capsys, ["run", config, "--set", override, "--out", str(out)], expect)
    assert not out.exists()  # refused before the run folder is made


def test_rollout_bytes_is_the_uint8_observation_buffer():
    from clrl.config import load_config

    cfg = load_config(RL_CONFIG)
    # 8 envs x 128 steps x 4 frames x 84 x 84 bytes, worked by hand
    assert rollout_bytes(cfg) == 8 * 128 * 4 * 84 * 84 == 28_901_376


def test_validate_and_run_check_the_reference_before_the_run_folder(tmp_path, capsys):
    out = tmp_path / "never"
    _refused(capsys, ["run", RL_CONFIG, "--set", f"reference={tmp_path / 'nowhere'}", "--out", str(out)],
             "no results file")
    assert not out.exists()


# --------------------------------------------------------------------------- item 4

BOMB = "\n".join(
    ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    + [f"{c}: &{c} [{','.join([f'*{p}'] * 9)}]" for p, c in zip("abcdefgh", "bcdefghi", strict=True)]
) + "\n"


def test_a_yaml_alias_bomb_is_refused_before_it_expands(tmp_path):
    assert len(BOMB.encode()) < 500  # the 414-byte file, near enough
    with pytest.raises(yaml.YAMLError, match="aliases expand to more than"):
        load_yaml(BOMB)
    assert load_yaml("a: &x [1, 2]\nb: *x\n") == {"a": [1, 2], "b": [1, 2]}  # ordinary aliases still work


def test_a_yaml_alias_bomb_in_a_config_is_a_short_error(tmp_path, capsys):
    # 5 levels of 10: a million values, enough to be refused and small enough to be safe unfixed
    lines = [f"l0: &l0 [{','.join(['x'] * 10)}]"]
    lines += [f"l{i}: &l{i} [{','.join([f'*l{i - 1}'] * 10)}]" for i in range(1, 6)]
    path = tmp_path / "bomb.yaml"
    path.write_text("\n".join(lines) + "\nname: bomb\nkind: rl\ntasks:\n  steps_per_task: 1\n  games: *l5\n")
    assert 10**6 > MAX_YAML_NODES
    _refused(capsys, ["validate", str(path)], "aliases expand")


def test_long_values_are_cut_in_error_messages(tmp_path, capsys):
    path = tmp_path / "long.yaml"
    path.write_text(yaml.safe_dump({"name": "x", "kind": "rl", "seed": "y" * 10_000,
                                    "tasks": {"games": ["Pong"], "steps_per_task": 1}}))
    err = _refused(capsys, ["validate", str(path)], "seed")
    assert len(err) < 400


def test_duplicate_yaml_keys_are_refused(tmp_path, capsys):
    path = tmp_path / "dup.yaml"
    path.write_text("name: dup\nkind: rl\nseed: 1\ntasks: {games: [Pong], steps_per_task: 1}\nseed: 2\n")
    _refused(capsys, ["validate", str(path)], "duplicate key 'seed'", "line 3")
    assert load_yaml("base: &b {x: 1}\nd:\n  <<: *b\n  x: 2\n") == {"base": {"x": 1}, "d": {"x": 2}}  # merges fine


# --------------------------------------------------------------------------- item 7


def test_binary_utf16_and_listed_kind_configs_exit_2(tmp_path, capsys):
    utf16 = tmp_path / "utf16.yaml"
    utf16.write_bytes("name: x\nkind: rl\n".encode("utf-16"))
    _refused(capsys, ["validate", str(utf16)], "not a UTF-8 text file")
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(bytes(range(256)))
    _refused(capsys, ["validate", str(binary)], str(binary))
    listed = tmp_path / "listed.yaml"
    listed.write_text("name: x\nkind: [rl]\ntasks: {games: [Pong], steps_per_task: 1}\n")
    _refused(capsys, ["validate", str(listed)], "kind: given ['rl']")


def test_out_that_is_a_file_or_under_a_file_exits_2(tmp_path, capsys):
    a_file = tmp_path / "file"
    a_file.write_text("not a folder")
    _refused(capsys, ["run", SUP_CONFIG, "--out", str(a_file / "run")], "cannot create the run directory")
    _refused(capsys, ["run", SUP_CONFIG, "--out", str(a_file), "--overwrite"], "is a file, not a folder")
    assert a_file.read_text() == "not a folder"


def test_report_out_that_is_a_file_exits_2(tmp_path, capsys):
    run = _fake_run(tmp_path / "runs" / "a")
    a_file = tmp_path / "file"
    a_file.write_text("x")
    _refused(capsys, ["report", str(run), "--out", str(a_file), "--no-figures"], "is a file, not a folder")


# --------------------------------------------------------------------------- item 10: report


def _fake_run(root: Path, seed: int = 0) -> Path:
    from clrl.results import compute_metrics, new_results, save_results

    res = new_results("supervised", "fake", seed, {"name": "fake", "seed": seed, "regularizer": {"name": "ewc"}},
                      ["t0", "t1"])
    res.R = [[0.9, 0.1], [0.5 + 0.1 * seed, 0.8]]
    res.status = "complete"
    res.metrics = compute_metrics(res)
    root.mkdir(parents=True)
    save_results(root / "results.json", res)
    return root


def test_report_skips_and_lists_a_truncated_results_json(tmp_path, capsys):
    _fake_run(tmp_path / "runs" / "a", 0)
    _fake_run(tmp_path / "runs" / "b", 1)
    bad = _fake_run(tmp_path / "runs" / "c", 2) / "results.json"
    bad.write_text(bad.read_text()[:100])
    assert cli.main(["report", str(tmp_path / "runs"), "--no-figures", "--reps", "10"]) == 0
    err = capsys.readouterr().err
    assert "skipped, unreadable" in err and str(bad) in err and "truncated" in err
    md = (tmp_path / "runs" / "report" / "report.md").read_text()
    assert "skipped, unreadable" in md and "2 supervised runs" in md


# --------------------------------------------------------------------------- item 8


def _hostile(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def test_hostile_cifar_pickles_are_refused(tmp_path):
    from clrl.supervised.cifar import safe_load_pickle

    selfref: list = []
    selfref.append(selfref)
    shared: list = []
    for _ in range(40):  # 2**40 paths through 40 containers: a naive walk never ends
        shared = [shared, shared]
    n = 100_000  # protocol 2 by hand: n + 1 empty lists, n appends (pickle.dumps would recurse)
    deep = b"\x80\x02" + b"]" * (n + 1) + b"a" * n + b"."
    cases = {
        "selfref": (pickle.dumps(selfref, protocol=2), "contains itself"),
        "shared": (pickle.dumps(shared, protocol=2), "nested more than"),
        "deep": (deep, "nested more than"),
    }
    for name, (data, expect) in cases.items():
        with pytest.raises(UserError, match=expect):
            safe_load_pickle(_hostile(tmp_path, name, data))
    ok = {b"data": [1, 2], b"labels": [[3]]}
    assert safe_load_pickle(_hostile(tmp_path, "ok", pickle.dumps(ok, protocol=4))) == ok


def test_a_hostile_cifar_file_is_exit_2_at_run(tmp_path, capsys):
    from _cifar_fixture import write_cifar100

    write_cifar100(tmp_path, train_per_class=1, test_per_class=1)
    selfref: list = []
    selfref.append(selfref)
    (tmp_path / "cifar-100-python" / "test").write_bytes(pickle.dumps(selfref, protocol=2))
    data = yaml.safe_load((CONFIGS / "split_cifar100_finetune.yaml").read_text())
    data["tasks"]["root"] = str(tmp_path)
    data["output"] = {"progress": False, "tensorboard": False, "figures": False}
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(data))
    _refused(capsys, ["run", str(cfg), "--out", str(tmp_path / "run")], "contains itself")


# --------------------------------------------------------------------------- item 9


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o007, 0o660), (0o077, 0o600)])
def test_atomic_writes_keep_the_umask_mode(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        atomic_write_text(tmp_path / "f.txt", "x")
        atomic_write_text(tmp_path / "f.txt", "y")  # a rewrite too
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "f.txt").stat().st_mode) == mode


def test_a_run_folder_is_readable_under_umask_022(tmp_path):
    old = os.umask(0o022)
    try:
        assert cli.main(["run", SUP_CONFIG, "--out", str(tmp_path / "r"), "--set", "tasks.n_tasks=1",
                         "--set", "train.epochs=1", "--set", "model.hidden=[8]", "--set", "output.figures=false",
                         "--set", "output.tensorboard=false", "--set", "output.progress=false"]) == 0
    finally:
        os.umask(old)
    for f in ("results.json", "config.yaml", "checkpoints/latest.pt", "checkpoints/task_00.pt"):
        assert stat.S_IMODE((tmp_path / "r" / f).stat().st_mode) == 0o644, f


def test_bool_for_a_float_is_refused_but_real_bools_pass():
    from clrl.config import config_from_dict
    from clrl.errors import ConfigError

    base = {"name": "x", "kind": "rl", "tasks": {"games": ["Pong"], "steps_per_task": 1}}
    with pytest.raises(ConfigError, match="train.learning_rate"):
        config_from_dict({**copy.deepcopy(base), "train": {"learning_rate": True}})
    cfg = config_from_dict({**copy.deepcopy(base), "train": {"deterministic": True}})
    assert cfg.train.deterministic is True


# --------------------------------------------------------------------------- new-user review
# Errors raised after the schema check (preflight, the reference run) name the file and the key
# as the schema's own errors do: `FILE: key: problem`, exit 2, one line, no traceback.

SWEEP = str(CONFIGS / "sweep_digits.yaml")
CIFAR_CONFIG = str(CONFIGS / "split_cifar100_agscl.yaml")


def _write(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


def _load(path: str) -> dict:
    return yaml.safe_load(Path(path).read_text())


def test_a_config_without_kind_says_the_key_is_missing(tmp_path, capsys):
    path = _write(tmp_path / "nokind.yaml", {"name": "x", "tasks": {"games": ["Pong"], "steps_per_task": 1}})
    err = _refused(capsys, ["validate", str(path)], f"{path}: kind: required key is missing; allowed: rl, supervised")
    assert "sweep" not in err  # not taken for a sweep file


def test_validate_checks_a_sweep_file_trial_by_trial(capsys):
    assert cli.main(["validate", SWEEP]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"ok: {SWEEP}: sweep digits (8 trials of 4 methods") and "--dry-run" in out
    # what the trials build is checked too: AGS-CL cannot take a normalization layer
    _refused(capsys, ["validate", SWEEP, "--set", "model.activation=bn"],
             f"{SWEEP} (trial agscl-seed=0): model.activation: given 'bn'", "BatchNorm")


def test_a_sweep_with_a_trial_that_cannot_be_built_stops_before_any_trial_runs(tmp_path, capsys):
    out = tmp_path / "sweep"
    _refused(capsys, ["sweep", SWEEP, "--set", "model.activation=bn", "--out", str(out)],
             f"{SWEEP} (trial agscl-seed=0): model.activation: given 'bn'", "BatchNorm")
    assert not out.exists()  # no trial folder, no manifest


def test_validate_names_the_sweep_file_trial_and_key_of_a_bad_grid_value(tmp_path, capsys):
    sweep = _write(tmp_path / "sweep.yaml", {"name": "s", "base": str(CONFIGS / "split_digits.yaml"),
                                             "methods": {"ewc": {"regularizer.name": "ewc", "regularizer.lamb": "abc"}}})
    _refused(capsys, ["validate", str(sweep)], f"{sweep} (trial ewc-seed=0): regularizer.lamb:", "given 'abc'")


def test_run_on_a_sweep_file_points_at_clrl_sweep(tmp_path, capsys):
    _refused(capsys, ["run", SWEEP, "--out", str(tmp_path / "never")],
             f"{SWEEP}: kind: required key is missing", "this is a sweep file", "clrl sweep")
    assert not (tmp_path / "never").exists()


def test_a_missing_cifar_folder_names_the_file_and_tasks_root(tmp_path, capsys, monkeypatch):
    root = tmp_path / "nocifar"
    err = _refused(capsys, ["validate", CIFAR_CONFIG, "--set", f"tasks.root={root}"],
                   "CIFAR data not found")
    assert err.startswith(f"clrl: error: {CIFAR_CONFIG} with --set tasks.root={root}: tasks.root: "), err
    assert "relative" not in err
    monkeypatch.chdir(tmp_path)  # a relative root is relative to the current directory, not the config's
    err = _refused(capsys, ["validate", CIFAR_CONFIG, "--set", "tasks.root=nocifar"],
                   f"tasks.root: nocifar is relative to the current directory, here {root.resolve()}; CIFAR data not found")
    assert err.startswith(f"clrl: error: {CIFAR_CONFIG} with --set tasks.root=nocifar: tasks.root: "), err


def test_agscl_on_a_normalization_layer_names_the_file_and_model_activation(tmp_path, capsys):
    for command in (["validate"], ["run", "--out", str(tmp_path / "never")]):
        err = _refused(capsys, [*command, RL_CONFIG, "--set", "model.activation=bn"], "BatchNorm", "normalization layer")
        assert err.startswith(f"clrl: error: {RL_CONFIG} with --set model.activation=bn: model.activation: given 'bn', "
                              "which regularizer.name agscl cannot work with: trunk module '1' (BatchNorm)"), err
    assert not (tmp_path / "never").exists()
    assert cli.main(["validate", RL_CONFIG, "--set", "model.activation=bn", "--set", "regularizer.name=ewc"]) == 0


def test_a_missing_reference_names_the_file_and_the_reference_key(tmp_path, capsys):
    ref = tmp_path / "nowhere"
    err = _refused(capsys, ["validate", RL_CONFIG, "--set", f"reference={ref}"], "no results file here")
    assert err.startswith(f"clrl: error: {RL_CONFIG} with --set reference={ref}: reference: {ref}: "), err
    cfg = _write(tmp_path / "c.yaml", {**_load(SUP_CONFIG), "reference": str(ref)})  # the key in the file itself
    err = _refused(capsys, ["validate", str(cfg)], "no results file here")
    assert err.startswith(f"clrl: error: {cfg}: reference: {ref}: "), err


def _finished_run(root: Path, kind: str, config: dict, tasks: list[str]) -> Path:
    from clrl.results import new_results, save_results

    res = new_results(kind, "ref", 0, config, tasks)
    res.R = [[0.5 if j <= i else None for j in range(len(tasks))] for i in range(len(tasks))]
    res.status = "complete"
    save_results(root / "results.json", res)
    return root


def test_a_reference_of_the_other_kind_is_named_as_such(tmp_path, capsys):
    sup = _finished_run(tmp_path / "sup", "supervised", _load(SUP_CONFIG), ["t0", "t1"])
    err = _refused(capsys, ["validate", RL_CONFIG, "--set", f"reference={sup}"],
                   f"reference: {sup} is a supervised run, but this run is an Atari (rl) run")
    assert err.startswith(f"clrl: error: {RL_CONFIG} with --set reference={sup}: reference: "), err
    assert "there but" not in err  # not the comparability message about tasks.games
    rl_cfg = _load(RL_CONFIG)
    rl = _finished_run(tmp_path / "rl", "rl", rl_cfg, list(rl_cfg["tasks"]["games"]))
    err = _refused(capsys, ["validate", SUP_CONFIG, "--set", f"reference={rl}"],
                   f"reference: {rl} is an Atari (rl) run, but this run is a supervised run")
    assert err.startswith(f"clrl: error: {SUP_CONFIG} with --set reference={rl}: reference: "), err
