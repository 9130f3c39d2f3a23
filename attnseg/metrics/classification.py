"""Classification metrics: the confusion matrix, accuracy and error, per-class recall, and their report files.

Rows of the confusion matrix are the true class, columns the predicted class (as ``metrics.segmentation``).
Knows nothing of models or the engine.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .report import _atomic_write, _csv_text, _jsonable, render_table


def confusion(pred: Sequence[int] | np.ndarray, target: Sequence[int] | np.ndarray, num_classes: int) -> np.ndarray:
    """(K, K) int64 counts, ``cm[t, p]`` = samples of true class t predicted as p. Out-of-range ids are refused."""
    pred, target = np.asarray(pred, np.int64).ravel(), np.asarray(target, np.int64).ravel()
    if pred.shape != target.shape:
        raise ValueError(f"{pred.size} predictions for {target.size} targets; give one prediction per sample")
    for name, v in (("prediction", pred), ("target", target)):
        if v.size and (v.min() < 0 or v.max() >= num_classes):
            raise ValueError(f"a {name} class id ({int(v.min())}..{int(v.max())}) is outside 0..{num_classes - 1}")
    return np.bincount(target * num_classes + pred, minlength=num_classes ** 2).reshape(num_classes, num_classes)


def summary(cm: np.ndarray, names: Sequence[str]) -> dict:
    """accuracy, error (= 1 − accuracy), mean per-class recall (``mAcc``) and per-class recall (NaN: no sample)."""
    cm = np.asarray(cm, np.int64)
    total = int(cm.sum())
    correct = int(np.trace(cm))
    support = cm.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = np.where(support > 0, np.diag(cm) / np.maximum(support, 1), np.nan)
    acc = correct / total if total else float("nan")
    return {"accuracy": acc, "error": 1 - acc if total else float("nan"),
            "mAcc": float(np.nanmean(recall)) if np.isfinite(recall).any() else float("nan"),
            "samples": total, "correct": correct,
            "per_class": {str(n): float(r) for n, r in zip(names, recall)},
            "confusion": cm.tolist()}


def format_confusion(cm: np.ndarray, names: Sequence[str]) -> str:
    """The confusion matrix as text: one row per true class, one column per predicted class, then the recall."""
    cm = np.asarray(cm, np.int64)
    support = cm.sum(1)
    cols = [("true \\ pred", [str(n) for n in names])]
    for j, n in enumerate(names):
        cols.append((str(n), [str(int(v)) for v in cm[:, j]]))
    cols.append(("recall %", [f"{100 * cm[i, i] / support[i]:.1f}" if support[i] else "-" for i in range(len(names))]))
    return render_table(cols)


def format_classification(s: dict, names: Sequence[str]) -> str:
    """Accuracy and error in %, then the confusion matrix."""
    head = (f"classification ({s['samples']} samples): accuracy {100 * s['accuracy']:.2f} %, error "
            f"{100 * s['error']:.2f} %, mean per-class recall {100 * s['mAcc']:.2f} %")
    return head + "\n" + format_confusion(np.asarray(s["confusion"]), names)


def save_classification(out_dir: str | Path, s: dict, names: Sequence[str], extra: dict | None = None) -> Path:
    """Writes ``metrics.json`` (everything in ``s`` and ``extra``) and ``confusion.csv`` atomically."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    record = _jsonable({"task": "classification", "classes": list(names), **s, **(extra or {})})
    _atomic_write(out / "metrics.json", lambda f: f.write((json.dumps(record, indent=1) + "\n").encode()))
    cm = np.asarray(s["confusion"], np.int64)
    table = [["true \\ pred", *map(str, names)]] + [[str(n), *map(str, row)] for n, row in zip(names, cm.tolist())]
    _atomic_write(out / "confusion.csv", lambda f: f.write(_csv_text(table).encode()))
    return out
