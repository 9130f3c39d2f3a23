"""The model zoo: every registered model with its config, parameters, GFLOPs, CPU inference speed and, where the
project has trained it, its measured CamVid mIoU with the budget and validation protocol; renders docs/MODEL_ZOO.md.

    python benchmarks/model_zoo.py --threads 2                      # everything, on an idle machine (long: VGGs)
    python benchmarks/model_zoo.py --skip-speed                     # parameters, GFLOPs, table only (~30 s)
    python benchmarks/model_zoo.py --models fcn8s_resnet18,flanet_resnet18 --repeats 5

What is measured, per registered name with its registry defaults, K = 11 (CamVid):
- parameters and GFLOPs of one forward at 360x480, batch 1 (``attnseg.model_info`` on the meta device; GFLOPs as
  torch's FlopCounterMode counts them: a multiply-add is 2 FLOPs, convolutions and matmuls only). Where the
  model's config sets model options (``model_kwargs``), the figures of the configured model are given too.
- images/s at 360x480 on the CPU: batch 1, whole image, eval mode, ``torch.no_grad``, channels_last, fp32 and,
  where the CPU has native bf16 (``attnseg.engine.precision.cpu_has_native_bf16``), bf16 autocast
  (``Precision.resolve(cpu, "bf16", channels_last=True)``); 1 warm-up forward, then the median of ``--repeats``
  timed forwards, images/s = 1 / median. Every model is built and timed in this one process, one after the other.

Trained figures are not measured here: they are copied by hand from docs/RESULTS.md (``TRAINED``, each with the
section it comes from) and only shown.

Results accumulate: ``--out`` (default docs/model_zoo.json) is read first and the speed figures of models not
timed in this run are kept (``--fresh`` drops them), so the speed can be measured in several runs: ``--models``
names the models to time. Parameters, GFLOPs and configs are recounted for every registered model each run, and
the markdown (``--md``, default docs/MODEL_ZOO.md) always lists them all.
Prints the JSON document on stdout; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import re
import statistics
import sys
import time
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import emit, jsonable, machine_info, parse_size, set_threads  # noqa: E402

from attnseg.engine.precision import Precision, cpu_has_native_bf16  # noqa: E402
from attnseg.model_info import model_info  # noqa: E402
from attnseg.models import MODELS, create_model, model_task  # noqa: E402

SIZE = (360, 480)
NUM_CLASSES = 11
CLASSIFIER_SIZE, CLASSIFIER_CLASSES = (60, 60), 10   # the digit classifiers (task "classification")
RESULTS_MD = "RESULTS.md"  # beside MODEL_ZOO.md in docs/

#: trained figures, copied by hand from docs/RESULTS.md (section = its heading there). Every CamVid figure before
#: issue 11 used the standard val (sequence 0016E5, which also gives 204 training images: it flatters).
_S11 = "CamVid: the shipped FCN-8s recipe under both validations"
_S1 = "CamVid: FCN-8s-ResNet-18 from scratch"
_S2 = "CamVid: the three baselines of this issue at an equal 8-minute budget"
_S13 = "DSB2018 val: the two baselines at an equal 35-minute budget"
_S3 = ("CamVid", "Issue 3: attention to scale, Farabet's pyramid, recurrent refinement")
_S4 = "CamVid: FLA against no attention, non-local, DANet and CCNet on one network"
_S5 = "CamVid: the segmentation-aware network against the same network with plain convolutions"
_S12 = "A FLANet trained on CamVid for the page"
_S11R = "Segmentation-aware refinement after the normalisation fix, beside the old table"
_S14 = "The table: test error at an equal 2.5-minute budget, two seeds"
_S15 = "Synthetic leaf rosettes: the recurrent model, its ablations and the two baselines at an equal 25-minute budget"
_S15D = "DSB2018 val: 128-px tiles"
_B14 = "2.5 min on one core, fp32, mean of seeds 0/1"
TRAINED = {
    # classifiers: test error on the digits test split (cluttered 60x60; the section has all three tasks)
    "cnn_classifier": [{"figure": "test error **1.57 %**", "protocol": "digits cluttered 60x60 test",
                        "budget": _B14, "section": _S14}],
    "st_cnn": [{"figure": "test error **3.58 %**", "protocol": "digits cluttered 60x60 test", "budget": _B14,
                "section": _S14}],
    "ram": [{"figure": "test error **33.6 %** (4 glimpses; 52.3 % with 8)", "protocol": "digits cluttered 60x60 test",
             "budget": _B14, "section": _S14}],
    "draw_read": [{"figure": "test error **9.57 %** (4 glimpses; 10.28 % with 8)",
                   "protocol": "digits cluttered 60x60 test", "budget": _B14, "section": _S14}],
    # instance models: the DSB2018 score on splits/val (the "figure" replaces the mIoU cell)
    "unet_watershed_w16": [
        {"figure": "DSB score **0.417** (AP50 0.625)", "protocol": "DSB2018 splits/val", "budget": "35 min (1046 "
         "steps) on one contended core, bf16", "section": _S13}],
    "unet_discriminative_w16": [
        {"figure": "DSB score **0.303** (post-processing tuned on train images; 0.157 default)",
         "protocol": "DSB2018 splits/val", "budget": "35 min (1047 steps) on one contended core, bf16",
         "section": _S13}],
    "recurrent_attention": [
        {"figure": "SBD **42.0**, |DiC| 1.62 (target 80 / 1.0 not met)", "protocol": "synthetic rosettes val",
         "budget": "10 + 15 min (380 + 620 steps) on one core beside another run, bf16, 128x128 inside",
         "section": _S15}],
    "recurrent_attention_nuclei": [
        {"figure": "DSB score **0.021** (did not learn nuclei at this budget)", "protocol": "DSB2018 splits/val",
         "budget": "10 + 25 min (380 + 1080 steps) on one core beside another run, bf16", "section": _S15D}],
    "fcn8s_resnet18": [
        {"miou": "59.45", "protocol": "standard val", "budget": "2300 steps, bf16", "section": _S11},
        {"miou": "37.92", "protocol": "cross-sequence holdout=0006R0", "budget": "2300 steps, bf16", "section": _S11},
        {"miou": "59.0", "protocol": "standard val", "budget": "30 min (2298 steps), fp32", "section": _S1},
    ],
    "deeplab_largefov_vgg16_w05": [
        {"miou": "22.1", "protocol": "standard val", "budget": "8 min (196 steps), fp32", "section": _S2}],
    "deconvnet_vgg16_w025": [
        {"miou": "15.4", "protocol": "standard val", "budget": "8 min (349 steps), fp32", "section": _S2}],
    "attention_to_scale": [
        {"miou": "39.2", "protocol": "standard val", "budget": "250 steps, fp32, attention + E-Supv", "section": _S3},
        {"miou": "40.7", "protocol": "standard val", "budget": "250 steps, fp32, attention, no E-Supv",
         "section": _S3},
        {"miou": "41.1", "protocol": "standard val",
         "budget": "250 steps, fp32, fusion avg + E-Supv (camvid_scale_avg.yaml)",
         "section": _S3},
        {"miou": "39.3", "protocol": "standard val",
         "budget": "250 steps, fp32, fusion max + E-Supv (camvid_scale_max.yaml)",
         "section": _S3},
    ],
    "farabet": [{"miou": "37.5", "protocol": "standard val", "budget": "250 steps, fp32, with BN", "section": _S3}],
    "recurrent_refinement": [
        {"miou": "41.0", "protocol": "standard val", "budget": "250 steps, fp32, N = 2", "section": _S3}],
    "rcnn2_fcn8s_resnet18": [
        {"miou": "41.0", "protocol": "standard val", "budget": "250 steps, fp32", "section": _S3}],
    "rcnn3_fcn8s_resnet18": [
        {"miou": "41.6", "protocol": "standard val", "budget": "250 steps, fp32", "section": _S3}],
    "flanet_resnet18": [
        {"miou": "55.18", "protocol": "standard val", "budget": "25 min (473 steps), bf16, one seed",
         "section": _S12},
        {"miou": "43.1", "protocol": "standard val", "budget": "120 steps, fp32, mean of seeds 0/1 (40.3, 45.8)",
         "section": _S4}],
    "dilated_resnet18_none": [
        {"miou": "42.6", "protocol": "standard val", "budget": "120 steps, fp32, mean of seeds 0/1 (38.2, 47.0)",
         "section": _S4}],
    "dilated_resnet18_nonlocal": [
        {"miou": "41.7", "protocol": "standard val", "budget": "120 steps, fp32, mean of seeds 0/1 (36.9, 46.5)",
         "section": _S4}],
    "dilated_resnet18_danet": [
        {"miou": "42.4", "protocol": "standard val", "budget": "120 steps, fp32, mean of seeds 0/1 (37.4, 47.5)",
         "section": _S4}],
    "dilated_resnet18_ccnet": [
        {"miou": "43.5", "protocol": "standard val", "budget": "120 steps, fp32, mean of seeds 0/1 (40.9, 46.0)",
         "section": _S4}],
    "segaware_dilated_resnet18": [
        {"miou": "43.4", "protocol": "standard val", "budget": "120 steps, fp32, mean of seeds 0/1 (39.7, 47.0)",
         "section": _S5}],
    "segaware_crf": [
        {"miou": "59.7", "protocol": "standard val, the 81 images not used for tuning (base 58.7)",
         "budget": "embedding 150 steps on the 2300-step FCN-8s, bf16", "section": _S11R},
        {"miou": "38.9", "protocol": "cross-sequence holdout=0006R0 (base 37.7)",
         "budget": "embedding 150 steps on the 2300-step FCN-8s, bf16", "section": _S11R},
    ],
}


def slug(heading: str) -> str:
    """GitHub's anchor of a Markdown heading (lower case, punctuation dropped, spaces to hyphens)."""
    s = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return s.replace(" ", "-")


