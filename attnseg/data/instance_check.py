"""``attnseg data check`` for instance datasets: every sample of each split decoded, counted and checked, all
problems collected instead of stopping at the first.

Reported per split: images, instances (total, per image min / median / max), instance sizes in pixels (min /
median / max), image sizes; and as problems: unreadable or mismatched files, maps without an instance, instances
in several disconnected pieces (often two objects given one id), instances under ``tiny`` pixels, pixels two
annotations claim (COCO overlaps), leaf counts that differ from the CVPPP csv, and images listed in two splits.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from .io import DataError

TINY = 4


@dataclass
class InstanceSplitStats:
    images: int = 0
    instances: int = 0
    per_image: list = field(default_factory=list)
    sizes: list = field(default_factory=list)
    image_sizes: Counter = field(default_factory=Counter)
    overlap_pixels: int = 0
    error: str | None = None

    def to_dict(self) -> dict:
        if self.error:
            return {"error": self.error}
        q = lambda a: [int(np.min(a)), float(np.median(a)), int(np.max(a))] if len(a) else None  # noqa: E731
        return {"images": self.images, "instances": self.instances, "per_image_min_median_max": q(self.per_image),
                "size_px_min_median_max": q(self.sizes), "overlap_pixels": self.overlap_pixels,
                "image_sizes": {f"{w}x{h}": n for (h, w), n in self.image_sizes.most_common()}}


@dataclass
class InstanceCheckReport:
    spec: str
    splits: dict = field(default_factory=dict)
    problems: list = field(default_factory=list)
    problems_total: int = 0
    task = "instances"

    def add_problem(self, message: str, max_problems: int) -> None:
        self.problems_total += 1
        if len(self.problems) < max_problems:
            self.problems.append(message)

    @property
    def ok(self) -> bool:
        return self.problems_total == 0

    def to_dict(self) -> dict:
        return {"spec": self.spec, "task": "instances", "splits": {k: v.to_dict() for k, v in self.splits.items()},
                "problems": self.problems, "problems_total": self.problems_total}

    def format(self) -> str:
        lines = [f"{self.spec} (instances)"]
        for name, st in self.splits.items():
            if st.error:
                lines.append(f"  {name}: unreadable ({st.error})")
                continue
            d = st.to_dict()
            per, size = d["per_image_min_median_max"], d["size_px_min_median_max"]
            sizes = ", ".join(f"{k} x{n}" for k, n in list(d["image_sizes"].items())[:4])
            more = len(d["image_sizes"]) - 4
            lines.append(f"  {name}: {st.images} images, {st.instances} instances"
                         + (f" (per image {per[0]} / {per[1]:g} / {per[2]} min/median/max)" if per else "")
                         + (f", sizes {size[0]} / {size[1]:g} / {size[2]} px" if size else "")
                         + (f", {st.overlap_pixels} overlapping pixels" if st.overlap_pixels else ""))
            lines.append(f"    image sizes: {sizes}" + (f" and {more} more" if more > 0 else ""))
        if self.problems_total:
            lines.append(f"{self.problems_total} problem{'s' if self.problems_total > 1 else ''}:")
            lines += [f"  {p}" for p in self.problems]
            if self.problems_total > len(self.problems):
                lines.append(f"  ... and {self.problems_total - len(self.problems)} more")
        else:
            lines.append("no problems found")
        return "\n".join(lines)


def _pieces(ids: np.ndarray) -> list[int]:
    """Instance ids made of more than one 8-connected piece."""
    from scipy import ndimage
    out = []
    objects = ndimage.find_objects(ids)
    for k, sl in enumerate(objects, start=1):
        if sl is None:
            continue
        _, n = ndimage.label(ids[sl] == k, structure=np.ones((3, 3)))
        if n > 1:
            out.append(k)
    return out


def scan_instance_split(dataset, split: str, report: InstanceCheckReport, max_problems: int,
                        tiny: int = TINY) -> InstanceSplitStats:
    st = InstanceSplitStats()
    for i in range(len(dataset)):
        name = dataset.sample_name(i)
        try:
            image, ids = dataset.load(i)
        except DataError as e:
            report.add_problem(f"[{split}] {e}", max_problems)
            continue
        st.images += 1
        st.image_sizes[tuple(ids.shape)] += 1
        counts = np.bincount(ids.ravel())
        present = np.nonzero(counts)[0]
        present = present[present != 0]
        st.instances += len(present)
        st.per_image.append(len(present))
        st.sizes.extend(counts[present].tolist())
        if not len(present):
            report.add_problem(f"[{split}] {name}: its instance map holds no instance (all background)", max_problems)
            continue
        small = present[counts[present] < tiny]
        if len(small):
            report.add_problem(f"[{split}] {name}: {len(small)} instance(s) under {tiny} px (ids "
                               f"{', '.join(map(str, small[:5].tolist()))}); likely labelling specks", max_problems)
        split_ids = _pieces(ids)
        if split_ids:
            many = len(split_ids) > 1
            report.add_problem(f"[{split}] {name}: instance id{'s' if many else ''} "
                               f"{', '.join(map(str, split_ids[:5]))} {'are' if many else 'is'} in several "
                               "disconnected pieces (two objects with one id?)", max_problems)
        if hasattr(dataset, "_masks"):        # COCO: pixels claimed by two annotations
            try:
                stack = sum(m.astype(np.int32) for ann, m in dataset._masks(i) if not ann.get("iscrowd", 0))
                over = int((np.asarray(stack) > 1).sum())
            except DataError as e:
                report.add_problem(f"[{split}] {e}", max_problems)
                over = 0
            st.overlap_pixels += over
            if over:
                report.add_problem(f"[{split}] {name}: {over} pixels belong to two or more annotations (the later "
                                   "one keeps them)", max_problems)
    if hasattr(dataset, "check_counts"):      # CVPPP: label maps against the csv's leaf counts
        for p in dataset.check_counts():
            report.add_problem(f"[{split}] {p}", max_problems)
    return st


def check_instance_dataset(spec: str, splits=("train", "val"), max_problems: int = 1000) -> InstanceCheckReport:
    from . import build_dataset
    report = InstanceCheckReport(spec=spec)
    seen: dict[str, str] = {}
    for split in splits:
        try:
            dataset = build_dataset(spec, split=split)
        except DataError as e:
            report.splits[split] = InstanceSplitStats(error=str(e))
            report.add_problem(f"[{split}] {e}", max_problems)
            continue
        for i in range(len(dataset)):
            n = dataset.sample_name(i)
            if n in seen and seen[n] != split:
                report.add_problem(f"{n} is in both {seen[n]} and {split}: the validation would score training "
                                   "images", max_problems)
            seen.setdefault(n, split)
        report.splits[split] = scan_instance_split(dataset, split, report, max_problems)
    return report
