"""Seeding, atomic checkpoints, run directories and the CLI skeleton."""

import pickle
import random

import numpy as np
import pytest
import torch

from clrl.cli import main
from clrl.config import config_from_dict
from clrl.errors import CheckpointError, UserError
from clrl.io import load_checkpoint, save_checkpoint
from clrl.rundir import open_run_dir, prepare_run_dir
from clrl.seeding import (
    derive_seed,
    generator_state,
    get_rng_state,
    make_generators,
    seed_everything,
    set_generator_state,
    set_rng_state,
)


def draws():
    return random.random(), float(np.random.rand()), float(torch.rand(1))


def test_seed_everything_repeats_all_three_libraries():
    seed_everything(3)
    a = draws()
    seed_everything(3)
    assert draws() == a
    seed_everything(4)
    assert draws() != a


def test_rng_state_round_trips_through_a_safe_checkpoint(tmp_path):
    seed_everything(1)
    draws()
    path = tmp_path / "ck.pt"
    save_checkpoint(path, {"format": "clrl.checkpoint", "rng": get_rng_state()})
    expected = draws()
    set_rng_state(load_checkpoint(path)["rng"])
    assert draws() == expected


def test_numpy_generator_state_round_trips(tmp_path):
    gens = make_generators(5)
    gens.np_rng.random(3)
    path = tmp_path / "g.pt"
    save_checkpoint(path, {"format": "clrl.checkpoint", "g": generator_state(gens.np_rng)})
    expected = gens.np_rng.random(4)
    fresh = np.random.default_rng(0)
    set_generator_state(fresh, load_checkpoint(path)["g"])
    np.testing.assert_array_equal(fresh.random(4), expected)


def test_derive_seed_is_stable_and_distinct():
    assert derive_seed(0, "env", 1) == derive_seed(0, "env", 1)
    assert derive_seed(0, "env", 1) != derive_seed(0, "env", 2)
    assert 0 <= derive_seed(123, "x") < 2**31


def test_corrupt_and_hostile_checkpoints_are_refused(tmp_path):
    path = tmp_path / "ck.pt"
    save_checkpoint(path, {"format": "clrl.checkpoint", "w": torch.ones(3)})
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(path)

    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    torch.save({"format": "clrl.checkpoint", "x": Evil()}, path, pickle_protocol=2)
    with pytest.raises(CheckpointError):
        load_checkpoint(path)
    assert not marker.exists()
    path.write_bytes(pickle.dumps({"format": "clrl.checkpoint"}))
    with pytest.raises(CheckpointError):
        load_checkpoint(path)
    torch.save({"w": torch.ones(1)}, path)
    with pytest.raises(CheckpointError, match="not a clrl checkpoint"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")


def test_any_damaged_checkpoint_is_a_checkpoint_error(tmp_path):
    """Garbage makes the restricted unpickler fail in many ways (KeyError, IndexError,
    struct.error, ...); each must be a CheckpointError naming the file, never a traceback."""
    rng = np.random.default_rng(0)
    path = tmp_path / "ck.pt"
    for _ in range(150):
        path.write_bytes(rng.integers(0, 256, int(rng.integers(1, 64)), dtype=np.uint8).tobytes())
        with pytest.raises(CheckpointError, match=r"ck\.pt"):
            load_checkpoint(path)


def test_a_flipped_bit_inside_a_checkpoint_is_caught(tmp_path):
    # torch.load does not check the zip's CRCs: a changed weight would load silently
    path = tmp_path / "ck.pt"
    save_checkpoint(path, {"format": "clrl.checkpoint", "w": torch.arange(4096, dtype=torch.float32)})
    data = bytearray(path.read_bytes())
    start = data.find(torch.arange(4096, dtype=torch.float32).numpy().tobytes()[:64])
    assert start > 0  # the tensor's bytes are stored as they are
    data[start + 1000] ^= 0x10
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"fails its CRC check.*task_XX\.pt"):
        load_checkpoint(path)


def test_an_unreadable_checkpoint_is_a_checkpoint_error(tmp_path, monkeypatch):
    path = tmp_path / "ck.pt"
    save_checkpoint(path, {"format": "clrl.checkpoint"})

    def denied(*args, **kwargs):  # what a file without read permission gives (root reads any file)
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(torch, "load", denied)
    with pytest.raises(CheckpointError, match=r"cannot read checkpoint .*ck\.pt \(\[Errno 13\] Permission denied"):
        load_checkpoint(path)


