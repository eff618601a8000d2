"""ALE game names: listing, validation and close-match suggestions.

Configs name games the way the papers do (``Boxing``, ``StarGunner``); ale-py's ROM ids
are snake_case (``star_gunner``). Both spellings, any case, and ``<Game>NoFrameskip-v4`` /
``ALE/<Game>-v5`` are accepted and resolved to the canonical name.
"""

from __future__ import annotations

import difflib
import re

from clrl.errors import ConfigError
from clrl.rl.game_table import GAMES

_BY_KEY = {re.sub(r"[^a-z0-9]", "", name.lower()): name for name in GAMES}


def _key(text: str) -> str:
    text = re.sub(r"^ALE/", "", text.strip())
    text = re.sub(r"(NoFrameskip)?-v\d+$", "", text)
    return re.sub(r"[^a-z0-9]", "", text.lower())


def resolve_game(name: str) -> str:
    """Canonical game name for ``name``; unknown names raise with the closest names."""
    found = _BY_KEY.get(_key(name))
    if found is not None:
        return found
    close = difflib.get_close_matches(_key(name), list(_BY_KEY), n=3, cutoff=0.5)
    hint = ", ".join(_BY_KEY[c] for c in close) if close else "none close"
    raise ConfigError(f"unknown Atari game {name!r} (closest: {hint}); `clrl games` lists all {len(GAMES)}")


def rom_id(name: str) -> str:
    """ale-py's ROM id (``star_gunner``) for a game name."""
    return GAMES[resolve_game(name)][0]


def minimal_action_count(name: str) -> int:
    return GAMES[resolve_game(name)][1]


def list_games() -> list[tuple[str, str, int]]:
    """(name, rom id, minimal action count) for every game ale-py ships, sorted by name."""
    return [(name, rom, n) for name, (rom, n) in sorted(GAMES.items())]