def section_link(section) -> str:
    title = section[0] if isinstance(section, (tuple, list)) else section
    return f"[{title}]({RESULTS_MD}#{slug(title)})"


def section_titles(section) -> tuple[str, ...]:
    return tuple(section) if isinstance(section, (tuple, list)) else (section,)


# -- configs ------------------------------------------------------------------------------------------------------
def config_index(folder: Path) -> dict[str, list[tuple[str, dict]]]:
    """model name -> [(config file name, its model_kwargs)], the file named camvid_<model>.yaml first, then other
    CamVid configs, then DSB2018 ones (the instance models' real data), then the cluttered 60x60 digits (the
classifiers' trained figures), then the rest (each group sorted)."""
    out: dict[str, list[tuple[str, dict]]] = {}
    for path in sorted(folder.glob("*.yaml")):
        d = yaml.safe_load(path.read_text()) or {}
        if isinstance(d, dict) and d.get("model"):
            out.setdefault(d["model"], []).append((path.name, d.get("model_kwargs") or {}))
    for name, files in out.items():
        files.sort(key=lambda f: (f[0] != f"camvid_{name}.yaml", not f[0].startswith("camvid_"),
                                  not f[0].startswith("dsb2018_"), not f[0].startswith("digits_cluttered60_"),
                                  "_flat" in f[0], f[0]))
    return out


