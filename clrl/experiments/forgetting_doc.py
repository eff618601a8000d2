"""``docs/atari_forgetting.md``: the Markdown page, every number read off a :class:`Summary`."""

from __future__ import annotations

import math
from typing import Any

from clrl.experiments import forgetting_stats as fs
from clrl.experiments.forgetting_data import Pilots
from clrl.experiments.forgetting_stats import learned
from clrl.experiments.forgetting_summary import Summary
from clrl.report.stats import load_rliable

TITLE = "# Forgetting on Atari: fine-tuning, EWC, MAS and AGS-CL"
RENDER_COMMAND = "python scripts/atari_forgetting.py --render"
FIGURE_CAPTIONS = {
    "normalized_reward": "Accumulated normalized reward over training (AGS-CL Fig. 7a): at each evaluation, the sum "
                         "over the games seen so far of the score divided by fine-tuning's best score on that game "
                         "(same seed). Line: IQM over seeds; band: 95% stratified-bootstrap interval; dotted: task "
                         "boundaries.",
    "plasticity_stability": "Plasticity P (R[i][i] / fine-tuning's R[i][i]) and stability S (R[T-1][j] / max_{i>=j} "
                            "R[i][j]) per task (AGS-CL Fig. 7b); bars: IQM over seeds, whiskers: 95% interval. "
                            "Fine-tuning's P is 1 by definition; every method's S on the last game is 1.",
    "first_game": "The first game's score at every evaluation, training on it and then on the next games; dashed: "
                  "the untrained network's score (IQM over fine-tuning's seeds).",
}


def fmt_duration(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "n/a"
    h, rest = divmod(int(round(seconds)), 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * len(header)) + "|"]
    out += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return out


def _get(config: dict, dotted: str, default: Any = None) -> Any:
    node: Any = config
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return default
        node = node[part]
    return node


def _hyper(config: dict) -> str:
    reg = dict(config.get("regularizer") or {})
    name = reg.pop("name", "none")
    if name == "none":
        return "none (plain PPO on each game in turn)"
    return ", ".join(f"{k} {v}" for k, v in reg.items()) or "clrl's defaults"


# --------------------------------------------------------------------------- sections


def _command_section(summary: Summary, record: dict | None) -> list[str]:
    lines = ["## Command and wall time", ""]
    inv = (record or {}).get("invocations") or []
    commands = list(dict.fromkeys(i.get("command", "") for i in inv if i.get("command")))
    if commands:
        lines += ["```bash", *commands, "```", ""]
        total = sum(float(i.get("seconds") or 0) for i in inv)
        first = inv[0]
        killed = sum(bool(i.get("killed")) for i in inv)
        killed_text = (f"; {killed} of them killed, their time estimated up to the last line they wrote to the "
                       "sweep log" if killed else "")
        lines.append(f"- Wall time: {fmt_duration(total)} (h:mm:ss) over {len(inv)} invocation"
                     f"{'s' if len(inv) != 1 else ''} of the command (a killed or interrupted experiment "
                     f"continues where it stopped when the command is run again; the times add up{killed_text}), "
                     f"{first.get('workers', '?')} trial(s) at a time on a machine with {first.get('cpus', '?')} "
                     "usable cores.")
    else:
        lines.append("- No experiment record (data/atari_forgetting/experiment.json): the command and wall time "
                     "are unknown.")
    runs = [r for m in summary.methods for r in m.runs]
    walls = [r.wall_seconds for r in runs if r.wall_seconds is not None]
    if walls:
        lines.append(f"- The {len(runs)} trials' own run times (results.json `timings.wall_seconds`) add up to "
                     f"{fmt_duration(sum(walls))}; per trial {fmt_duration(min(walls))} to {fmt_duration(max(walls))}.")
    lines += [f"- `{RENDER_COMMAND}` rebuilds this page and its figures from the committed results files, "
              "without training.", ""]
    return lines


