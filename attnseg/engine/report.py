"""What a finished run leaves in its directory: the per-class table, metrics JSON/CSV with the confusion matrix,
overlay pictures of validation images and the learning curve."""

from __future__ import annotations

from pathlib import Path

import torch

from .inference import infer


def write_run_report(run_dir: Path, model, dataset, spec, metrics: dict, cm, infer_cfg, prec, extra: dict | None = None,
                     n_pictures: int = 4) -> dict:
    from ..metrics.report import format_table, save_metrics
    from ..viz.curves import plot_learning_curve
    from ..viz.overlay import side_by_side

    run_dir = Path(run_dir)
    table = format_table(metrics, spec.names)
    (run_dir / "metrics.txt").write_text(table + "\n")
    print(table, flush=True)
    paths = save_metrics(run_dir, metrics, spec.names, cm.mat.numpy(), extra=extra)
    pic_dir = run_dir / "pictures"
    pic_dir.mkdir(exist_ok=True)
    model.eval()
    n = len(dataset)
    for k in range(min(n_pictures, n)):
        i = k * n // min(n_pictures, n)
        image, label = dataset.load(i)
        x = dataset[i]["image"][None].to(prec.device)
        with torch.no_grad():
            pred = infer(model, x, infer_cfg, spec.num_classes, prec.autocast(), prec.channels_last).argmax(1)[0]
        side_by_side(image, label, pred.cpu().numpy(), spec).save(pic_dir / f"{dataset.sample_name(i)}.png")
    curve = plot_learning_curve(run_dir / "log.jsonl", run_dir / "learning_curve.png", title=run_dir.name)
    return {"table": table, "metrics": paths, "pictures": pic_dir, "curve": curve}