def base_config(folder: Path, opts: dict, init_from: str | None = None) -> str | None:
    """The config whose run directory holds ``opts["base_weights"]`` or the config's ``init_from`` (the run a
    refinement stage or a curriculum's second stage starts from)."""
    weights = opts.get("base_weights") or init_from
    if not weights:
        return None
    for path in sorted(folder.glob("*.yaml")):
        d = yaml.safe_load(path.read_text()) or {}
        run = str(d.get("run_dir", "")).rstrip("/")
        if isinstance(d, dict) and run and (str(weights).rstrip("/") == run or str(weights).startswith(run + "/")):
            return path.name
    return None


def config_budget(folder: Path, fname: str) -> str:
    d = yaml.safe_load((folder / fname).read_text()) or {}
    if d.get("time_budget") is not None:
        return f"{d['time_budget']:g} min"
    return f"{d.get('iters', 2000)} steps"


# -- measuring ------------------------------------------------------------------------------------------------------
def images_per_second(model, prec: Precision, x: torch.Tensor, repeats: int) -> tuple[float, list[float]]:
    """1 / median seconds of ``repeats`` forwards after one warm-up (eval, no_grad, ``prec``'s autocast)."""
    times = []
    with torch.no_grad():
        xi = prec.images(x)
        for i in range(repeats + 1):
            t = time.perf_counter()
            with prec.autocast():
                out = model(xi)
                # an instance model's network output: its dense maps (the post-processing is not timed here)
                (out["logits"] if "logits" in out else torch.cat(list(out.values()), 1)).float()
            if i:
                times.append(time.perf_counter() - t)
    return 1.0 / statistics.median(times), times


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def measure_speed(name: str, repeats: int, bf16: bool) -> dict:
    torch.manual_seed(0)
    task = model_task(name)
    k = 1 if task == "instances" else CLASSIFIER_CLASSES if task == "classification" else NUM_CLASSES
    model = create_model(name, num_classes=k).eval()
    x = torch.rand(1, 1, *CLASSIFIER_SIZE) if task == "classification" else torch.randn(1, 3, *SIZE)
    row = {}
    for precision in ("fp32", "bf16") if bf16 else ("fp32",):
        prec = Precision.resolve(torch.device("cpu"), precision, channels_last=True)
        rate, times = images_per_second(prec.model(model), prec, x, repeats)
        row[f"{precision}_img_s"] = round(rate, 3)
        row[f"{precision}_forward_s"] = [round(t, 4) for t in times]
    del model
    gc.collect()
    return row


