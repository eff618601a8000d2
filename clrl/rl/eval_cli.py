"""``clrl eval RUN_DIR``: score a trained Atari agent from its checkpoint, without training.

    clrl eval RUN_DIR [--checkpoint FILE] [--game NAME ...] [--episodes K]
                      [--deterministic | --sample] [--max-frames N] [--seed S]
                      [--json FILE] [--video DIR]

The run's ``config.yaml`` gives the network and the evaluation protocol (every option left out
falls back to its ``eval`` section); the checkpoint (default ``checkpoints/latest.pt``, read with
``torch.load(weights_only=True)``) gives the weights and which games have a head. Every game is
played with its own head, all games at once (:func:`clrl.rl.evaluation.evaluate_many`), and
printed as the mean with its 95% percentile-bootstrap interval (:func:`clrl.metrics.bootstrap_ci`).

Bad input (no run there, a corrupt checkpoint, a game without a head) stops before anything
is played or written; ``--json`` and the videos are written only once every game has finished.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from clrl.errors import CheckpointError, UserError, first_line

__all__ = ["add_arguments", "main", "run_eval", "VideoRecorder", "VIDEO_SCALE", "VIDEO_FPS"]

VIDEO_SCALE = 4
"""The 84x84 frames the agent sees, upscaled 4x (336x336) with nearest-neighbour pixels."""
VIDEO_FPS = 15
"""One video frame per agent step: 60 emulator frames/s / frame skip 4 = real time."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Evaluate a trained sequential-Atari agent from its checkpoint: every game with its own head, "
        "printed as the mean raw score ± the half-width of a 95% bootstrap interval over the games "
        "played. Options left out take the run's eval settings."
    )
    parser.add_argument("run_dir", metavar="RUN_DIR", help="run directory of a `clrl run` Atari run")
    parser.add_argument("--checkpoint", metavar="FILE",
                        help="checkpoint to load (default: RUN_DIR/checkpoints/latest.pt)")
    parser.add_argument("--game", nargs="+", metavar="NAME",
                        help="games to play (default: every game the checkpoint has a head for)")
    parser.add_argument("--episodes", type=int, metavar="K", help="evaluation games played and scored per game title (default: eval.episodes)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--deterministic", dest="deterministic", action="store_true", default=None,
                      help="argmax actions (default: eval.deterministic)")
    mode.add_argument("--sample", dest="deterministic", action="store_false",
                      help="actions sampled from the policy")
    parser.add_argument("--max-frames", type=int, metavar="N",
                        help="frame cap per game in emulator frames (default: eval.max_frames)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the envs and sampled actions (default 0)")
    parser.add_argument("--json", metavar="FILE",
                        help="write per game: mean, 95%% CI and every game's score, frames and truncated")
    parser.add_argument("--video", metavar="DIR",
                        help=f"one MP4 per game (<game>.mp4) of the first game of the first env, as the agent "
                             f"sees it: the 84x84 gray frames upscaled {VIDEO_SCALE}x, {VIDEO_FPS} fps (real time); "
                             "cut where the evaluation ends if that game is still running (a note says so)")


@dataclass
class _Target:
    task: int
    game: str


def _load(run_dir: str, checkpoint: str | None):  # noqa: ANN202 - (rd, cfg, path, state)
    from clrl.config import RLConfig, load_config
    from clrl.rl import checkpoint as ckpt
    from clrl.rundir import RunDir

    rd = RunDir(Path(run_dir))
    if not rd.root.is_dir():
        raise UserError(f"{rd.root}: no such run directory")
    if not rd.config_path.is_file():
        raise UserError(f"{rd.root} is not a run directory (no config.yaml)")
    cfg = load_config(rd.config_path)
    if not isinstance(cfg, RLConfig):
        raise UserError(f"{rd.root} is a {cfg.kind} run; clrl eval scores sequential-Atari runs")
    path = Path(checkpoint) if checkpoint else rd.latest_checkpoint
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    state = ckpt.read(path, map_location="cpu")
    return rd, cfg, path, state


def _targets(cfg, state: dict[str, Any], path: Path, names: list[str] | None) -> list[_Target]:  # noqa: ANN001
    from clrl.rl.games import resolve_game

    games = list(cfg.tasks.games)
    heads = sorted(int(t) for t in state["heads"])
    bad = [t for t in heads if t >= len(games)]
    if bad:
        raise CheckpointError(f"{path}: heads for tasks {bad}, but the run's config has {len(games)} games")
    _check_same_run(cfg, state, path, games)
    have = [_Target(t, games[t]) for t in heads]
    if not have:
        raise CheckpointError(f"{path}: the checkpoint has no task heads yet (saved before the first task began)")
    if not names:
        return have
    chosen: list[_Target] = []
    for name in names:
        game = resolve_game(name)
        match = [h for h in have if h.game == game]
        if not match:
            listed = ", ".join(h.game for h in have)
            raise UserError(f"{path} has no head for {game}; it has heads for: {listed}")
        chosen += [m for m in match if m not in chosen]
    return chosen


