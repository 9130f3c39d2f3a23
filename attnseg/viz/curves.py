"""Learning curves from a run's JSON-lines log: training loss and validation mIoU against wall-clock time.

Records the plot understands (others, and lines that are not JSON such as a half-written last line, are
skipped)::

    {"step": 120, "epoch": 0.4, "loss": 1.73, "lr": 0.01, "elapsed": 95.2}          training
    {"kind": "val", "step": 300, "elapsed": 260.0, "mIoU": 0.41, "aAcc": 0.83}       validation

``elapsed`` is in seconds, ``mIoU`` and ``aAcc`` are fractions. Drawn with matplotlib's Agg canvas directly,
so no pyplot state or interactive backend is involved.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path


def read_log(path: str | Path) -> list[dict]:
    """The JSON objects of a JSON-lines file, one per line; blank, malformed and non-object lines skipped."""
    records = []
    for line in Path(path).read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def split_records(records: Iterable[dict]) -> tuple[list[dict], list[dict]]:
    """(training records with ``loss`` and ``elapsed``, validation records with ``mIoU`` and ``elapsed``)."""
    train, val = [], []
    for r in records:
        if not _is_number(r.get("elapsed")):
            continue
        kind = r.get("kind", "train")
        if kind == "train" and _is_number(r.get("loss")):
            train.append(r)
        elif kind == "val" and _is_number(r.get("mIoU")):
            val.append(r)
    return train, val


def smooth(values: list[float], weight: float = 0.9) -> list[float]:
    """Exponential moving average with bias correction (TensorBoard's smoothing)."""
    out, avg = [], 0.0
    for i, v in enumerate(values, 1):
        avg = weight * avg + (1 - weight) * v
        out.append(avg / (1 - weight ** i))
    return out


def _empty(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="0.4")


def _plot_loss(ax, train: list[dict]) -> None:
    ax.set_title("training loss")
    ax.set_xlabel("time (min)")
    ax.set_ylabel("loss")
    if not train:
        return _empty(ax, "no training records")
    t = [r["elapsed"] / 60 for r in train]
    loss = [r["loss"] for r in train]
    ax.plot(t, loss, color="C0", alpha=0.3 if len(loss) > 20 else 1.0, lw=1, label="loss")
    if len(loss) > 20:
        ax.plot(t, smooth(loss), color="C0", lw=1.5, label="smoothed")
        ax.legend(loc="upper right")
    ax.grid(alpha=0.3)


def _plot_miou(ax, val: list[dict]) -> None:
    ax.set_xlabel("time (min)")
    ax.set_ylabel("mIoU (%)")
    if not val:
        ax.set_title("validation mIoU")
        return _empty(ax, "no validation records")
    t = [r["elapsed"] / 60 for r in val]
    miou = [100 * r["mIoU"] for r in val]
    best = max(range(len(miou)), key=miou.__getitem__)
    ax.set_title(f"validation mIoU (best {miou[best]:.1f} at {t[best]:.1f} min)")
    ax.plot(t, miou, "o-", color="C1", ms=3)
    ax.plot(t[best], miou[best], "*", color="C3", ms=10)
    ax.grid(alpha=0.3)


def plot_learning_curve(log: str | Path | Iterable[dict], out_png: str | Path, title: str | None = None) -> Path:
    """Two panels, training loss and validation mIoU (%), against elapsed minutes, saved as a PNG.

    Args:
        log: path of a JSON-lines log, or its records.
        out_png: where to write the figure (parent folders are created).
        title: figure title (default: the log's file name, if any).
    Returns:
        out_png as a Path.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    is_path = isinstance(log, (str, Path))
    train, val = split_records(read_log(log) if is_path else log)
    fig = Figure(figsize=(10, 3.6), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    ax_loss, ax_miou = fig.subplots(1, 2)
    _plot_loss(ax_loss, train)
    _plot_miou(ax_miou, val)
    if title or is_path:
        fig.suptitle(title or Path(log).name)
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png)
    return out_png