def speed_machine(threads: int, repeats: int) -> dict:
    return {**machine_info("cpu"), "cpu_name": cpu_name(), "torch_threads": threads, "repeats": repeats,
            "native_bf16": cpu_has_native_bf16(), "date": time.strftime("%Y-%m-%d")}


# -- markdown --------------------------------------------------------------------------------------------------------
def _machine_line(m: dict) -> str:
    bf = "native bf16" if m.get("native_bf16") else "no native bf16 (bf16 not timed: oneDNN emulates it)"
    return (f"{m.get('cpu_name')} ({m.get('cpu_count')} logical CPUs, {bf}), torch threads: "
            f"**{m.get('torch_threads')}**, torch {m.get('torch')}, Python {m.get('python')}, median of "
            f"{m.get('repeats')} forwards after 1 warm-up, measured {m.get('date')}")


def render_markdown(doc: dict) -> str:
    rows = doc["models"]
    machines = {}
    for r in rows.values():
        if r.get("speed"):
            key = json.dumps(r["speed"]["machine"], sort_keys=True)
            machines.setdefault(key, (len(machines) + 1, r["speed"]["machine"]))
    L = ["# Model zoo", "",
         f"Every model registered in `attnseg.models` ({len(rows)} names), with the config that trains it, its size "
         f"and cost at {SIZE[0]}x{SIZE[1]} (K = {NUM_CLASSES}, CamVid), its CPU inference speed and, where this "
         "project has trained it, the measured CamVid mIoU with its budget and validation protocol.", "",
         "**No weights can be downloaded here.** The project publishes no trained weights (and the CamVid ones "
         "would carry CamVid's research-only terms). Every row says how to train the model from scratch on your "
         "machine: `attnseg train configs/<file>.yaml` (CamVid expected at `../shared/data/camvid`; another path: "
         "`data=camvid:PATH`), then `attnseg card runs/<run>` writes the model card of the result.", "",
         "Generated by `python benchmarks/model_zoo.py` (data: `docs/model_zoo.json`); do not edit by hand.", "",
         "## Speed: machine and threads", ""]
    if not machines:
        L += [f"Images/s at {SIZE[0]}x{SIZE[1]}: **not measured yet**. Command for an idle machine: "
              "`python benchmarks/model_zoo.py --threads 2 --repeats 5` (batch 1, whole image, eval, channels_last, "
              "fp32, and bf16 autocast where the CPU has native bf16).", ""]
    else:
        L += [f"Images/s at {SIZE[0]}x{SIZE[1]}, batch 1, whole image, eval mode, no_grad, channels_last, fp32 and "
              "(where the CPU has native bf16) bf16 autocast, measured on:", ""]
        for idx, m in machines.values():
            L.append(f"- {'[' + str(idx) + '] ' if len(machines) > 1 else ''}{_machine_line(m)}")
        L += ["", "Timings on shared machines vary from hour to hour: compare ratios measured in one run.", ""]
    L += ["## Models", "",
          "Parameters, GFLOPs and speed are those of the registry name with its default options; where the config "
          "sets other options (`model_kwargs`), the configured model's parameters and GFLOPs follow in brackets. "
          "GFLOPs: one forward at 360x480, batch 1, as torch's FlopCounterMode counts (a multiply-add = 2 FLOPs; "
          "convolutions and matmuls only). `attnseg info MODEL --num-classes 11` prints the same figures with the "
          "memory of the activations and of every attention map.", "",
          "| model | config (budget) | params (M) | GFLOPs | fp32 img/s | bf16 img/s | "
          "trained: CamVid mIoU %, DSB2018 score or digits test error "
          "(protocol, budget) | train it |",
          "|---|---|---|---|---|---|---|---|"]
    for name in sorted(rows):
        r = rows[name]
        cfg = r.get("config")
        cfg_cell = f"`{cfg}` ({r['config_budget']})" if cfg else "none"
        small = r["gflops"] < 0.05   # the digit classifiers: three decimals
        params, gfl = f"{r['params'] / 1e6:.2f}", f"{r['gflops']:.3f}" if small else f"{r['gflops']:.1f}"
        if r.get("config_options"):
            opts = ", ".join(f"{k}: {json.dumps(v)}" for k, v in r["config_options"].items())
            cfg_cell += f"<br>sets {opts}"
            if r.get("params_config") is not None and f"{r['params_config'] / 1e6:.2f}" != params:
                params += f" ({r['params_config'] / 1e6:.2f})"
            if r.get("gflops_config") is not None:
                cfg_gfl = f"{r['gflops_config']:.3f}" if small else f"{r['gflops_config']:.1f}"
                gfl += f" ({cfg_gfl})" if cfg_gfl != gfl else ""
        sp = r.get("speed")
        if sp:
            tag = f" [{machines[json.dumps(sp['machine'], sort_keys=True)][0]}]" if len(machines) > 1 else ""
            fp32 = f"{sp['fp32_img_s']:.3g}{tag}"
            bf16 = f"{sp['bf16_img_s']:.3g}{tag}" if sp.get("bf16_img_s") is not None else "n/a (no native bf16)"
        else:
            fp32 = bf16 = "not measured yet"
        trained = "<br>".join(f"**{t['miou']}** ({t['protocol']}, {t['budget']}; {section_link(t['section'])})"
                              if "miou" in t else
                              f"{t['figure']} ({t['protocol']}, {t['budget']}; {section_link(t['section'])})"
                              for t in r.get("trained", [])) or "not trained here yet"
        train = f"`attnseg train configs/{cfg}`" if cfg else "-"
        if r.get("base_config"):  # a refinement stage on the weights of another run: that run first
            train = f"`attnseg train configs/{r['base_config']}`, then {train}"
        if r.get("input"):   # a classifier: its figures are at its own input size
            gfl += f" (at {r['input']})"
        L.append(f"| `{name}` | {cfg_cell} | {params} | {gfl} | {fp32} | {bf16} | {trained} | {train} |")
    L += ["", "## Trained figures", "",
          "Copied from [docs/RESULTS.md](RESULTS.md) (the linked section has the per-class table, the command and "
          "the machine), not measured by this script. Validation protocols:", "",
          "- **standard val**: CamVid's val split (101 images of sequence 0016E5, which also gives 204 of the 367 "
          "training images). It flatters: its scenes are in training.",
          "- **cross-sequence holdout=0006R0** (`data: camvid:PATH,holdout=0006R0`): train on train + val minus "
          "sequence 0006R0, validate on that sequence, which shares no scene with training. The same FCN-8s recipe "
          "scores 21.5 points lower there (59.45 against 37.92).", "",
          "Budgets are short (120-2300 steps on 2 CPU cores, from scratch), most figures come from one run (or "
          "two seeds), and seeds alone moved them by up to 9 points: see the sections for what they do and do not "
          "show. Configs whose budget differs from the measured one (most do) train longer than the figure shown.",
          ""]
    more = {n: r["other_configs"] for n, r in rows.items() if r.get("other_configs")}
    if more:
        L += ["## More configs", ""]
        for n, files in sorted(more.items()):
            L.append(f"- `{n}`: " + ", ".join(f"`{f}`" for f in files))
        L.append("")
    return "\n".join(L)


