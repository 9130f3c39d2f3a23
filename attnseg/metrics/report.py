"""Metric reports: the mmsegmentation text tables, and the files a run directory keeps.

``format_table`` prints what mmsegmentation's evaluation prints (``per class results:`` with Class | IoU | Acc,
then ``Summary:`` with aAcc | mIoU | mAcc), character for character: percentages rounded to 2 decimals and
written as Python writes the rounded float (``90.0``, ``12.35``, ``nan``), in centred PrettyTable-style boxes.
The tables are rendered here; PrettyTable is not a dependency.

``save_metrics`` writes ``metrics.json`` (atomically, NaN as null), ``per_class.csv``, ``confusion.csv`` and
``confusion.npy``.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

PER_CLASS_KEYS = ("IoU", "Acc")
SUMMARY_KEYS = ("aAcc", "mIoU", "mAcc")


def format_table(metrics: dict, class_names: Sequence[str]) -> str:
    """mmsegmentation's per-class and summary tables for a ``metrics_from_confusion`` result.

    Args:
        metrics: ``aAcc``, ``mIoU``, ``mAcc`` (fractions) and per-class ``IoU``, ``Acc`` lists (NaN = absent).
        class_names: one name per class, in class-id order.

    Returns:
        The text, without a trailing newline::

            per class results:
            +-------+-------+-------+
            | Class |  IoU  |  Acc  |
            +-------+-------+-------+
            |  road |  90.0 | 100.0 |
            ...
            Summary:
            +------+------+-------+
            | aAcc | mIoU |  mAcc |
            ...
    """
    _check_class_count(metrics, class_names)
    per_class = [("Class", [str(n) for n in class_names])]
    per_class += [(key, [_percent(v) for v in metrics[key]]) for key in PER_CLASS_KEYS]
    summary = [(key, [_percent(metrics[key])]) for key in SUMMARY_KEYS]
    return "\n".join(["per class results:", render_table(per_class), "Summary:", render_table(summary)])


def render_table(columns: Sequence[tuple[str, Sequence[str]]]) -> str:
    """A PrettyTable-style box: ``+---+`` rules, one space of padding, every cell centred.

    Args:
        columns: (header, cells) per column; all columns hold the same number of cells.
    """
    widths = [max(len(h), *(len(c) for c in cells)) for h, cells in columns]
    rule = "+" + "+".join("-" * (w + 2) for w in widths) + "+"

    def line(cells: Sequence[str]) -> str:
        return "|" + "|".join(f" {_centre(c, w)} " for c, w in zip(cells, widths, strict=True)) + "|"

    rows = [line(r) for r in zip(*(cells for _, cells in columns), strict=True)]
    return "\n".join([rule, line([h for h, _ in columns]), rule, *rows, rule])


def _centre(text: str, width: int) -> str:
    """PrettyTable's centring: with an odd excess, odd-length text leans left and even-length text right."""
    excess = width - len(text)
    left = excess // 2 + (excess % 2 if len(text) % 2 == 0 else 0)
    return " " * left + text + " " * (excess - left)


def _percent(value: float) -> str:
    """mmsegmentation's cell: ``np.round(value * 100, 2)`` written as a plain float ("nan" stays "nan")."""
    return str(float(np.round(float(value) * 100, 2)))


def save_metrics(
    out_dir: str | os.PathLike,
    metrics: dict,
    class_names: Sequence[str],
    confusion: np.ndarray | torch.Tensor,
    extra: dict | None = None,
) -> dict[str, Path]:
    """Writes the metrics of one evaluation into ``out_dir`` (created if needed).

    Files:
        ``metrics.json``: every entry of ``metrics`` (fractions), ``classes``, ``per_class`` (name -> {IoU, Acc}),
        ``confusion`` (nested lists) and the entries of ``extra`` at the top level; NaN is written as null.
        ``per_class.csv``: ``class,IoU,Acc`` rows, fractions, ``nan`` for an absent class.
        ``confusion.csv``: header ``gt/pred,<class names>``; one row per ground-truth class, named in the first
        column, one count per predicted class (``pandas.read_csv(path, index_col=0)`` reads it back).
        ``confusion.npy``: the (K, K) int64 counts.

    Every file is written to a temporary name and moved into place, so a reader never sees half a file.

    Returns:
        Paths by kind: ``json``, ``per_class_csv``, ``confusion_csv``, ``confusion_npy``.
    """
    _check_class_count(metrics, class_names)
    names = [str(n) for n in class_names]
    confusion = _as_count_matrix(confusion, len(names))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        "json": out / "metrics.json",
        "per_class_csv": out / "per_class.csv",
        "confusion_csv": out / "confusion.csv",
        "confusion_npy": out / "confusion.npy",
    }
    record = _metrics_record(metrics, names, confusion, extra or {})
    _atomic_write(paths["json"], lambda f: f.write(json.dumps(record, indent=2, allow_nan=False).encode()))
    _atomic_write(paths["per_class_csv"], lambda f: f.write(_per_class_csv(metrics, names).encode()))
    _atomic_write(paths["confusion_csv"], lambda f: f.write(_confusion_csv(confusion, names).encode()))
    _atomic_write(paths["confusion_npy"], lambda f: np.save(f, confusion))
    return paths


