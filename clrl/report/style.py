"""Paper-ready matplotlib style: inch sizes, >= 8 pt fonts, a colorblind-safe palette, atomic saves."""

from __future__ import annotations

import io
from collections.abc import Iterable
from contextlib import contextmanager
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display

import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from clrl.io import atomic_write_bytes  # noqa: E402

COLUMN_WIDTH = 3.4  # inches: one column of a two-column paper
PAGE_WIDTH = 7.0  # inches: full text width
DPI = 300

# Okabe & Ito (2008), distinguishable under the common color-vision deficiencies.
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000")
LINESTYLES = ("-", "--", "-.", ":")
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")

RC = {
    "font.size": 9,
    "axes.titlesize": 9,
    "axes.labelsize": 9,
    "xtick.labelsize": 8,
    "ytick.labelsize": 8,
    "legend.fontsize": 8,
    "legend.title_fontsize": 8,
    "figure.titlesize": 10,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "grid.linewidth": 0.5,
    "lines.linewidth": 1.4,
    "pdf.fonttype": 42,  # TrueType in PDFs: editable text, accepted by publishers
    "ps.fonttype": 42,
    "savefig.bbox": "tight",
    "savefig.pad_inches": 0.03,
}


def color(i: int) -> str:
    return PALETTE[i % len(PALETTE)]


@contextmanager
def paper_style():
    """The report's rcParams for the duration of a block; the caller's settings come back after."""
    with plt.rc_context(RC):
        yield


def save(fig: Figure, out_dir: Path, stem: str, formats: Iterable[str] = ("png", "pdf")) -> list[Path]:
    """Save ``fig`` as ``out_dir/stem.<fmt>`` for each format (atomic writes), close it, return the paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    try:
        for ext in formats:
            buf = io.BytesIO()
            fig.savefig(buf, format=ext, dpi=DPI)
            path = out_dir / f"{stem}.{ext}"
            atomic_write_bytes(path, buf.getvalue())
            paths.append(path)
    finally:
        plt.close(fig)
    return paths
