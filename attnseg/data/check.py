"""Scan a dataset end to end and report every problem at once: the engine behind ``attnseg data check SPEC``.

Training stops at the first bad file; this check decodes every sample of every split, collects each
DataError (corrupt, truncated, empty or non-image file, label of the wrong size, value outside the classes,
missing or empty split, JPEG masks, an image listed twice in a split list) and counts pixels per class, so that
one run lists everything to fix and shows the class balance. A training split whose every label pixel is ignore
is a problem (training would run with loss 0); any other split without a class pixel is a warning (its scores
would be empty, which is expected for an unlabelled test split).

    >>> report = check_dataset("camvid:../shared/data/camvid")
    >>> print(report.format())
"""

from __future__ import annotations

import importlib
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from . import READERS, build_dataset, parse_data_spec
from .dataset import SegmentationDataset, is_training_split
from .io import DataError


@dataclass
class SplitStats:
    """What one split holds.

    Attributes:
        samples: number of samples listed (0 when the split could not be built).
        bad_samples: samples whose loading raised DataError.
        sizes: (H, W) -> number of images of that size.
        class_pixels: (K,) int64 pixels per class id.
        ignore_pixels: pixels equal to the ignore index.
        error: the DataError message when the split itself is missing or empty, else None.
    """

    samples: int = 0
    bad_samples: int = 0
    sizes: Counter = field(default_factory=Counter)
    class_pixels: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    ignore_pixels: int = 0
    error: str | None = None

    def to_dict(self) -> dict:
        return {"samples": self.samples, "bad_samples": self.bad_samples,
                "sizes": {f"{h}x{w}": n for (h, w), n in sorted(self.sizes.items())},
                "class_pixels": self.class_pixels.tolist(), "ignore_pixels": self.ignore_pixels,
                "error": self.error}


@dataclass
class CheckReport:
    """Result of ``check_dataset``.

    Attributes:
        spec: the dataset spec that was checked ("kind:root").
        names: class names (empty when no split could be built).
        ignore_index: the ignore label value.
        splits: split name -> SplitStats.
        problems: one message per problem, each naming the split and the file (at most ``max_problems``).
        problems_total: number of problems found, including those past ``max_problems``.
        warnings: findings that do not stop training (a val or test split without any class pixel).
    """

    spec: str
    names: list[str] = field(default_factory=list)
    ignore_index: int = 255
    splits: dict[str, SplitStats] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    problems_total: int = 0
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.problems_total == 0

    @property
    def class_pixels(self) -> np.ndarray:
        """(K,) int64 pixels per class over all splits."""
        total = np.zeros(len(self.names), np.int64)
        for s in self.splits.values():
            if len(s.class_pixels):
                total += s.class_pixels
        return total

    @property
    def ignore_pixels(self) -> int:
        return sum(s.ignore_pixels for s in self.splits.values())

    @property
    def image_sizes(self) -> Counter:
        """(H, W) -> number of images, over all splits."""
        return sum((s.sizes for s in self.splits.values()), Counter())

    def add_problem(self, message: str, max_problems: int) -> None:
        self.problems_total += 1
        if len(self.problems) < max_problems:
            self.problems.append(message)

    def to_dict(self) -> dict:
        return {"spec": self.spec, "ok": self.ok, "names": self.names, "ignore_index": self.ignore_index,
                "splits": {k: s.to_dict() for k, s in self.splits.items()},
                "class_pixels": self.class_pixels.tolist(), "ignore_pixels": self.ignore_pixels,
                "problems": self.problems, "problems_total": self.problems_total, "warnings": self.warnings}

    def format(self) -> str:
        """Readable report: splits, per-class pixel table (name, pixels, share %), problems."""
        lines = [f"dataset {self.spec}", "", f"{'split':<10} {'samples':>8} {'bad':>6}  image sizes (HxW: count)"]
        for name, s in self.splits.items():
            sizes = ", ".join(f"{h}x{w}: {n}" for (h, w), n in s.sizes.most_common(4))
            more = f", +{len(s.sizes) - 4} more sizes" if len(s.sizes) > 4 else ""
            lines.append(f"{name:<10} {s.samples:>8} {s.bad_samples:>6}  {sizes or '-'}{more}"
                         + (" (missing or empty)" if s.error else ""))
        lines += ["", *self._class_table(), ""]
        if self.warnings:
            lines.append(f"{len(self.warnings)} warning(s):")
            lines += [f"  - {w}" for w in self.warnings]
        if self.ok:
            lines.append("no problems found")
        else:
            lines.append(f"{self.problems_total} problem(s):")
            lines += [f"  - {p}" for p in self.problems]
            if self.problems_total > len(self.problems):
                lines.append(f"  ... and {self.problems_total - len(self.problems)} more")
        return "\n".join(lines)

    def _class_table(self) -> list[str]:
        pixels, ignore = self.class_pixels, self.ignore_pixels
        total = int(pixels.sum()) + ignore
        width = max([len("(ignore)"), *(len(n) for n in self.names)]) + 2
        rows = [f"{'id':>4}  {'class':<{width}} {'pixels':>14} {'share %':>8}"]
        share = (lambda n: 100.0 * n / total) if total else (lambda n: 0.0)
        for i, (name, n) in enumerate(zip(self.names, pixels.tolist(), strict=True)):
            rows.append(f"{i:>4}  {name:<{width}} {n:>14,} {share(n):>8.2f}" + ("  (absent)" if n == 0 else ""))
        rows.append(f"{self.ignore_index:>4}  {'(ignore)':<{width}} {ignore:>14,} {share(ignore):>8.2f}")
        rows.append(f"{'':>4}  {'total':<{width}} {total:>14,}")
        return rows