def _metrics_record(metrics: dict, names: list[str], confusion: np.ndarray, extra: dict) -> dict:
    """The JSON document: metrics, class names, per-class dict, confusion and the caller's extra entries."""
    record = {k: _jsonable(v) for k, v in metrics.items()}
    record["classes"] = names
    record["per_class"] = {
        name: {key: _jsonable(metrics[key][i]) for key in PER_CLASS_KEYS} for i, name in enumerate(names)
    }
    record["confusion"] = confusion.tolist()
    clash = sorted(set(record) & set(extra))
    if clash:
        raise ValueError(f"extra entries {clash} would overwrite metric entries of the same name; rename them")
    record.update({k: _jsonable(v) for k, v in extra.items()})
    return record


def _per_class_csv(metrics: dict, names: list[str]) -> str:
    rows = [["class", *PER_CLASS_KEYS]]
    rows += [[name, *(repr(float(metrics[key][i])) for key in PER_CLASS_KEYS)] for i, name in enumerate(names)]
    return _csv_text(rows)


def _confusion_csv(confusion: np.ndarray, names: list[str]) -> str:
    rows = [["gt/pred", *names]]
    rows += [[name, *(str(int(n)) for n in row)] for name, row in zip(names, confusion, strict=True)]
    return _csv_text(rows)


def _csv_text(rows: list[list[str]]) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(rows)
    return buf.getvalue()


def _atomic_write(path: Path, write: Callable[[Any], Any]) -> None:
    """Calls ``write(binary_file)`` on a temporary file beside ``path``, then renames it onto ``path``."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o644)  # mkstemp's 0o600 would hide the file from other readers
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _jsonable(value: Any) -> Any:
    """Plain JSON values: numpy/torch scalars and arrays to Python, NaN and infinities to None."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    if isinstance(value, np.ndarray):
        value = value.tolist()
    elif isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def _as_count_matrix(confusion: np.ndarray | torch.Tensor, num_classes: int) -> np.ndarray:
    if isinstance(confusion, torch.Tensor):
        confusion = confusion.detach().cpu().numpy()
    confusion = np.asarray(confusion)
    if confusion.shape != (num_classes, num_classes):
        raise ValueError(f"confusion matrix has shape {confusion.shape}; expected ({num_classes}, {num_classes})")
    return confusion.astype(np.int64)


def _check_class_count(metrics: dict, class_names: Sequence[str]) -> None:
    for key in PER_CLASS_KEYS:
        if len(metrics[key]) != len(class_names):
            raise ValueError(
                f"metrics[{key!r}] has {len(metrics[key])} entries but {len(class_names)} class names were given")


#: the instance table's columns: (key, header, percent?)
INSTANCE_COLUMNS = (("SBD", "SBD", True), ("|DiC|", "|DiC|", False), ("DiC", "DiC", False),
                    ("fgDice", "fgDice", True), ("DSB", "DSB", True), ("PQ", "PQ", True), ("AP", "AP", True),
                    ("AP50", "AP50", True), ("AP75", "AP75", True), ("MWCov", "MWCov", True),
                    ("MUCov", "MUCov", True), ("AvgFP", "AvgFP", False), ("AvgFN", "AvgFN", False))


def format_instance_table(summary: dict) -> str:
    """The dataset means of ``attnseg.metrics.instance`` as one box (scores in %, counts and rates as numbers;
    columns absent from ``summary`` are left out, NaN shows as -)."""
    def cell(key, pct):
        v = summary.get(key)
        if v is None or (isinstance(v, float) and not math.isfinite(v)):
            return "-"
        return _percent(v) if pct else f"{v:.3f}"
    cols = [(head, [cell(key, pct)]) for key, head, pct in INSTANCE_COLUMNS if key in summary]
    return f"instance metrics ({summary.get('images', '?')} images):\n" + render_table(cols)


def save_instance_metrics(out_dir: str | Path, summary: dict, rows: list[dict], extra: dict | None = None) -> Path:
    """Writes ``metrics.json`` (the means and ``extra``) and ``per_image.csv`` (one row per image: its name, counts
    and every per-image metric) atomically into ``out_dir``; returns the folder."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    record = _jsonable({"task": "instances", **summary, **(extra or {})})
    _atomic_write(out / "metrics.json", lambda f: f.write((json.dumps(record, indent=1) + "\n").encode()))
    keys = ["image", "n_pred", "n_gt"] + [k for k, _, _ in INSTANCE_COLUMNS if rows and k in rows[0]]
    table = [keys] + [["" if r.get(k) is None or (isinstance(r.get(k), float) and not math.isfinite(r[k]))
                       else (f"{r[k]:.6g}" if isinstance(r.get(k), float) else str(r.get(k))) for k in keys]
                      for r in rows]
    _atomic_write(out / "per_image.csv", lambda f: f.write(_csv_text(table).encode()))
    return out
