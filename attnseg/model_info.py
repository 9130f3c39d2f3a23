"""What a registered model costs, before training it: parameters, FLOPs of one forward, inference memory and the
memory of each attention block's maps.

    attnseg info MODEL [--size HxW] [--num-classes K] [--batch B] [--json] [--set key=value ...]
    model_info("flanet_resnet18", size=(360, 480), num_classes=11) -> dict

Everything runs on the ``meta`` device (shapes only, no arithmetic, no weights allocated), so a 250M-parameter
VGG at 2048x2048 costs well under a second; where an operator cannot run on ``meta`` the model is built on the CPU
and run once on a zero image of the size instead (``"device"`` in the result says which).

- **Parameters**: ``sum(p.numel())`` over the model's parameters (and the trainable share).
- **FLOPs**: ``torch.utils.flop_counter.FlopCounterMode`` over one forward in eval mode (no aux heads), at batch
  ``B``. As that counter does, one multiply-add counts as **2 FLOPs**, and only the operators it has formulas for
  are counted (convolutions, transposed convolutions, matmuls / bmm / addmm, attention kernels): elementwise
  operations, softmax, pooling, normalisation and resampling are not. GFLOPs = FLOPs / 1e9.
- **Activation memory**: ``attnseg.engine.memory.estimate_inference_bytes``, the peak of live tensor bytes of one
  ``no_grad`` forward (fp32), the weights included, as ``attnseg predict`` / ``eval`` plan with it.
- **Attention maps**: every module with a ``memory_bytes`` method (the blocks of ``attnseg.attention`` and the
  FLANet-family head), named by its module path, its input shape seen in the same forward, and its estimate in
  inference (one map at a time) and training (energies and softmax kept for backward). A block called several
  times (a multi-scale wrapper) gives the largest call in inference and the sum of the calls in training. Blocks
  inside another block (DANet's PAM and CAM) are listed as its parts.

Model options (``--set key=value`` on the command line, ``**kwargs`` here) go to ``create_model``; initial-weight files
(``pretrained``, ``base_weights``) are not loaded, as they change no count.
"""

from __future__ import annotations

import inspect
import json
from functools import partial

import torch

DEFAULT_SIZE = (360, 480)
FLOPS_NOTE = ("FLOPs of one forward as torch.utils.flop_counter.FlopCounterMode counts them: a multiply-add is 2 "
              "FLOPs; convolutions, matmuls and attention kernels only (elementwise ops, softmax, pooling, "
              "normalisation and resampling are not counted)")
MEMORY_NOTE = ("estimated peak of live tensors during one no_grad fp32 forward, weights included "
               "(attnseg.engine.memory.estimate_inference_bytes)")
#: options that name files of initial weights: not loaded for counting (they change no shape)
INIT_WEIGHT_KWARGS = ("pretrained", "base_weights")


# -- parsing -------------------------------------------------------------------------------------------------------
def parse_size(text) -> tuple[int, int]:
    """``"360x480"``, ``"360,480"``, ``"512"`` (square) or a pair -> (H, W) of integers >= 1; else ValueError."""
    if isinstance(text, (tuple, list)):
        parts = list(text)
    else:
        parts = [p for p in str(text).lower().replace(" ", "").replace(",", "x").split("x")]
    try:
        values = [int(p) for p in parts]
        if len(values) not in (1, 2) or min(values) < 1:
            raise ValueError
    except (TypeError, ValueError):
        raise ValueError(f"--size takes HxW, two integers >= 1 such as 360x480 (or one number for a square); "
                         f"not {text!r}") from None
    return (values[0], values[0]) if len(values) == 1 else (values[0], values[1])


def _positive_int(text, what: str) -> int:
    try:
        v = int(text)
        if v < 1:
            raise ValueError
    except (TypeError, ValueError):
        raise ValueError(f"{what} takes an integer >= 1, not {text!r}") from None
    return v


def parse_options(pairs: list[str] | None) -> dict:
    """``--set key=value`` model options, values read as YAML (``channels=256``, ``scales=[1,0.5]``)."""
    import yaml
    out = {}
    for pair in pairs or []:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--set {pair!r} is not key=value (for example --set channels=256)")
        try:
            out[key] = yaml.safe_load(raw)
        except yaml.YAMLError:
            raise ValueError(f"--set {pair!r}: the value cannot be read as YAML; quote it") from None
    return out


# -- running on meta -------------------------------------------------------------------------------------------------
def build(name: str, num_classes: int, device: str = "meta", **kwargs) -> torch.nn.Module:
    """The registered model ``name`` in eval mode on ``device`` (initial-weight files dropped). Instance models are
    built with their one instance class whatever ``num_classes`` says (it counts semantic classes)."""
    from .models import create_model, model_task
    kwargs = {k: v for k, v in kwargs.items() if k not in INIT_WEIGHT_KWARGS}
    if model_task(name) == "instances":
        num_classes = 1
    with torch.device(device):
        model = create_model(name, num_classes=num_classes, **kwargs)
    return model.eval()