def _check_same_run(cfg, state: dict[str, Any], path: Path, games: list[str]) -> None:  # noqa: ANN001
    """CheckpointError unless the checkpoint is one of this run's: its experiment's config
    (:func:`clrl.lifecycle.check_same_experiment`, as a resume checks it) and a head of each
    game's size. Heads are matched to games by task index, so ``--checkpoint`` from another run
    (another game order, or another network) would score one game's head on another game."""
    from clrl.lifecycle import check_same_experiment
    from clrl.rl.checkpoint import results_of
    from clrl.rl.envs import action_count

    advice = "pass a checkpoint of this run (its checkpoints/ folder)"
    try:
        saved = results_of(state).config
    except Exception as exc:  # noqa: BLE001 - a damaged text is a damaged checkpoint
        raise CheckpointError(f"{path}: its stored results cannot be read ({first_line(exc)})") from exc
    check_same_experiment(saved, cfg, path, advice=advice)
    for t, n in sorted(state["heads"].items()):
        want = action_count(games[int(t)], cfg.env)
        if int(n) != want:
            raise CheckpointError(f"{path}: task {int(t)} ({games[int(t)]}) has a head of {int(n)} actions, "
                                  f"the game has {want}: {advice}")


class VideoRecorder:
    """Observer that streams env 0's frames to an MP4 until env 0's first game ends.

    Frames are the newest frame of the agent's stack (84x84 gray), upscaled ``VIDEO_SCALE`` x
    and written as RGB through imageio's ffmpeg plugin (imageio-ffmpeg ships the binary)."""

    def __init__(self, path: Path) -> None:
        import imageio.v2 as imageio

        self.path = path
        self.frames = 0
        self.done = False
        self.cut = False  # closed before env 0's game ended (the evaluation had its games)
        self._writer = imageio.get_writer(str(path), fps=VIDEO_FPS, codec="libx264", quality=7,
                                          macro_block_size=1, ffmpeg_log_level="error")

    def _append(self, frame: np.ndarray) -> None:
        big = np.repeat(np.repeat(np.asarray(frame, dtype=np.uint8), VIDEO_SCALE, 0), VIDEO_SCALE, 1)
        self._writer.append_data(np.repeat(big[:, :, None], 3, axis=2))
        self.frames += 1

    def __call__(self, obs: np.ndarray, infos: list[dict[str, Any]] | None) -> None:
        if self.done:
            return
        if infos is not None and "episode" in infos[0]:
            self._append(infos[0]["terminal_observation"][-1])  # the game's last frame, before the reset
            self.close()
            return
        self._append(obs[0, -1])

    def close(self, cut: bool = False) -> None:
        if not self.done:
            self.done, self.cut = True, cut
            self._writer.close()


class _Progress:
    """Observer that advances one rich bar per game as its scored games finish."""

    def __init__(self, progress, task_id, episodes: int) -> None:  # noqa: ANN001
        self.progress, self.task_id, self.left = progress, task_id, episodes

    def __call__(self, obs: np.ndarray, infos: list[dict[str, Any]] | None) -> None:
        if infos is None or self.left <= 0:
            return
        n = min(self.left, sum("episode" in i for i in infos))
        if n:
            self.left -= n
            self.progress.advance(self.task_id, n)


def _chain(*observers):  # noqa: ANN002, ANN202
    live = [o for o in observers if o is not None]

    def call(obs: np.ndarray, infos: list[dict[str, Any]] | None) -> None:
        for o in live:
            o(obs, infos)

    return call


