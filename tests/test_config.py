"""Config validation: unknown keys, wrong types, bad values, --set overrides, round trip."""

import pytest
import yaml

from clrl.cli import main
from clrl.config import config_from_dict, dump_config, load_config
from clrl.errors import ConfigError

BASE = {
    "name": "t",
    "kind": "rl",
    "tasks": {"games": ["Boxing", "Pong"], "steps_per_task": 1000},
    "regularizer": {"name": "agscl", "mu": 0.1},
}


def write(tmp_path, data, name="c.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return path


def error_of(data, overrides=None, source="f.yaml"):
    with pytest.raises(ConfigError) as info:
        config_from_dict(data, source=source, overrides=overrides)
    return str(info.value)


def test_valid_config_fills_defaults():
    cfg = config_from_dict(BASE)
    assert cfg.tasks.games == ["Boxing", "Pong"]
    assert cfg.regularizer.lamb == 100.0 and cfg.train.n_envs == 8


def test_misspelled_key_names_key_file_and_suggestion():
    msg = error_of({**BASE, "regularizer": {"name": "agscl", "lamda": 3}})
    assert "f.yaml" in msg and "regularizer.lamda" in msg and "did you mean 'lamb'" in msg
    msg = error_of({**BASE, "trian": {}})
    assert "trian" in msg and "did you mean 'train'" in msg


def test_wrong_type_names_expected_type():
    msg = error_of({**BASE, "train": {"n_envs": "many"}})
    assert "train.n_envs" in msg and "given 'many'" in msg and "expected int" in msg
    msg = error_of({**BASE, "regularizer": {"name": "agscl", "mu": "abc"}})
    assert "regularizer.mu" in msg and "expected float" in msg


def test_a_value_where_a_section_belongs_lists_the_sections_keys():
    msg = error_of({**BASE, "tasks": "Pong"})
    assert msg == "f.yaml: tasks: given 'Pong'; expected a section of keys (games, steps_per_task)"
    assert "expected a section of keys (n_envs, n_steps" in error_of({**BASE, "train": 3})
    msg = error_of({**BASE, "regularizer": 3})
    assert msg.startswith("f.yaml: regularizer: given 3; expected a section with a 'name' key (none, ")
    assert "clrl.config" not in msg and msg.count("\n") == 0


def test_bad_values_name_what_is_allowed():
    assert "allowed: 'none', 'ewc', 'mas', 'agscl'" in error_of({**BASE, "regularizer": {"name": "l2"}})
    assert "allowed: rl, supervised" in error_of({**BASE, "kind": "reinforcement"})
    assert "'constant' or 'linear'" in error_of({**BASE, "train": {"lr_schedule": "cosine"}})
    msg = error_of({**BASE, "regularizer": {"name": "agscl", "rho": 2}})
    assert "regularizer.rho" in msg and "less than or equal to 1" in msg
    msg = error_of({**BASE, "regularizer": {"name": "agscl", "eta": 0}})  # the paper needs 0 < eta <= 1
    assert "regularizer.eta" in msg and "greater than 0" in msg
    assert config_from_dict({**BASE, "regularizer": {"name": "agscl", "eta": 1}}).regularizer.eta == 1
    msg = error_of({**BASE, "regularizer": {"name": "ewc", "penalty_clipped": "sometimes"}})
    assert "regularizer.penalty_clipped" in msg
    msg = error_of({**BASE, "train": {"n_envs": 3, "n_steps": 5, "n_minibatches": 4}})
    assert "not divisible" in msg


def test_unknown_game_suggests_closest():
    msg = error_of({**BASE, "tasks": {"games": ["Boxng"], "steps_per_task": 10}})
    assert "Boxng" in msg and "Boxing" in msg


def test_supervised_cifar_needs_root():
    msg = error_of({"name": "s", "kind": "supervised", "tasks": {"dataset": "split_cifar100"}})
    assert "tasks.root" in msg


def test_set_overrides_are_validated_too():
    cfg = config_from_dict(BASE, overrides=["tasks.games=[Breakout, Freeway]", "train.learning_rate=1e-3", "seed=3"])
    assert cfg.tasks.games == ["Breakout", "Freeway"] and cfg.train.learning_rate == 1e-3 and cfg.seed == 3
    msg = error_of(BASE, overrides=["train.learnig_rate=1"])
    assert "--set train.learnig_rate=1" in msg and "did you mean 'learning_rate'" in msg
    assert "expected dotted.key=value" in error_of(BASE, overrides=["seed"])
    assert "is a value, not a section" in error_of(BASE, overrides=["name.x=1"])


def test_load_config_errors_name_the_file(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match="broken.yaml: not valid YAML"):
        load_config(path)
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    path.write_text("- a list\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(path)


def test_yaml_is_loaded_safely(tmp_path):
    path = tmp_path / "evil.yaml"
    path.write_text("name: !!python/object/apply:os.system ['echo pwned']\nkind: rl\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(path)


def test_resolved_config_round_trips(tmp_path):
    cfg = config_from_dict(BASE)
    path = tmp_path / "resolved.yaml"
    path.write_text(dump_config(cfg))
    assert load_config(path) == cfg


def test_validate_cli_exit_codes(tmp_path, capsys):
    good = write(tmp_path, BASE, "good.yaml")
    assert main(["validate", str(good)]) == 0
    bad = write(tmp_path, {**BASE, "regularizer": {"name": "agscl", "lamda": 1}}, "bad.yaml")
    assert main(["validate", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "bad.yaml" in err and "regularizer.lamda" in err and "Traceback" not in err
    wrong = write(tmp_path, {**BASE, "seed": "zero"}, "wrong.yaml")
    assert main(["validate", str(wrong)]) == 2
    assert "expected int" in capsys.readouterr().err


def test_shipped_configs_validate():
    from pathlib import Path

    configs = sorted(Path(__file__).parent.parent.glob("configs/*.yaml"))
    for path in configs:
        if path.name.startswith("sweep_"):
            continue
        load_config(path)


def test_paper_configs_clip_the_penalty_as_the_authors_code():
    """Departure 4: the paper configs of EWC and MAS follow the AGS-CL code (penalty gradient
    clipped with the task gradient); the default stays the documented after-clipping choice."""
    from pathlib import Path

    root = Path(__file__).parent.parent / "configs"
    for name in ("atari_paper_ewc", "atari_paper_mas", "split_cifar100_ewc", "split_cifar100_mas"):
        assert load_config(root / f"{name}.yaml").regularizer.penalty_clipped is True, name
    assert config_from_dict({**BASE, "regularizer": {"name": "ewc"}}).regularizer.penalty_clipped is False


def test_switching_regularizer_by_set_drops_the_old_methods_keys():
    cfg = config_from_dict(BASE, overrides=["regularizer.name=none"])
    assert cfg.regularizer.name == "none"
    cfg = config_from_dict(BASE, overrides=["regularizer.name=ewc", "regularizer.lamb=7"])
    assert cfg.regularizer.name == "ewc" and cfg.regularizer.lamb == 7
    own = {**BASE, "regularizer": {"name": "agscl", "mu": 0.7}}  # 0.7: not the default
    cfg = config_from_dict(own, overrides=["regularizer.name=agscl"])  # same method: keys kept
    assert cfg.regularizer.mu == 0.7
    assert config_from_dict(own, overrides=["regularizer.name=ewc"]).regularizer.lamb == 5000.0  # EWC's default


def test_overrides_before_a_method_switch_are_kept():
    # the config's own keys belong to its old method; the command line's are meant for the new one
    cfg = config_from_dict(BASE, overrides=["regularizer.lamb=5", "regularizer.name=ewc"])
    assert cfg.regularizer.name == "ewc" and cfg.regularizer.lamb == 5
    cfg = config_from_dict(BASE, overrides=["regularizer={lamb: 3, name: mas}", "regularizer.name=ewc"])
    assert cfg.regularizer.name == "ewc" and cfg.regularizer.lamb == 3


def test_an_override_may_supply_a_key_the_file_lacks():
    data = {"name": "c", "kind": "supervised", "tasks": {"dataset": "split_cifar100"}}
    assert "needs tasks.root" in error_of(data)
    cfg = config_from_dict(data, source="f.yaml", overrides=["tasks.root=/data/cifar"])
    assert cfg.tasks.root == "/data/cifar"
    # an error the override does not fix names the file and the overrides, and only that error
    msg = error_of({**data, "train": {"epochs": 0}}, overrides=["tasks.root=/x"])
    assert msg.startswith("f.yaml with --set tasks.root=/x: train.epochs") and "needs tasks.root" not in msg