def _block_calls(model: torch.nn.Module):
    """Forward pre-hooks on every module with ``memory_bytes``; returns (calls: path -> [input shapes], handles)."""
    calls: dict[str, list[tuple[int, ...]]] = {}
    handles = []
    for path, m in model.named_modules():
        if callable(getattr(m, "memory_bytes", None)):
            calls[path] = []

            def hook(mod, args, kwargs, path=path):
                x = args[0] if args else kwargs.get("x")
                if isinstance(x, torch.Tensor):
                    calls[path].append(tuple(x.shape))
            handles.append(m.register_forward_pre_hook(hook, with_kwargs=True))
    return calls, handles


def _count(model: torch.nn.Module, x: torch.Tensor):
    """(total FLOPs, FLOPs per top-level child module, attention-block calls) of one no_grad forward."""
    from torch.utils.flop_counter import FlopCounterMode
    calls, handles = _block_calls(model)
    counter = FlopCounterMode(display=False)
    try:
        with torch.no_grad(), counter:
            model(x)
    finally:
        for h in handles:
            h.remove()
    root = type(model).__name__
    by_module = {}
    for key, ops in counter.get_flop_counts().items():
        if key.startswith(root + ".") and key.count(".") == 1:
            by_module[key[len(root) + 1:]] = int(sum(ops.values()))
    return int(counter.get_total_flops()), by_module, calls


def count_flops(model: torch.nn.Module, x: torch.Tensor) -> tuple[int, dict[str, int]]:
    """(FLOPs, FLOPs per top-level child module) of one ``no_grad`` forward of ``model`` on ``x``, on the meta
    device or on real tensors alike (FlopCounterMode: a multiply-add = 2 FLOPs)."""
    total, by_module, _ = _count(model, x)
    return total, by_module


def _memory_bytes(m: torch.nn.Module, shape: tuple[int, ...], training: bool) -> int:
    """A block's own estimate for an input of ``shape`` (B, C, H, W): ``memory_bytes(batch, height, width)`` for
    spatial blocks, ``memory_bytes(batch, channels)`` for channel attention."""
    params = inspect.signature(m.memory_bytes).parameters
    B, C = shape[0], shape[1]
    if "height" in params:
        return int(m.memory_bytes(B, shape[-2], shape[-1], training=training))
    if "channels" in params:
        return int(m.memory_bytes(B, C, training=training))
    raise TypeError(f"{type(m).__name__}.memory_bytes has an unknown signature {tuple(params)}")


def attention_blocks(model: torch.nn.Module, calls: dict) -> list[dict]:
    """Per attention block (outermost first, nested blocks as ``parts``): its path, type, input shape(s) and map
    memory in inference and training; blocks that hold no map (``0`` bytes, e.g. the head of the ``none``
    network) are left out."""
    modules = dict(model.named_modules())
    rows = {}
    for path, shapes in calls.items():
        if not shapes:
            continue
        m = modules[path]
        inference = max(_memory_bytes(m, s, False) for s in shapes)
        training = sum(_memory_bytes(m, s, True) for s in shapes)
        if inference == 0 and training == 0:
            continue
        rows[path] = {"path": path or "(model)", "type": type(m).__name__, "input": list(shapes[0]),
                      "calls": len(shapes), "inference_bytes": inference, "training_bytes": training}
    outer = [p for p in rows if not any(q != p and (q == "" or p.startswith(q + ".")) for q in rows)]
    out = []
    for p in outer:
        parts = [rows[q] for q in rows if q != p and (p == "" or q.startswith(p + "."))]
        out.append({**rows[p], "parts": parts})
    return out


def _builder_module(name: str) -> str:
    from .models import MODELS
    fn = MODELS[name]
    while isinstance(fn, partial):
        fn = fn.func
    return fn.__module__


def model_info(name: str, size=DEFAULT_SIZE, num_classes: int = 21, batch: int = 1, **kwargs) -> dict:
    """Parameters, GFLOPs, activation memory and attention-map memory of registered model ``name`` for a
    (batch, 3, H, W) input; ``kwargs`` are model options. Unknown names raise the registry's KeyError (listing the
    valid names); a bad size raises ValueError. See the module docstring for what each figure counts."""
    from .engine.memory import estimate_inference_bytes, weight_bytes
    H, W = parse_size(size)
    num_classes = _positive_int(num_classes, "--num-classes")
    from .models import model_task
    if model_task(name) == "instances":  # one instance class (K counts semantic classes)
        num_classes = 1
    batch = _positive_int(batch, "--batch")
    device, fallback = "meta", None
    model = build(name, num_classes, "meta", **kwargs)
    shape = (batch, getattr(model, "in_channels", 3), H, W)   # classifiers of grey digits take one channel
    try:
        flops, by_module, calls = _count(model, torch.empty(shape, device="meta"))
        memory = estimate_inference_bytes(model, shape, meta_model=model)
    except (NotImplementedError, RuntimeError, TypeError, ValueError) as e:  # an operator that reads values
        device, fallback = "cpu", f"{type(e).__name__}: {str(e).splitlines()[0][:160]}" if str(e) else type(e).__name__
        torch.manual_seed(0)
        model = build(name, num_classes, "cpu", **kwargs)
        flops, by_module, calls = _count(model, torch.zeros(shape))
        memory = estimate_inference_bytes(model, shape)
    params = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    info = {
        "model": name, "model_kwargs": kwargs, "module": _builder_module(name), "num_classes": num_classes,
        "input": list(shape), "device": device,
        "params": params, "params_M": round(params / 1e6, 3), "trainable_params": trainable,
        "weights_bytes": weight_bytes(model),
        "flops": flops, "gflops": round(flops / 1e9, 3), "gflops_by_module": {k: round(v / 1e9, 3) for k, v in
                                                                              by_module.items()},
        "flops_note": FLOPS_NOTE,
        "activation_memory_bytes": int(memory), "memory_note": MEMORY_NOTE,
        "attention_blocks": attention_blocks(model, calls),
    }
    if fallback:
        info["meta_failed"] = fallback
    return info