def run_eval(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Validate everything, play every chosen game, then write the JSON and videos; the entries."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from clrl.device import resolve_device
    from clrl.io import atomic_write_text
    from clrl.results import _clean
    from clrl.rl import checkpoint as ckpt
    from clrl.rl.evaluation import EvalJob, evaluate_many
    from clrl.rl.policy import build_actor_critic
    from clrl.seeding import derive_seed

    rd, cfg, path, state = _load(args.run_dir, args.checkpoint)
    targets = _targets(cfg, state, path, args.game)
    ev = cfg.eval
    episodes = ev.episodes if args.episodes is None else args.episodes
    max_frames = ev.max_frames if args.max_frames is None else args.max_frames
    deterministic = ev.deterministic if args.deterministic is None else bool(args.deterministic)
    if episodes < 1:
        raise UserError(f"--episodes must be at least 1, got {episodes}")
    if max_frames < 1:
        raise UserError(f"--max-frames must be at least 1, got {max_frames}")
    json_path = Path(args.json) if args.json else None
    video_dir = Path(args.video) if args.video else None
    if json_path is not None and json_path.is_dir():
        raise UserError(f"--json {json_path} is a directory; name a file")
    if json_path is not None:
        _check_can_create(json_path.parent, "--json", json_path)
    if video_dir is not None:
        _check_can_create(video_dir, "--video", video_dir)
    if video_dir is not None:
        try:
            import imageio.v2  # noqa: F401
            import imageio_ffmpeg  # noqa: F401
        except ImportError as exc:
            raise UserError(f"--video needs imageio and imageio-ffmpeg (pip install imageio imageio-ffmpeg): {exc}") from exc

    device = resolve_device(cfg.device)
    net = build_actor_critic(cfg.model.channels, cfg.model.hidden, cfg.model.activation,
                             in_channels=cfg.env.frame_stack)
    if cfg.train.vcl.gamma > 0:
        net.enable_vcl(cfg.train.vcl.gamma, cfg.train.vcl.n)
    ckpt.restore_net(net, state, path)
    net.to(device).eval()
    threads = cfg.train.rollout_threads or cfg.train.torch_threads  # as the run evaluates: the rollouts' threads
    if threads:
        torch.set_num_threads(threads)

    jobs = []
    for t in targets:
        gen = torch.Generator().manual_seed(derive_seed(args.seed, "eval-act", t.task, "clrl-eval"))
        jobs.append(EvalJob(net.actor_fn(t.task, deterministic=deterministic, generator=gen), t.game,
                            derive_seed(args.seed, "eval-env", t.task, "clrl-eval")))
    console = Console(stderr=True)
    with tempfile.TemporaryDirectory(prefix="clrl-eval-") as tmp:
        recorders = [VideoRecorder(Path(tmp) / f"{t.game}.mp4") if video_dir else None for t in targets]
        progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                            TextColumn("games"), TimeElapsedColumn(), console=console,
                            disable=not console.is_terminal)
        try:
            with progress:
                bars = [_Progress(progress, progress.add_task(t.game, total=episodes), episodes) for t in targets]
                results = evaluate_many(jobs, cfg.env, episodes=episodes, n_envs=ev.n_envs, max_frames=max_frames,
                                        observers=[_chain(b, r) for b, r in zip(bars, recorders, strict=True)])
        finally:
            for r in recorders:
                if r is not None:
                    r.close(cut=True)  # a recorder still open here stopped before its game ended
        entries = [
            {"task": t.task, "game": t.game, "mean": r.mean, "ci": list(r.ci()), "episodes": r.episodes,
             "truncated": r.truncated, "games": r.games}
            for t, r in zip(targets, results, strict=True)
        ]
        try:  # the videos first: the JSON, once written, says the evaluation's outputs are complete
            if video_dir is not None:
                video_dir.mkdir(parents=True, exist_ok=True)
                for t, r in zip(targets, recorders, strict=True):
                    name = f"{t.game}.mp4" if sum(x.game == t.game for x in targets) == 1 else f"{t.game}_task{t.task}.mp4"
                    shutil.move(str(r.path), str(video_dir / name))
                    if r.cut:
                        print(f"clrl eval: note: the video of {t.game} ends before its game does (env 0's game was "
                              f"still running when the {episodes} scored games had finished)", file=sys.stderr)
            if json_path is not None:
                doc = {"run": str(rd.root), "checkpoint": str(path), "seed": args.seed, "episodes": episodes,
                       "n_envs": ev.n_envs, "deterministic": deterministic, "max_frames": max_frames,
                       "frame_skip": cfg.env.frame_skip, "results": entries}
                json_path.parent.mkdir(parents=True, exist_ok=True)
                atomic_write_text(json_path, json.dumps(_clean(doc), indent=1) + "\n")
        except OSError as exc:
            raise UserError(f"cannot write the evaluation's outputs: {exc}") from exc
    return entries


def _check_can_create(folder: Path, flag: str, given: Path) -> None:
    """UserError unless ``folder`` is, or can be made as, a writable directory (checked before
    any game is played, so a bad path costs nothing)."""
    import os

    probe = folder
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise UserError(f"{flag} {given}: {probe} is a file, not a directory")
    if probe.exists() and not os.access(probe, os.W_OK | os.X_OK):
        raise UserError(f"{flag} {given}: {probe} is not writable")


def _table(entries: list[dict[str, Any]], title: str):  # noqa: ANN202 - a rich Table
    from rich.table import Table

    from clrl.summary import _fmt

    table = Table(title=title, caption="± half-width of the 95% bootstrap interval; capped: games cut by the frame cap")
    for col in ("task", "game", "mean ± half-width", "95% CI", "games", "capped"):
        table.add_column(col, justify="left" if col == "game" else "right", no_wrap=True)
    for e in entries:
        lo, hi = e["ci"]
        table.add_row(str(e["task"]), e["game"], f"{_fmt(e['mean'], 1)} ± {_fmt((hi - lo) / 2, 1)}",
                      f"[{_fmt(lo, 1)}, {_fmt(hi, 1)}]", str(e["episodes"]), str(e["truncated"]))
    return table


def main(args: argparse.Namespace) -> int:
    from clrl.summary import table_console

    entries = run_eval(args)
    table_console().print(_table(entries, f"clrl eval {args.run_dir}"))
    if args.json:
        print(f"json: {args.json}")
    if args.video:
        print(f"videos: {args.video} ({len(entries)} MP4 files)")
    sys.stdout.flush()
    return 0