def _setting_section(summary: Summary) -> list[str]:
    cfg = (summary.reference or summary.methods[0]).runs[0].config
    g = lambda key, d=None: _get(cfg, key, d)  # noqa: E731 - a short reader for this section
    n_envs, n_steps = g("train.n_envs"), g("train.n_steps")
    steps = g("tasks.steps_per_task")
    updates = math.ceil(steps / (n_envs * n_steps)) if steps and n_envs and n_steps else "?"
    ch = g("model.channels", [])
    ev_det = "argmax" if g("eval.deterministic") else "sampled"
    lines = [
        "## Setting", "",
        f"- Games, in training order: {', '.join(summary.tasks)} (T = {len(summary.tasks)}); a past game is never "
        "trained again.",
        f"- Budget: {steps:,} env steps per game = {updates} PPO updates of {n_envs} envs x {n_steps} steps.",
        f"- Network: conv {'-'.join(map(str, ch))} (8/4, 4/2, 3/1) -> fc {g('model.hidden')}, activation "
        f"`{g('model.activation')}`; one policy head and one value head per game.",
        f"- PPO: Adam lr {g('train.learning_rate')} ({g('train.lr_schedule')} schedule within each game, eps "
        f"{g('train.adam_eps')}), {g('train.n_epochs')} epochs x {g('train.n_minibatches')} minibatches, clip "
        f"{g('train.clip_range')}, entropy {g('train.ent_coef')}, value coef {g('train.vf_coef')}, gamma "
        f"{g('train.gamma')}, GAE {g('train.gae_lambda')}, max grad norm {g('train.max_grad_norm')}; "
        f"{g('train.consolidation_samples')} states of the trained policy for each method's end-of-task "
        "consolidation.",
        "- Training: " + (
            f"deterministic mode (checkpoints every {g('train.checkpoint_every_updates')} updates; a resumed run "
            "ends bit for bit as an uninterrupted one on CPU)" if g("train.deterministic") else
            "not deterministic (time-based checkpoints; a resumed run continues statistically, not bitwise)")
        + f", torch threads {g('train.torch_threads')}, device `{cfg.get('device')}`.",
        f"- Environment: sticky actions {g('env.sticky_actions')}, {g('env.noop_max')} no-ops, frame skip "
        f"{g('env.frame_skip')}, {g('env.frame_stack')} stacked frames, episodic life "
        f"{'and' if g('env.episodic_life') else 'off,'} reward clipping {'on' if g('env.clip_rewards') else 'off'} "
        "in training only; scores are raw game returns.",
        f"- Evaluation: every {g('eval.every_steps'):,} env steps and at the end of each game, every game seen so "
        f"far with its own head: the mean raw score of {g('eval.episodes')} games ({g('eval.n_envs')} envs, "
        f"{ev_det} actions, games capped at {g('eval.max_frames'):,} frames). R[i][j] is the score on game j after "
        "training game i; the untrained network is scored once before training.",
        "",
        "Methods (hyperparameters from the runs' configs; configs/sweep_atari_forgetting.yaml says where each "
        "comes from):",
        "",
    ]
    rows = [[m.label, _hyper(m.runs[0].config), ", ".join(map(str, m.seeds))] for m in summary.methods]
    lines += _table(["method", "hyperparameters", "seeds"], rows) + [""]
    return lines


def _learning_section(summary: Summary) -> list[str]:
    ref = summary.reference
    if ref is None:
        return []
    lines = ["## Does PPO learn each game?", "",
             f"{ref.label}'s score on each game right after training it, R[j][j], against the untrained "
             "network's score (IQM over seeds [95% interval]); *learned* when the two intervals do not overlap.", ""]
    rows = []
    for j, game in enumerate(summary.tasks):
        diag, base = ref.per_task["diag"][j], summary.baseline[j]
        rows.append([game, fs.fmt_interval(base), fs.fmt_interval(diag), learned(diag, base)])
    lines += _table(["game", "untrained", "R[j][j]", "learned"], rows) + [""]
    return lines


def _results_section(summary: Summary) -> list[str]:
    _, how = load_rliable()
    lines = ["## Results", "",
             "IQM over seeds [95% stratified-bootstrap interval]. Raw scores are game returns; P, S and the "
             "normalized reward are relative to the fine-tuning run of the same seed.", ""]
    header = ["method", "seeds"] + [lab for _, lab, _ in fs.METRICS]
    rows = [[m.label, str(len(m.runs))] + [fs.fmt_interval(m.intervals[k]) for k in fs.METRIC_KEYS]
            for m in summary.methods]
    lines += _table(header, rows) + [""]
    if summary.others and summary.reference is not None:
        lines += [f"Forgetting, {summary.reference.label.lower()} minus each method (above zero = the method forgets "
                  "less):", ""]
        rows = [[m.label, fs.fmt_interval(m.vs_reference or fs.NAN_INTERVAL),
                 (m.vs_reference or fs.NAN_INTERVAL).side()] for m in summary.others]
        lines += _table(["method", "difference [95% interval]", "interval vs 0"], rows) + [""]
    lines += [f"- **{lab}**: {what}" for _, lab, what in fs.METRICS]
    lines += [
        f"- IQM: the 25% trimmed mean over seeds (with 3 seeds, their mean). Intervals: percentile 95% "
        f"stratified-bootstrap over seeds, {summary.reps} resamples, seed {summary.boot_seed}, computed with {how} "
        "(Agarwal et al. 2021); none with fewer than 3 seeds. Each metric is bootstrapped over the runs' values "
        "(raw returns differ in scale between games, so they are not pooled). The figures' bands and whiskers "
        "are the same bootstrap computed by clrl's vectorized implementation (clrl.report.stats, tested to agree "
        "with rliable), which is fast enough for every evaluation point.",
        "",
    ]
    return lines


