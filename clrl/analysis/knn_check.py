"""Real check of Srivastava et al. 2015, Table 1, on scikit-learn's bundled 8x8 digits.

An MLP 64 -> H -> H -> 10 with a competitive activation is trained with Adam; then test examples
are classified by kNN over the *training* examples' penultimate-layer submasks (Hamming
distance) and activations (Euclidean distance), and compared with the net's own accuracy.
The paper's effect: submask kNN comes within a few points of the net.

For maxout with block k the Linear layers are k times wider, so every activation outputs H
features; its submask has k*H bits of which H are set (the winners). "Activations" are the
penultimate layer's outputs, i.e. what the head sees (for maxout: the pooled values).
Also recorded: the submask flip rate of the training set between consecutive epochs (paper,
Fig. 4), the dead-unit share and the Hoyer sparsity of the penultimate activations.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from clrl.layers import build_activation

from .knn import knn_accuracy
from .sparsity import hoyer_sparsity
from .submasks import capture_layer, dead_unit_share, flip_rate, submask

__all__ = [
    "CheckResult",
    "build_mlp",
    "load_digits_split",
    "run_one",
    "run_check",
    "summarize",
    "write_markdown",
    "plot_results",
]

DEFAULT_SPECS = ("relu", "lwta:block=2", "maxout:block=2")


@dataclass
class CheckResult:
    """Scores of one (activation, seed) run; accuracies in [0, 1]."""

    spec: str
    seed: int
    net_acc: float
    knn: dict[str, float]  # e.g. {"submask k=1": .., "activation k=5": ..}
    flip_rates: list[float] = field(default_factory=list)  # per epoch, from epoch 2 on
    dead_share: float = float("nan")
    hoyer: float = float("nan")
    seconds: float = float("nan")
    hidden: int = 256
    epochs: int = 30


def load_digits_split(seed: int, test_size: float = 0.3) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Seeded stratified split of sklearn's digits (1,797 images, no download), pixels / 16."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    xtr, xte, ytr, yte = train_test_split(x, y, test_size=test_size, random_state=seed, stratify=y)
    f = lambda a: torch.tensor(a / 16.0, dtype=torch.float32)  # noqa: E731
    return f(xtr), torch.tensor(ytr), f(xte), torch.tensor(yte)


def build_mlp(spec: str, hidden: int = 256, depth: int = 2, in_dim: int = 64, n_out: int = 10) -> nn.Sequential:
    """``in_dim -> hidden (x depth) -> n_out``; each Linear is widened so that the activation
    outputs ``hidden`` features (maxout:block=k gets k*hidden pre-activations)."""
    layers: list[nn.Module] = []
    width = in_dim
    for _ in range(depth):
        act = build_activation(spec)
        factor = max(1, (2 * hidden) // act.out_width(2 * hidden))
        layers += [nn.Linear(width, hidden * factor), act]
        width = act.out_width(hidden * factor)
    layers.append(nn.Linear(width, n_out))
    return nn.Sequential(*layers)


def run_one(
    spec: str,
    seed: int,
    hidden: int = 256,
    epochs: int = 30,
    lr: float = 1e-3,
    batch_size: int = 64,
    ks: tuple[int, ...] = (1, 5),
) -> CheckResult:
    """Train one net and score it against kNN on its penultimate layer."""
    t0 = time.perf_counter()
    xtr, ytr, xte, yte = load_digits_split(seed)
    torch.manual_seed(seed)
    model = build_mlp(spec, hidden=hidden)
    act = model[-2]  # penultimate activation
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    loss_fn = nn.CrossEntropyLoss()
    flips: list[float] = []
    prev_mask: Tensor | None = None
    for _ in range(epochs):
        model.train()
        for idx in torch.randperm(len(xtr), generator=gen).split(batch_size):
            opt.zero_grad()
            loss_fn(model(xtr[idx]), ytr[idx]).backward()
            opt.step()
        pre, _ = capture_layer(model, act, xtr)
        mask = submask(act, pre)
        if prev_mask is not None:
            flips.append(flip_rate(prev_mask, mask))
        prev_mask = mask

    model.eval()
    with torch.no_grad():
        net_acc = (model(xte).argmax(1) == yte).double().mean().item()
    pre_tr, out_tr = capture_layer(model, act, xtr)
    pre_te, out_te = capture_layer(model, act, xte)
    m_tr, m_te = submask(act, pre_tr), submask(act, pre_te)
    knn = {}
    for k in ks:
        knn[f"submask k={k}"] = knn_accuracy(m_tr, ytr, m_te, yte, k=k, metric="hamming")
    for k in ks:
        knn[f"activation k={k}"] = knn_accuracy(out_tr, ytr, out_te, yte, k=k, metric="euclidean")
    return CheckResult(
        spec=spec,
        seed=seed,
        net_acc=net_acc,
        knn=knn,
        flip_rates=flips,
        dead_share=dead_unit_share(torch.cat([m_tr, m_te])),
        hoyer=hoyer_sparsity(out_te),
        seconds=time.perf_counter() - t0,
        hidden=hidden,
        epochs=epochs,
    )


def run_check(
    specs: tuple[str, ...] = DEFAULT_SPECS, seeds: tuple[int, ...] = (0, 1, 2), **kwargs
) -> list[CheckResult]:
    return [run_one(spec, seed, **kwargs) for spec in specs for seed in seeds]


def summarize(results: list[CheckResult]) -> dict[str, dict[str, tuple[float, float]]]:
    """``{spec: {column: (mean, std over seeds)}}`` with columns "net", the kNN ones, "dead",
    "hoyer", "flip (last epoch)"."""
    out: dict[str, dict[str, tuple[float, float]]] = {}
    for spec in dict.fromkeys(r.spec for r in results):
        rows = [r for r in results if r.spec == spec]
        cols: dict[str, list[float]] = {"net": [r.net_acc for r in rows]}
        for key in rows[0].knn:
            cols[key] = [r.knn[key] for r in rows]
        cols["flip (last epoch)"] = [r.flip_rates[-1] if r.flip_rates else float("nan") for r in rows]
        cols["dead"] = [r.dead_share for r in rows]
        cols["hoyer"] = [r.hoyer for r in rows]
        out[spec] = {k: (float(np.mean(v)), float(np.std(v))) for k, v in cols.items()}
    return out


def write_markdown(results: list[CheckResult], path: str | Path, command: str, figures: list[str]) -> str:
    """Write the result table (percent, mean ± std over seeds) and return the text."""
    summary = summarize(results)
    seeds = sorted({r.seed for r in results})
    knn_cols = list(results[0].knn)
    h, ep = results[0].hidden, results[0].epochs
    acc_cols = ["net"] + knn_cols
    lines = [
        "# kNN on submasks: scikit-learn digits",
        "",
        "Check of Srivastava et al. 2015 (*Understanding locally competitive networks*), Table 1:",
        "a test example is classified by k-nearest neighbours over the training examples'",
        "penultimate-layer **submasks** (which units are active: ReLU > 0, the LWTA/maxout block",
        "winners; Hamming distance) or **activations** (the layer's outputs; Euclidean distance),",
        "and compared with the trained net's own test accuracy.",
        "",
        "Setup: sklearn `load_digits` (1,797 8x8 images), stratified 70/30 split per seed, pixels/16;",
        f"MLP 64 -> {h} -> {h} -> 10 (maxout:block=k widens the Linear layers k times so every",
        f"activation outputs {h} features); Adam lr 1e-3, batch 64, {ep} epochs, no regularization.",
        f"Seeds {seeds}; mean ± std over seeds, test accuracy in %.",
        "",
        f"Regenerate: `{command}`",
        "",
        "| activation | " + " | ".join(acc_cols) + " | net - best submask kNN |",
        "|---|" + "---:|" * (len(acc_cols) + 1),
    ]
    for spec, cols in summary.items():
        cells = [f"{100 * cols[c][0]:.1f} ± {100 * cols[c][1]:.1f}" for c in acc_cols]
        gaps = [100 * (r.net_acc - max(v for k, v in r.knn.items() if k.startswith("submask")))
                for r in results if r.spec == spec]
        lines.append(f"| `{spec}` | " + " | ".join(cells) + f" | {np.mean(gaps):+.1f} |")
    lines += [
        "",
        "Other statistics of the penultimate layer (mean over seeds): submask flip rate on the",
        "training set between the last two epochs (paper, Fig. 4), share of dead units (never",
        "active on train+test), Hoyer sparsity of the test activations (1 = one-hot, 0 = dense).",
        "",
        "| activation | flip rate (last epoch) | dead units | Hoyer sparsity |",
        "|---|---:|---:|---:|",
    ]
    for spec, cols in summary.items():
        lines.append(
            f"| `{spec}` | {100 * cols['flip (last epoch)'][0]:.2f}% | "
            f"{100 * cols['dead'][0]:.1f}% | {cols['hoyer'][0]:.3f} |"
        )
    lines += [
        "",
        "Differences from the paper's setting: 1,257 training images of 8x8 digits instead of",
        "60,000 MNIST images, 256 instead of about 1,000 penultimate units, a fixed short training",
        "without dropout or early stopping, and fixed k instead of k chosen on validation data.",
        "Dead units cannot change a Hamming distance (their bit is always 0), so they do not hurt",
        "submask kNN directly; they only shorten the useful code.",
        "",
        *[f"![{Path(f).stem}]({f})" for f in figures],
        "",
    ]
    text = "\n".join(lines)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(text)
    return text


def plot_results(results: list[CheckResult], bar_path: str | Path, flip_path: str | Path | None = None) -> None:
    """Grouped bar chart (net vs kNN variants per activation) and, optionally, flip-rate curves."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = summarize(results)
    specs = list(summary)
    cols = ["net"] + list(results[0].knn)
    labels = {"net": "net (softmax)"}
    x = np.arange(len(specs))
    width = 0.8 / len(cols)
    colors = plt.get_cmap("tab10").colors
    fig, ax = plt.subplots(figsize=(9, 5.2))
    for i, c in enumerate(cols):
        means = [100 * summary[s][c][0] for s in specs]
        stds = [100 * summary[s][c][1] for s in specs]
        hatch = "//" if c.startswith("activation") else None
        ax.bar(x + (i - (len(cols) - 1) / 2) * width, means, width, yerr=stds, capsize=3,
               label=labels.get(c, "kNN on " + c), color=colors[i], hatch=hatch, edgecolor="black",
               linewidth=0.5)
    lo = min(100 * summary[s][c][0] for s in specs for c in cols)
    ax.set_ylim(max(0, np.floor(lo / 5) * 5 - 5), 100)
    ax.set_xticks(x, [f"{s}" for s in specs])
    ax.set_xlabel("penultimate-layer activation")
    ax.set_ylabel("test accuracy (%)")
    n_seeds = len({r.seed for r in results})
    ax.set_title(f"sklearn digits: net vs kNN on penultimate submasks / activations ({n_seeds} seeds)")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), fontsize=8, ncol=len(cols), frameon=False)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    Path(bar_path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(bar_path, dpi=120)
    plt.close(fig)

    if flip_path is None:
        return
    fig, ax = plt.subplots(figsize=(7, 4))
    for i, spec in enumerate(specs):
        curves = np.array([r.flip_rates for r in results if r.spec == spec])
        epochs = np.arange(2, curves.shape[1] + 2)
        ax.plot(epochs, 100 * curves.mean(0), label=spec, color=colors[i])
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("flip rate vs previous epoch (%)")
    ax.set_title("Penultimate-layer submask flips on the training set\n(share of unit x example entries that changed)")
    ax.legend()
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    fig.savefig(flip_path, dpi=120)
    plt.close(fig)