# -- text ------------------------------------------------------------------------------------------------------------
def _mib(n: float) -> str:
    if n >= 2 ** 30:
        return f"{n / 2 ** 30:.2f} GiB"
    if n >= 2 ** 20 or n == 0:
        return f"{n / 2 ** 20:.1f} MiB"
    return f"{n / 2 ** 10:.1f} KiB"


def format_info(info: dict) -> str:
    B, _, H, W = info["input"]
    opts = ", ".join(f"{k}={v}" for k, v in info["model_kwargs"].items())
    lines = [f"{info['model']}" + (f" ({opts})" if opts else "") + f": K={info['num_classes']}, input "
             f"{B}x{info['input'][1]}x{H}x{W}" + ("" if info["device"] == "meta" else
                                 f" (counted on the CPU: the meta device failed with {info['meta_failed']})"),
             f"  parameters         {info['params'] / 1e6:.2f} M ({info['params']:,}; trainable "
             f"{info['trainable_params']:,}), {_mib(info['weights_bytes'])} of weights and buffers",
             f"  GFLOPs             {info['gflops']:.2f} per forward (a multiply-add counts as 2 FLOPs, as "
             "FlopCounterMode counts; convolutions, matmuls and attention kernels only)"]
    parts = sorted(info["gflops_by_module"].items(), key=lambda kv: -kv[1])
    shown = [(k, v) for k, v in parts if v >= 0.005][:8]
    for k, v in shown:
        lines.append(f"    {k:22s} {v:9.2f}")
    if len(shown) < len(parts):
        rest = sum(v for _, v in parts[len(shown):])
        lines.append(f"    {'(others)':22s} {rest:9.2f}")
    lines.append(f"  activation memory  {_mib(info['activation_memory_bytes'])} estimated peak of one inference "
                 "forward, fp32, weights included (attnseg.engine.memory)")
    blocks = info["attention_blocks"]
    if not blocks:
        lines.append("  attention maps     none (no block with a memory_bytes estimate builds a map in this model)")
    else:
        lines.append("  attention maps     fp32, each block's memory_bytes for the input it sees (inference: one map "
                     "at a time; training: kept for backward)")
        for b in blocks:
            calls = f", {b['calls']} calls" if b["calls"] > 1 else ""
            shape = "x".join(str(v) for v in b["input"])
            lines.append(f"    {b['path']} ({b['type']}) on {shape}{calls}: inference {_mib(b['inference_bytes'])}, "
                         f"training {_mib(b['training_bytes'])}")
            for part in b["parts"]:
                lines.append(f"      {part['path']} ({part['type']}): inference {_mib(part['inference_bytes'])}, "
                             f"training {_mib(part['training_bytes'])}")
    return "\n".join(lines)


def cmd_info(args) -> int:
    info = model_info(args.model, size=parse_size(args.size), num_classes=_positive_int(args.num_classes,
                                                                                         "--num-classes"),
                      batch=_positive_int(args.batch, "--batch"), **parse_options(args.options))
    if args.json:
        print(json.dumps(info, indent=1, default=str))
    else:
        print(format_info(info))
    return 0


def add_parser(sub) -> None:
    """``attnseg info``; sizes and counts are checked by the command (exit 2 with ``attnseg: error: ...``)."""
    p = sub.add_parser("info", help="parameters, GFLOPs and memory of a model at an input size (no weights needed)",
                       description=__doc__.split("\n\n")[0])
    p.add_argument("model", help="a registered name (attnseg models lists them)")
    p.add_argument("--set", dest="options", action="append", default=[], metavar="KEY=VALUE",
                   help="a model option (repeatable), values read as YAML: --set channels=256")
    p.add_argument("--size", default=f"{DEFAULT_SIZE[0]}x{DEFAULT_SIZE[1]}", help="input HxW (default 360x480)")
    p.add_argument("--num-classes", default="21", help="K (default 21)")
    p.add_argument("--batch", default="1", help="batch size B (default 1)")
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    p.set_defaults(func=cmd_info)