# -- main ------------------------------------------------------------------------------------------------------------
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default=None, help="comma list of registered names (default: all)")
    p.add_argument("--repeats", type=int, default=5, help="timed forwards per model and precision (median)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--skip-speed", action="store_true", help="parameters, GFLOPs and the table only")
    p.add_argument("--no-bf16", action="store_true", help="time fp32 only, even on a CPU with native bf16")
    p.add_argument("--configs", default=str(ROOT / "configs"))
    p.add_argument("--out", default=str(ROOT / "docs" / "model_zoo.json"), help="JSON file (read first, updated)")
    p.add_argument("--md", default=str(ROOT / "docs" / "MODEL_ZOO.md"), help="markdown file ('' for none)")
    p.add_argument("--fresh", action="store_true", help="ignore the speed figures stored in --out")
    p.add_argument("--size", default=f"{SIZE[0]}x{SIZE[1]}", help=argparse.SUPPRESS)  # fixed: the table's size
    args = p.parse_args(argv)
    if parse_size(args.size) != SIZE:
        p.error(f"the zoo is measured at {SIZE[0]}x{SIZE[1]}; use attnseg info MODEL --size HxW for other sizes")
    if args.repeats < 1:
        p.error("--repeats must be >= 1")
    names = sorted(MODELS) if not args.models else [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in names if m not in MODELS]
    if unknown:
        p.error(f"unknown models {unknown}; available: {', '.join(sorted(MODELS))}")
    args.names = names
    return args


