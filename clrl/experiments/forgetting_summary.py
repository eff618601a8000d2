"""The experiment's runs grouped by method, with every number the document and figures show.

Each run is normalized by the fine-tuning run of its own seed (the sweep wires ``reference:``
the same way); the document recomputes this from the committed copies, so ``--render`` needs
nothing but ``docs/data/atari_forgetting/``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from clrl.experiments import forgetting_stats as fs
from clrl.experiments.forgetting_data import RunData, method_label


@dataclass
class MethodSummary:
    method: str
    label: str
    regularizer: str
    runs: list[RunData]
    per_run: list[dict[str, float]]
    intervals: dict[str, fs.Interval]
    per_task: dict[str, list[fs.Interval]]  # plasticity, stability, diag: one interval per task
    R_iqm: np.ndarray  # T x T, IQM over seeds (NaN above the diagonal)
    norm_curve: tuple[np.ndarray, list[fs.Interval]]
    first_curve: tuple[np.ndarray, list[fs.Interval]]
    vs_reference: fs.Interval | None = None  # reference's forgetting minus this method's

    @property
    def seeds(self) -> list[int]:
        return [r.seed for r in self.runs]


@dataclass
class Summary:
    tasks: list[str]
    methods: list[MethodSummary]
    reference: MethodSummary | None
    baseline: list[fs.Interval]  # the untrained network's score per game, over the reference's seeds
    notes: list[str] = field(default_factory=list)
    reps: int = 2000
    boot_seed: int = 0

    @property
    def others(self) -> list[MethodSummary]:
        return [m for m in self.methods if m is not self.reference]

    def conclusion(self) -> list[str]:
        if self.reference is None:
            return ["No fine-tuning runs: there is nothing to compare the methods with."]
        ref = self.reference
        verdicts = [fs.learned(ref.per_task["diag"][j], self.baseline[j]) for j in range(len(self.tasks))]
        diffs = [(m.label, m.vs_reference or fs.NAN_INTERVAL) for m in self.others]
        return [fs.learning_sentence(self.tasks, verdicts, ref.label),
                *fs.conclusion(ref.intervals["forgetting"], ref.intervals["first_drop"], diffs, ref.label)]


def _reference_method(groups: dict[str, list[RunData]]) -> str | None:
    ft = [m for m, runs in groups.items() if runs[0].regularizer == "none"]
    if not ft:
        return None
    return "finetune" if "finetune" in ft else ft[0]


def summarize(runs: list[RunData], reps: int = 2000, seed: int = 0) -> Summary:
    """Group ``runs`` (sorted: fine-tuning, EWC, MAS, AGS-CL) and compute every interval."""
    groups: dict[str, list[RunData]] = {}
    for r in runs:
        groups.setdefault(r.method, []).append(r)
    ref_method = _reference_method(groups)
    refs = {r.seed: r for r in groups.get(ref_method, [])} if ref_method else {}
    tasks = runs[0].tasks
    T = len(tasks)
    notes: list[str] = []
    methods = []
    for method, members in groups.items():
        per_run, tasks_rows, norm_series, first_series = [], [], [], []
        for r in members:
            ref = refs.get(r.seed)
            if ref is None:
                notes.append(f"{method} seed {r.seed}: no fine-tuning run of this seed; P and the normalized "
                             "reward are n/a")
                ref = _nan_reference(r)
            per_run.append(fs.run_metrics(r, ref))
            tasks_rows.append(fs.per_task(r, ref))
            norm_series.append(fs.normalized_curve(r, ref))
            first_series.append(fs.first_game_curve(r))
        intervals = {k: fs.interval([p[k] for p in per_run], reps, seed) for k in fs.METRIC_KEYS}
        per_task = {  # P and S per task are only drawn: clrl's fast bootstrap; R[j][j] is in a table: rliable
            key: [fs.interval([row[key][j] for row in tasks_rows], reps, seed, use_rliable=key == "diag")
                  for j in range(T)]
            for key in ("plasticity", "stability", "diag")
        }
        R_iqm = np.full((T, T), np.nan)
        for i in range(T):
            for j in range(i + 1):
                R_iqm[i, j] = fs.iqm_or_nan([r.R[i, j] for r in members])
        methods.append(MethodSummary(
            method=method, label=method_label(method, members[0].regularizer), regularizer=members[0].regularizer,
            runs=members, per_run=per_run, intervals=intervals, per_task=per_task, R_iqm=R_iqm,
            norm_curve=fs.curve_intervals(norm_series, reps, seed),
            first_curve=fs.curve_intervals(first_series, reps, seed),
        ))
    reference = next((m for m in methods if m.method == ref_method), None)
    baseline = [fs.NAN_INTERVAL] * T
    if reference is not None:
        for m in methods:
            if m is not reference:
                m.vs_reference = fs.difference(
                    [p["forgetting"] for p in reference.per_run], [p["forgetting"] for p in m.per_run], reps, seed)
        base_runs = [r for r in reference.runs if r.baseline is not None and len(r.baseline) == T]
        if base_runs:
            baseline = [fs.interval([r.baseline[j] for r in base_runs], reps, seed) for j in range(T)]
    return Summary(tasks, methods, reference, baseline, notes, reps, seed)


def _nan_reference(run: RunData) -> RunData:
    """A stand-in reference whose scores are all NaN: every normalized number comes out n/a."""
    from dataclasses import replace

    return replace(run, R=np.full_like(run.R, np.nan),
                   curve_scores=[[None] * len(s) for s in run.curve_scores])
