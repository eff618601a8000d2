"""The game table (clrl.rl.game_table / games) against the installed ale-py, and `clrl games`."""

from __future__ import annotations

import ale_py
import pytest
from ale_py import roms

from clrl.cli import main
from clrl.errors import ConfigError, UserError
from clrl.rl.game_table import ALE_VERSION, GAMES
from clrl.rl.games import list_games, minimal_action_count, resolve_game, rom_id

# The paper's eight games plus a few classics. Only these ROMs are loaded: loading some
# unsupported ROMs (multi-player ones) kills the process.
CHECKED = [
    "Boxing", "Pong", "Breakout", "StarGunner", "VideoPinball", "CrazyClimber", "Gopher",
    "Robotank", "DemonAttack", "NameThisGame", "SpaceInvaders", "MsPacman",
]  # fmt: skip


def _ale_minimal_actions(rom: str) -> int:
    ale = ale_py.ALEInterface()
    ale.setLoggerMode(ale_py.LoggerMode.Error)
    ale.loadROM(roms.get_rom_path(rom))
    return len(ale.getMinimalActionSet())


def test_known_counts() -> None:
    """Hand-checked values (the games' joystick and button use), independent of ale-py."""
    assert minimal_action_count("Boxing") == 18
    assert minimal_action_count("Pong") == 6
    assert minimal_action_count("Breakout") == 4
    assert minimal_action_count("StarGunner") == 18


@pytest.mark.parametrize("game", CHECKED)
def test_table_matches_installed_ale(game: str) -> None:
    assert _ale_minimal_actions(rom_id(game)) == minimal_action_count(game)


def test_table_roms_are_installed() -> None:
    installed = set(roms.get_all_rom_ids())
    assert {rom for rom, _ in GAMES.values()} <= installed
    assert len(GAMES) >= 100
    assert ALE_VERSION == ale_py.__version__, "regenerate clrl/rl/game_table.py for this ale-py"


def test_list_games_sorted_and_complete() -> None:
    rows = list_games()
    assert [r[0] for r in rows] == sorted(GAMES)
    assert ("Boxing", "boxing", 18) in rows and ("StarGunner", "star_gunner", 18) in rows


@pytest.mark.parametrize(
    "spelling",
    [
        "Boxing",
        "boxing",
        "BOXING",
        " Boxing ",
        "BoxingNoFrameskip-v4",
        "ALE/Boxing-v5",
        "Boxing-v4",
    ],
)
def test_resolve_spellings(spelling: str) -> None:
    assert resolve_game(spelling) == "Boxing"


def test_resolve_snake_case_and_camel_case() -> None:
    assert resolve_game("star_gunner") == "StarGunner"
    assert resolve_game("StarGunnerNoFrameskip-v4") == "StarGunner"
    assert resolve_game("ALE/MsPacman-v5") == "MsPacman"
    assert rom_id("StarGunner") == "star_gunner"


def test_unknown_game_suggests_closest() -> None:
    with pytest.raises(ConfigError) as err:
        resolve_game("Boxng")
    assert isinstance(err.value, UserError)
    assert "Boxing" in str(err.value) and "Boxng" in str(err.value)
    with pytest.raises(ConfigError, match="none close"):
        resolve_game("qqqqqqqqqqqq")


def test_cli_games_lists_them(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["games"]) == 0
    out = capsys.readouterr().out
    lines = {line.split()[0]: line.split() for line in out.splitlines()[1:]}
    assert len(lines) == len(GAMES)
    for game, n in [("Boxing", "18"), ("Pong", "6"), ("Breakout", "4"), ("StarGunner", "18")]:
        assert lines[game][-1] == n


def test_cli_games_filter_and_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["games", "box"]) == 0
    out = capsys.readouterr().out
    assert "Boxing" in out and "Pong" not in out
    assert main(["games", "zzzz"]) == 2  # a user error: one line, exit 2
    assert "no ALE game matches" in capsys.readouterr().err


@pytest.mark.slow
def test_whole_table_matches_installed_ale() -> None:
    """Every entry (~10 s): the table's games are exactly the ones ale-py can load."""
    for name, (rom, n) in GAMES.items():
        assert _ale_minimal_actions(rom) == n, name
