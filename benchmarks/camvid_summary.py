"""Summarise a CamVid (or any) training run directory as JSON: the final val metrics with per-class IoU, the
validation curve against training time, when each mIoU level was first reached, and the command.

    attnseg train configs/camvid_fcn8s_resnet18.yaml            # ~30-40 min on 2 CPU cores
    python benchmarks/camvid_summary.py runs/camvid_fcn8s_resnet18

``elapsed`` counts training-step time (validation passes excluded); ``wall_s`` is first-to-last log record.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def summarise(run_dir: Path, levels=(0.40, 0.50, 0.55, 0.60, 0.62)) -> dict:
    records = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines() if line.strip()]
    start = next((r for r in records if r.get("kind") == "start"), {})
    vals = [r for r in records if r.get("kind") == "val"]
    final = json.loads((run_dir / "metrics.json").read_text()) if (run_dir / "metrics.json").is_file() else None
    reached = {}
    for level in levels:
        hit = next((v for v in vals if v["mIoU"] >= level), None)
        reached[f"{100 * level:.0f}"] = None if hit is None else {"step": hit["step"],
                                                                  "train_min": round(hit["elapsed"] / 60, 1)}
    return {
        "run_dir": str(run_dir), "command": start.get("command"), "precision": start.get("precision"),
        "threads": start.get("threads"), "train_images": start.get("train_images"),
        "curve": [{"step": v["step"], "train_min": round(v["elapsed"] / 60, 2), "mIoU": round(100 * v["mIoU"], 2),
                   "images": v.get("images"), "mode": v.get("mode")} for v in vals],
        "first_reached_mIoU": reached,
        "final": None if final is None else {
            "mIoU": final["mIoU"], "aAcc": final["aAcc"], "mAcc": final["mAcc"], "inference": final.get("inference"),
            "per_class_IoU": {k: v["IoU"] for k, v in final.get("per_class", {}).items()},
            "train_min": round(final.get("elapsed_s", 0) / 60, 1), "step": final.get("step")},
    }


def main():
    p = argparse.ArgumentParser()
    p.add_argument("run_dir", type=Path)
    print(json.dumps(summarise(p.parse_args().run_dir), indent=1))


if __name__ == "__main__":
    main()
