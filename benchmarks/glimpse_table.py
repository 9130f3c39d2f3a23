"""The attention-over-locations table: test error of CNN, ST-CNN, RAM (4, 6, 8 glimpses) and the DRAW-read
classifier (4, 8 glimpses) on translated 60x60, cluttered 60x60 and cluttered 100x100 digits, at one equal
training-time budget, over seeds.

    python benchmarks/glimpse_table.py [--tasks translated,cluttered60,cluttered100]
        [--models cnn,st_cnn,ram4,ram6,ram8,draw4,draw8,cnn_flat] [--seeds 0,1] [--budget 2.5] [--jobs 2]
        [--run-root runs/glimpse] [--out runs/bench/glimpse_table.json]

``cnn_flat`` is the CNN with a flattened, position-dependent head instead of the global max pool (the papers'
baselines). Each run is ``attnseg train configs/digits_<task>_<model>.yaml`` with ``seed``, ``time_budget`` (minutes of
training-step time: data generation, set-up and evaluation excluded) and ``run_dir`` set, in its own process with
**one torch thread**; ``--jobs`` processes run at once (2 on a 2-core machine: each job has a core, and the
budget is the same for every model, so the comparison is fair even though the machine is shared by the jobs).
Test error is measured on the digits ``test`` split (2,000 samples from source digits that neither training nor
validation uses). Finished runs are reused (``bench_result.json``), interrupted ones resume. JSON on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, emit, jsonable, machine_info, run_or_reuse  # noqa: E402

TASKS = ("translated", "cluttered60", "cluttered100")
MODELS = ("cnn", "st_cnn", "ram4", "ram6", "ram8", "draw4", "draw8", "cnn_flat")


def one(task: str, model: str, seed: int, budget: float, run_root: str) -> dict:
    """Train one (task, model, seed) run and score it on the test split (in this process, one thread)."""
    import torch

    from attnseg.data import build_dataset
    from attnseg.engine.classification import evaluate_classification
    from attnseg.engine.config import load_config
    torch.set_num_threads(1)
    path = ROOT / "configs" / f"digits_{task}_{model}.yaml"
    run_dir = f"{run_root}/{task}_{model}_s{seed}"
    cfg = load_config(path, {"seed": seed, "time_budget": budget, "run_dir": run_dir, "progress": False})

    def score(trainer, metrics):
        data = cfg.data
        test = build_dataset(data, "test")
        t = evaluate_classification(trainer.model, test, trainer.prec)
        return {"val_error": metrics["error"], "test_error": t["error"], "test_samples": t["samples"],
                "test_confusion": t["confusion"]}

    settings = {"config": str(path.relative_to(ROOT)), "seed": seed, "budget_min": budget, "threads": 1}
    r = run_or_reuse(cfg, settings, score, f"{task} {model} seed {seed}")
    return {"task": task, "model": model, "seed": seed, "config": settings["config"],
            "ms_per_step": round(1000 * r["train_seconds"] / max(r["iters"], 1), 1), **r}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tasks", default=",".join(TASKS))
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--budget", type=float, default=2.5, help="minutes of training-step time per run")
    p.add_argument("--jobs", type=int, default=2, help="runs at once, one thread each")
    p.add_argument("--run-root", default="runs/glimpse")
    p.add_argument("--out")
    p.add_argument("--one", nargs=3, metavar=("TASK", "MODEL", "SEED"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.one:
        row = one(args.one[0], args.one[1], int(args.one[2]), args.budget, args.run_root)
        print(json.dumps(jsonable(row)))
        return row
    tasks = [t for t in args.tasks.split(",") if t]
    models = [m for m in args.models.split(",") if m]
    bad = [t for t in tasks if t not in TASKS] + [m for m in models if m not in MODELS]
    if bad:
        p.error(f"unknown {bad}; tasks: {', '.join(TASKS)}; models: {', '.join(MODELS)}")
    jobs = [(t, m, int(s)) for s in args.seeds.split(",") for t in tasks for m in models]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    running, rows, t0 = [], [], time.time()
    while jobs or running:
        while jobs and len(running) < args.jobs:
            t, m, s = jobs.pop(0)
            argv_ = [sys.executable, __file__, "--one", t, m, str(s), "--budget", str(args.budget),
                     "--run-root", args.run_root]
            running.append(((t, m, s), subprocess.Popen(argv_, stdout=subprocess.PIPE, text=True, env=env)))
        time.sleep(1)
        for item in list(running):
            key, proc = item
            if proc.poll() is None:
                continue
            running.remove(item)
            out = proc.stdout.read().strip().splitlines()
            if proc.returncode != 0 or not out:
                rows.append({"task": key[0], "model": key[1], "seed": key[2], "error": f"exit {proc.returncode}"})
            else:
                rows.append(json.loads(out[-1]))
            print(f"[{time.time() - t0:.0f} s] {key}: {rows[-1].get('test_error', rows[-1].get('error'))}",
                  file=sys.stderr, flush=True)
    table = {}
    for r in rows:
        if "test_error" in r:
            table.setdefault(r["task"], {}).setdefault(r["model"], []).append(r["test_error"])
    summary = {t: {m: {"mean": sum(v) / len(v), "min": min(v), "max": max(v), "seeds": len(v)}
                   for m, v in ms.items()} for t, ms in table.items()}
    doc = {"benchmark": "glimpse_table", "machine": machine_info("cpu"), "budget_min": args.budget,
           "threads_per_job": 1, "jobs": args.jobs,
           "rows": sorted(rows, key=lambda r: (r["task"], r["model"], r["seed"])),
           "summary": summary, "wall_s": round(time.time() - t0, 1)}
    print("\ntest error % (mean over seeds [min-max]):", file=sys.stderr)
    print("| model | " + " | ".join(tasks) + " |", file=sys.stderr)
    for m in models:
        cells = []
        for t in tasks:
            s = summary.get(t, {}).get(m)
            cells.append(f"{100 * s['mean']:.2f} [{100 * s['min']:.2f}-{100 * s['max']:.2f}]" if s else "-")
        print(f"| {m} | " + " | ".join(cells) + " |", file=sys.stderr)
    emit(doc, args.out)
    return doc


if __name__ == "__main__":
    main()