def count_pixels(label: np.ndarray, num_classes: int, ignore_index: int) -> tuple[np.ndarray, int]:
    """(H, W) ids -> ((K,) int64 pixels per class, ignore pixel count)."""
    flat = label.reshape(-1)
    valid = flat[(flat >= 0) & (flat < num_classes)].astype(np.int64)
    return np.bincount(valid, minlength=num_classes), int(np.count_nonzero(flat == ignore_index))


def scan_split(dataset: SegmentationDataset, split: str, report: CheckReport, max_problems: int) -> SplitStats:
    """Load every sample of ``dataset``, recording DataErrors in ``report`` and counting pixels and sizes; a split
    whose loaded label maps hold no class pixel is a problem (training split) or a warning (any other)."""
    K = dataset.spec.num_classes
    stats = SplitStats(samples=len(dataset), class_pixels=np.zeros(K, np.int64))
    for message in dataset.problems:
        report.add_problem(f"[{split}] {message}", max_problems)
    labelled = 0
    for i in range(len(dataset)):
        try:
            image, label = dataset.load(i)
        except DataError as e:
            stats.bad_samples += 1
            report.add_problem(f"[{split}] {e}", max_problems)
            continue
        stats.sizes[image.shape[:2]] += 1
        if label is not None:
            labelled += 1
            pixels, ignore = count_pixels(label, K, dataset.spec.ignore_index)
            stats.class_pixels += pixels
            stats.ignore_pixels += ignore
    if labelled and not stats.class_pixels.any():
        if is_training_split(split):
            report.add_problem(f"[{split}] {dataset.all_ignore_message(stats.ignore_pixels, labelled)}", max_problems)
        else:
            report.warnings.append(
                f"[{split}] split {split} has no valid label pixels: all {stats.ignore_pixels:,} pixels of its "
                f"{labelled} label map{'s' if labelled != 1 else ''} are ignore ({dataset.spec.ignore_index}), so "
                "its scores would be empty (expected for an unlabelled test split; otherwise check its label maps)")
    return stats


def check_spec(spec: str) -> None:
    """Raise DataError for a spec that no split could fix: an unknown kind or a reader option it does not take."""
    kind, root = parse_data_spec(spec)
    module = importlib.import_module(READERS[kind].partition(":")[0])
    if hasattr(module, "parse_instance_options"):   # nuclei: / rosettes: (one module, the kind passed along)
        module.parse_instance_options(kind, root)
        return
    for name in ("parse_root", "parse_options"):
        if hasattr(module, name):
            getattr(module, name)(root)


def check_dataset(spec: str, splits: tuple[str, ...] | list[str] = ("train", "val"), max_problems: int = 1000,
                  **reader_kwargs) -> CheckReport:
    """Scan every sample of each split of ``spec`` and collect all problems instead of stopping at the first.

    Args:
        spec: "kind:root" as for ``build_dataset`` (a bare path is a folder dataset).
        splits: split names to scan; a missing or empty split is reported as a problem.
        max_problems: keep at most this many messages (all are counted in ``problems_total``).
        reader_kwargs: passed to the reader (e.g. ignore_index, reduce_zero_label for folder datasets).
    Returns:
        CheckReport with per-split stats, per-class pixel counts, the problem list and warnings.
    Raises:
        DataError for a spec that names an unknown kind or an option the reader does not take (nothing to scan).
    """
    check_spec(spec)
    from . import INSTANCE_KINDS
    if parse_data_spec(spec)[0] in INSTANCE_KINDS:
        from .instance_check import check_instance_dataset
        return check_instance_dataset(spec, splits, max_problems)
    report = CheckReport(spec=spec)
    for split in splits:
        try:
            dataset = build_dataset(spec, split=split, allow_duplicates=True, **reader_kwargs)
        except DataError as e:
            report.splits[split] = SplitStats(error=str(e))
            report.add_problem(f"[{split}] {e}", max_problems)
            continue
        if not report.names:
            report.names, report.ignore_index = list(dataset.spec.names), dataset.spec.ignore_index
        report.splits[split] = scan_split(dataset, split, report, max_problems)
    return report