def main(argv=None):
    args = parse_args(argv)
    set_threads(args.threads)
    folder = Path(args.configs)
    configs = config_index(folder)
    out = Path(args.out)
    previous = {}
    if out.is_file() and not args.fresh:
        previous = json.loads(out.read_text()).get("models", {})
    bf16 = cpu_has_native_bf16() and not args.no_bf16
    machine = speed_machine(torch.get_num_threads(), args.repeats)
    t0 = time.time()
    rows = {}
    for name in sorted(MODELS):  # every registered model is in the table; --models picks what is measured now
        measure = name in args.names
        old = previous.get(name, {})
        files = configs.get(name, [])
        cfg, opts = files[0] if files else (None, {})
        classifier = model_task(name) == "classification"   # digits: grey 60x60, 10 classes
        size, k = (CLASSIFIER_SIZE, CLASSIFIER_CLASSES) if classifier else (SIZE, NUM_CLASSES)
        info = model_info(name, size=size, num_classes=k)
        row = {"params": info["params"], "gflops": info["gflops"], "config": cfg,
               "config_budget": config_budget(folder, cfg) if cfg else None,
               "config_options": opts, "other_configs": [f for f, _ in files[1:]],
               "base_config": base_config(folder, opts, cfg and (yaml.safe_load((folder / cfg).read_text()) or {})
                                          .get("init_from")),
               "trained": TRAINED.get(name, []), "speed": old.get("speed"),
               "input": f"1x{CLASSIFIER_SIZE[0]}x{CLASSIFIER_SIZE[1]} grey, K=10" if classifier else None}
        if opts:
            ci = model_info(name, size=size, num_classes=k, **opts)
            row.update(params_config=ci["params"], gflops_config=ci["gflops"])
        if measure and not args.skip_speed:
            t = time.time()
            row["speed"] = {**measure_speed(name, args.repeats, bf16), "machine": machine}
            print(f"{name}: fp32 {row['speed']['fp32_img_s']} img/s" + (
                f", bf16 {row['speed']['bf16_img_s']} img/s" if bf16 else "") + f" ({time.time() - t:.0f} s)",
                  file=sys.stderr, flush=True)
        rows[name] = row
    doc = {"benchmark": "model_zoo", "input": [1, 3, *SIZE], "num_classes": NUM_CLASSES, "batch": 1,
           "mode": "whole image, eval, no_grad, channels_last", "statistic": "1 / median forward seconds",
           "flops_note": "FlopCounterMode: a multiply-add = 2 FLOPs; convolutions and matmuls only",
           "measured_now": [] if args.skip_speed else args.names, "wall_seconds": round(time.time() - t0, 1),
           "models": rows}
    out.parent.mkdir(parents=True, exist_ok=True)
    emit(doc, str(out))
    if args.md:
        Path(args.md).write_text(render_markdown(jsonable(doc)) + "\n")
        print(f"wrote {args.md}", file=sys.stderr)


if __name__ == "__main__":
    main()