CFG = {"name": "demo", "kind": "rl", "tasks": {"games": ["Boxing"], "steps_per_task": 10}}


def test_run_dir_never_overwrites_an_earlier_run(tmp_path):
    cfg = config_from_dict({**CFG, "output": {"dir": str(tmp_path)}})
    first = prepare_run_dir(cfg)
    second = prepare_run_dir(cfg)
    assert first.root.name == "demo" and second.root.name == "demo-1"
    assert first.config_path.is_file() and first.checkpoints.is_dir()
    with pytest.raises(UserError, match="--resume"):
        prepare_run_dir(cfg, out=first.root)
    rd, loaded = open_run_dir(first.root)
    assert loaded == cfg
    with pytest.raises(UserError, match="not a run directory"):
        open_run_dir(tmp_path / "nothing")


def test_overwrite_clears_everything_the_earlier_run_wrote(tmp_path):
    cfg = config_from_dict({**CFG, "output": {"dir": str(tmp_path)}})
    rd = prepare_run_dir(cfg, out=tmp_path / "run")
    old = [rd.results_path, rd.latest_checkpoint, rd.task_checkpoint(0), rd.log_path,
           rd.tb / "events.out.tfevents.1", rd.figures / "curves.png", rd.probes / "task_00.npz"]
    for path in old:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("from the earlier run")
    (rd.root / "notes.md").write_text("the user's own file")
    again = prepare_run_dir(cfg, out=tmp_path / "run", overwrite=True)
    assert [p for p in old if p.exists()] == []
    assert (again.root / "notes.md").read_text() == "the user's own file"  # only the run's own files go
    assert again.config_path.is_file() and again.checkpoints.is_dir()


def test_cli_help_and_exit_codes(capsys, tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for command in ("run", "validate", "games", "report", "sweep", "bench"):
        assert command in out
    assert main(["run"]) == 2
    assert "needs a CONFIG" in capsys.readouterr().err
    assert main(["run", str(tmp_path / "nope.yaml")]) == 2
    assert main(["run", "--resume", str(tmp_path)]) == 2
    capsys.readouterr()
    assert main(["run", "--resume", str(tmp_path), "--overwrite"]) == 2
    assert "give one of them" in capsys.readouterr().err
    assert main(["games", "zzzz"]) == 2
    assert main(["games", "Boxing"]) == 0
    assert "Boxing" in capsys.readouterr().out


def test_every_subcommand_help_has_a_description():
    import argparse

    from clrl.cli import build_parser

    def walk(parser: argparse.ArgumentParser, path: str):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    yield f"{path} {name}", sub
                    yield from walk(sub, f"{path} {name}")

    missing = [path for path, sub in walk(build_parser(), "clrl") if not (sub.description or "").strip()]
    assert missing == []


def test_closed_stdout_ends_quietly_but_other_broken_pipes_are_errors(tmp_path):
    """``clrl validate ... --print | head``: the reader goes away; exit 141 without a traceback.
    A broken pipe of the command's own (stdout still open) stays an internal error."""
    import os
    import subprocess
    import sys

    script = (
        "import sys\nfrom clrl.cli import main\n"
        "sys.exit(main(['validate', 'configs/sweep_digits.yaml', '--print']))\n"
    )
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before anything is written
    proc = subprocess.run([sys.executable, "-c", script], stdout=write_end, stderr=subprocess.PIPE,
                          text=True, cwd=os.path.dirname(os.path.dirname(__file__)), timeout=120)
    os.close(write_end)
    assert proc.returncode == 141, proc.stderr
    assert "Traceback" not in proc.stderr and "internal error" not in proc.stderr

    own_pipe = (  # e.g. the connection to a bench's child process
        "import sys\nimport clrl.cli as cli\n"
        "def broken(args):\n    raise BrokenPipeError(32, 'Broken pipe')\n"
        "cli.cmd_games = broken\n"  # build_parser reads the module's name at call time
        "sys.exit(cli.main(['games', 'Boxing']))\n"
    )
    proc = subprocess.run([sys.executable, "-c", own_pipe], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "internal error" in proc.stderr, proc.stderr