def _r_section(summary: Summary) -> list[str]:
    T = len(summary.tasks)
    cells = [(i, j) for i in range(T) for j in range(i + 1)]
    header = ["method"] + [f"R[{i}][{j}]" for i, j in cells]
    rows = [[m.label] + [fs.fmt(m.R_iqm[i, j]) for i, j in cells] for m in summary.methods]
    games = ", ".join(f"{j} = {g}" for j, g in enumerate(summary.tasks))
    return ["## R, IQM over seeds", "", f"Score on game j after training game i ({games}).", "",
            *_table(header, rows), ""]


def _figures_section(figures: list[str], skipped: list[str]) -> list[str]:
    lines = ["## Figures", ""]
    for rel in figures:
        stem = rel.rsplit("/", 1)[-1].removesuffix(".png").removeprefix("atari_forgetting_")
        lines += [f"![{stem}]({rel})", "", FIGURE_CAPTIONS.get(stem, ""), ""]
    lines += [f"- not drawn: {s}" for s in skipped]
    if skipped:
        lines.append("")
    return lines


def _pilots_section(pilots: Pilots) -> list[str]:
    lines = ["## Pilot runs", "",
             "The settings tried before this one, from data/atari_forgetting/pilots.yaml (filled in by hand).", ""]
    if not pilots.pilots:
        lines += ["None recorded yet.", ""]
    for p in pilots.pilots:
        parts = []
        if p.games:
            parts.append("games " + ", ".join(p.games))
        if p.steps_per_task:
            parts.append(f"{p.steps_per_task:,} steps per game")
        if p.methods:
            parts.append("methods " + ", ".join(p.methods))
        if p.seeds:
            parts.append("seeds " + ", ".join(map(str, p.seeds)))
        if p.changes:
            parts.append("changes " + ", ".join(f"{k}={v}" for k, v in p.changes.items()))
        if p.wall_time:
            parts.append(f"wall time {p.wall_time}")
        text = f"- **{p.name}**" + (f" ({'; '.join(parts)})" if parts else "") + f": {p.outcome}"
        if p.command:
            text += f" Command: `{p.command}`"
        lines.append(text)
    lines.append("")
    if pilots.discussion:
        lines += ["## Discussion", "", pilots.discussion.strip(), ""]
    return lines


def _runs_section(summary: Summary) -> list[str]:
    T = len(summary.tasks)
    header = ["method", "seed"] + [f"R[{j}][{j}]" for j in range(T)] + [lab for _, lab, _ in fs.METRICS] + ["run time"]
    rows = []
    for m in summary.methods:
        for r, vals in zip(m.runs, m.per_run, strict=True):
            rows.append([m.label, str(r.seed)] + [fs.fmt(r.R[j, j]) for j in range(T)]
                        + [fs.fmt(vals[k]) for k in fs.METRIC_KEYS] + [fmt_duration(r.wall_seconds)])
    return ["## Runs", "", "Every run's numbers (the intervals above are over these).", "", *_table(header, rows), ""]


def markdown(
    summary: Summary, record: dict | None, pilots: Pilots, figures: list[str], skipped: list[str], notes: list[str]
) -> str:
    """The whole page. ``figures``: paths relative to docs/; ``notes``: problems with the data."""
    lines = [
        TITLE, "",
        "*Written by `python scripts/atari_forgetting.py` from the runs' results.json files in "
        "[data/atari_forgetting/](data/atari_forgetting/); do not edit by hand: `" + RENDER_COMMAND + "` rebuilds "
        "it from them.*", "",
        "## Conclusion", "",
        *summary.conclusion(), "",
        f"Rule: {fs.RULE}", "",
    ]
    if notes or summary.notes:
        lines += ["## Warnings", "", *[f"- {n}" for n in [*notes, *summary.notes]], ""]
    lines += _command_section(summary, record)
    lines += _setting_section(summary)
    lines += _learning_section(summary)
    lines += _results_section(summary)
    lines += _r_section(summary)
    lines += _figures_section(figures, skipped)
    lines += _pilots_section(pilots)
    lines += _runs_section(summary)
    return "\n".join(lines).rstrip() + "\n"
