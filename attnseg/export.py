"""Export a trained semantic model to ONNX, checked against PyTorch with onnxruntime.

What is exported: the model in eval mode (BatchNorm on its running statistics, no dropout, no auxiliary heads, no
attention maps), in float32, as one graph

    images (B, 3, H, W) float32, normalised as in training     ->  logits (B, K, H, W) float32
                                                                   [ids (B, H, W) int64 = argmax of the logits]

with a dynamic batch, height and width: one file serves every image size, so ``attnseg.engine.inference.infer``
(whole image, sliding windows, multi-scale + flip) runs unchanged on it through :class:`OnnxModel`. The attnseg
checkpoint metadata (classes, palette, normalisation, test scale, inference settings) travels in the ONNX file's
``metadata_props`` (:data:`META_KEY`), so a predictor needs the ``.onnx`` file alone. Why: onnxruntime is a much
smaller dependency than PyTorch, runs where PyTorch does not (other languages, mobile, browsers) and is faster on
the CPU (``benchmarks/onnx_speed.py``).

Exporter: ``torch.export`` (non-strict) and the dynamo-based ONNX exporter (``torch.onnx.export(ExportedProgram)``),
not the TorchScript tracer (``dynamo=False``, deprecated). Measured on the registry with torch 2.13: the tracer fails
on attention to scale (no translation of the antialiased resize), DeconvNet (a traced size in ``F.pad``) and Farabet
(convolution kernels built from tensors), and where it succeeds it records every size that Python code reads as a
constant without a word. ``torch.export`` keeps sizes symbolic and states, per input dimension, the range its trace
is valid for: an upper bound there (or a lower bound at the traced size) means the model turned a size into a Python
number (``int()``, a chunk count) and the file is refused, naming the dimension. A lower bound below the traced size
(e.g. H >= 33 for attention to scale, whose half-scale branch needs a stride-32 map larger than 1x1) is stored
(:data:`MIN_SIZE_KEY`) and enforced by :class:`OnnxModel`. The trace uses a batch of 2 at an odd size
(:data:`EXAMPLE_SIZE`): ``torch.export`` specialises dimensions of size 1, and at an odd size the model takes its
general branches (pad, resize), which are exact no-ops where a size happens to fit. The price is export time, which
grows with the number of graph nodes (about 10 ms each, traced three times): 3-30 s for most models, 1-5 minutes for
the segmentation-aware networks, whose every mask tap is a few nodes (the tracer takes seconds). The exporter's
pattern-rewriting optimiser is replaced by constant folding (:func:`_optimize`).

Model code that does not survive symbolic tracing (custom autograd Functions, size-dependent loops, slice bounds
from ``min``/``max``) has an export path, see ``attnseg.nn.tracing``. After writing the file, the export checks
parity with onnxruntime at two sizes (by default the training crop and an odd size, :func:`default_check_sizes`):
the largest absolute difference of the logits, against their scale and against PyTorch's own rounding noise (the
same input in channels_last), and the share of pixels whose argmax agrees.
An operator without an ONNX translation fails with a message naming it and the model parts (module paths) using it.
"""

from __future__ import annotations

import ast
import json
import logging
import math
import re
import time
import warnings
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

#: ONNX opset written by default: the torch 2.13 exporter's own (no version conversion); onnxruntime >= 1.17 runs it.
#: Opsets below 18 lack the antialiased Resize that attention to scale uses.
DEFAULT_OPSET = 20
#: the batch and size the model is traced at (see the module docstring)
EXAMPLE_SIZE = (2, 281, 373)
#: parity: max |ORT − PyTorch| allowed, in units of the logits' scale max(1, max |logits|) ...
DEFAULT_ATOL = 1e-3
#: ... or in units of PyTorch's own disagreement between a contiguous and a channels_last input (the same math, other
#: kernels), for models that amplify rounding: the segmentation-aware CRF on a 200x-scaled embedding differs from
#: itself by up to 1e-3 of its logits (segaware_dilated_resnet18_crf), onnxruntime from it by 2-3 times that
LAYOUT_FACTOR = 10.0
#: parity: least share of pixels whose argmax must agree
MIN_ID_AGREEMENT = 0.999
#: ``metadata_props`` keys of the ONNX file
META_KEY = "attnseg_meta"                 # the checkpoint metadata, JSON
OUTPUTS_KEY = "attnseg_outputs"           # "logits" or "logits,ids"
MIN_SIZE_KEY = "attnseg_min_size"         # "H,W": the smallest image the graph is valid for
FORMAT_KEY = "attnseg_format"             # version of this layout
EXPORTER_KEY = "attnseg_exporter"
FORMAT_VERSION = "1"
EXPORTER = "torch.export + torch.onnx (dynamo)"
#: protobuf's limit: larger models would need ONNX external data files
MAX_BYTES = 2 * 1024 ** 3

_EXPORT_HINT = ("give it an export path of plain tensor ops under attnseg.nn.tracing.is_exporting() "
                "(see attnseg/nn/tracing.py)")


class ExportError(ValueError):
    """The model cannot be exported; the message (one line) says what is wrong and what to do."""


# -- what is exported ----------------------------------------------------------------------------------------------
class ExportWrapper(nn.Module):
    """The exported computation: ``images (B, 3, H, W)`` -> ``(logits (B, K, H, W) float32,)``, with ``with_ids``
    also ``ids (B, H, W) int64`` (argmax over the classes, first maximum on ties as ``torch.argmax``)."""

    def __init__(self, model: nn.Module, with_ids: bool = False):
        super().__init__()
        self.model, self.with_ids = model, with_ids

    def forward(self, images: torch.Tensor):
        logits = reference_logits(self.model, images)
        return (logits, logits.argmax(1)) if self.with_ids else (logits,)


def reference_logits(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """What the file's ``logits`` output holds: a semantic model's logits, or an instance model's dense maps
    concatenated along the channels (``InstanceModel.flat_maps``; the post-processing is not exported)."""
    out = model(images)
    if getattr(model, "task", "semantic") == "instances":
        return model.flat_maps(out).float()
    return out["logits"].float()


def default_check_sizes(meta: dict) -> tuple[tuple[int, int], tuple[int, int]]:
    """The two parity sizes: what the network saw in training (the crop of ``meta["config"]``, already at the
    network's input scale; without one, a 360x480 image at the checkpoint's test scale) and an odd size about
    4/5 of it (no multiple of 2, so every stride rounds)."""
    crop = (meta.get("config") or {}).get("crop")
    if crop:
        first = (int(crop[0]), int(crop[1]))
    else:
        scale = float((meta.get("inference") or {}).get("test_scale")
                      or (meta.get("preprocessing") or {}).get("test_scale") or 1.0)
        first = (max(1, round(360 * scale)), max(1, round(480 * scale)))
    second = tuple(max(1, int(0.8 * n)) // 2 * 2 + 1 for n in first)
    return first, (second if second != first else (first[0] + 2, first[1] + 2))


# -- diagnostics -------------------------------------------------------------------------------------------------
def _op_key(name: str) -> str:
    """'aten.erfinv.default', 'prims.erf_inv', 'aten::erfinv' -> 'erfinv': the operator, namespace, overload and
    underscores dropped, so that an op and its decomposition's name meet."""
    name = name.replace("::", ".")
    parts = [p for p in name.split(".") if p not in ("aten", "prims", "torch", "ops", "default", "Tensor", "Scalar",
                                                     "int", "vec", "out", "self", "")]
    return parts[0].replace("_", "").lower() if parts else name


def _module_label(path: str, cls) -> str:
    path = re.sub(r"^model\.?", "", path or "")
    cls_name = (cls if isinstance(cls, str) else getattr(cls, "__name__", str(cls))).rsplit(".", 1)[-1]
    return f"{path} ({cls_name})" if path else f"the model's own forward ({cls_name})"


def ops_by_module(model: nn.Module, images: torch.Tensor) -> dict[str, list[str]]:
    """Run ``model(images)`` eagerly and record which module calls which aten operator.

    Args:
        model: any module; its submodules get temporary forward hooks.
        images: (B, 3, H, W) input.

    Returns:
        ``{op key (see _op_key): ["path (Class)", ...]}``, the innermost module of every call, in call order.
    """
    from torch.utils._python_dispatch import TorchDispatchMode

    stack: list[str] = []
    found: dict[str, list[str]] = {}

    class Recorder(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            users = found.setdefault(_op_key(str(func)), [])
            label = stack[-1] if stack else _module_label("", type(model))
            if label not in users:
                users.append(label)
            return func(*args, **(kwargs or {}))

    def enter(label):
        def hook(mod, args):
            stack.append(label)
        return hook

    def leave(mod, args, out):   # returns None: a forward hook's return value would replace the output
        if stack:
            stack.pop()

    handles = []
    for name, m in model.named_modules():
        handles.append(m.register_forward_pre_hook(enter(_module_label(name, type(m)))))
        handles.append(m.register_forward_hook(leave))
    try:
        with torch.no_grad(), Recorder():
            model(images)
    except Exception:   # noqa: BLE001 (best effort: what was recorded before the failure still helps)
        pass
    finally:
        for h in handles:
            h.remove()
    return found


def _matching(keys, key: str) -> list[str]:
    """The op keys among ``keys`` that name ``key``: equal, else one ending with the other (``special_erfinv`` and
    its decomposition ``erf_inv``)."""
    keys = list(keys)
    return [k for k in keys if k == key] or [k for k in keys if k.endswith(key) or key.endswith(k)]


def _users_in_program(ep, key: str) -> list[str]:
    """Module labels of the nodes of an ExportedProgram whose operator has ``key``."""
    nodes = [n for n in ep.graph.nodes if n.op == "call_function"]
    wanted = set(_matching({_op_key(str(n.target)) for n in nodes}, key))
    users = []
    for node in nodes:
        if _op_key(str(node.target)) not in wanted:
            continue
        stack = list((node.meta.get("nn_module_stack") or {}).values())
        label = _module_label(*stack[-1]) if stack else "the model's own forward"
        if label not in users:
            users.append(label)
    return users


def _short(e: BaseException, limit: int = 200) -> str:
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(e)).strip()
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), type(e).__name__)
    return line[:limit]


def _unsupported_op(e: BaseException) -> str | None:
    """The operator an exporter or runtime error names as untranslatable, or None."""
    text = "\n".join(re.sub(r"\x1b\[[0-9;]*m", "", str(x)) for x in _chain(e))
    for pattern in (r"No ONNX function found for <OpOverload\(op='([\w.]+)', overload='(\w+)'\)>",
                    r"(aten::\w+)", r"(aten\.\w+(?:\.\w+)?)"):
        m = re.search(pattern, text)
        if m:
            return m.group(1)
    return None


def _chain(e: BaseException):
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        yield e
        e = e.__cause__ or e.__context__


def _user_location(e: BaseException) -> str | None:
    """'file.py:line' of the innermost attnseg frame an export error points at (the text or the traceback)."""
    text = "\n".join(str(x) for x in _chain(e))
    hits = re.findall(r'File "([^"]*attnseg[^"]*)", line (\d+)', text)
    if hits:
        return f"{hits[-1][0].split('attnseg/', 1)[-1]}:{hits[-1][1]}"
    for x in _chain(e):
        tb, last = x.__traceback__, None
        while tb is not None:
            f = tb.tb_frame.f_code.co_filename
            if "/attnseg/" in f and not f.endswith("attnseg/export.py"):
                last = f"{f.split('/attnseg/', 1)[-1]}:{tb.tb_lineno}"
            tb = tb.tb_next
        if last:
            return "attnseg/" + last
    return None


def _op_failure(name: str, op: str, users: list[str], stage: str) -> ExportError:
    where = ", ".join(users[:6]) + (", ..." if len(users) > 6 else "") if users else "an unidentified part"
    return ExportError(f"{name} cannot be exported to ONNX: {stage} has no translation of the operator {op}, used "
                       f"by {where}; replace it there by supported ops or {_EXPORT_HINT}")


@contextmanager
def _quiet():
    """Silence the exporters' progress lines, warnings and log records (errors still raise)."""
    names = ("torch.onnx", "torch.export", "torch._export", "onnx_ir", "onnxscript", "torch.fx.experimental")
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, lv in zip(loggers, levels):
            lg.setLevel(lv)


# -- export --------------------------------------------------------------------------------------------------------
def input_layout(model: nn.Module, meta: dict) -> tuple[int, tuple[int, int] | None]:
    """(channels, fixed (H, W) or None): segmentation models take (B, 3, H, W) of any size; a classifier
    (``task = "classification"``) takes its training size and channel count (``meta["inference"]``), with a
    dynamic batch only."""
    if getattr(model, "task", "semantic") == "classification":
        inf = meta.get("inference") or {}
        size = inf.get("input_size")
        if not size:
            raise ExportError("the checkpoint does not say the classifier's input size (meta inference.input_size); "
                              "export a checkpoint written by attnseg train")
        return int(inf.get("channels", getattr(model, "in_channels", 1))), (int(size[0]), int(size[1]))
    return 3, None


def _example(channels: int, fixed, batch: int, gen=None) -> torch.Tensor:
    """An input for tracing and checks: standard-normal normalised images, or a classifier's images in [0, 1]."""
    if fixed is None:
        return torch.randn(batch, channels, *EXAMPLE_SIZE[1:], generator=gen)
    return torch.rand(batch, channels, *fixed, generator=gen)


def _trace(wrapper: ExportWrapper, name: str, channels: int = 3, fixed=None):
    """torch.export of the wrapper with dynamic batch, height and width (a classifier: dynamic batch at its fixed
    size) -> (ExportedProgram, (min_h, min_w))."""
    from torch.export import Dim
    example = _example(channels, fixed, EXAMPLE_SIZE[0], torch.Generator().manual_seed(0))
    dims = {"images": {0: Dim.DYNAMIC} if fixed else {0: Dim.DYNAMIC, 2: Dim.DYNAMIC, 3: Dim.DYNAMIC}}
    try:
        with _quiet():
            ep = torch.export.export(wrapper, (example,), dynamic_shapes=dims, strict=False)
    except Exception as e:  # noqa: BLE001 (any failure of the trace becomes one line)
        op = _unsupported_op(e)
        if op and re.search(r"Meta|fake|not implemented|NotImplemented", str(e), re.I):
            found = ops_by_module(wrapper.model, _example(channels, fixed, 1) if fixed else torch.randn(1, 3, 64, 96))
            users = [u for k in _matching(found, _op_key(op)) for u in found[k]]
            raise _op_failure(name, op, users, "torch.export (no symbolic-shape kernel)") from e
        where = _user_location(e)
        raise ExportError(f"{name} cannot be traced by torch.export ({_short(e, 160)})"
                          + (f" at {where}" if where else "") + "; that code depends on tensor values or sizes in "
                          f"Python: {_EXPORT_HINT}") from e
    return ep, (tuple(fixed) if fixed else _size_range(ep, name))


def _size_range(ep, name: str) -> tuple[int, int]:
    """Check that batch, height and width stayed dynamic without an upper bound; return the (H, W) lower bounds."""
    node = next(n for n in ep.graph.nodes if n.op == "placeholder" and n.name == "images")
    shape = node.meta["val"].shape
    lows = {}
    for axis, dim in ((0, "batch"), (2, "height"), (3, "width")):
        s = shape[axis]
        if not isinstance(s, torch.SymInt):
            raise ExportError(f"{name} fixes the {dim} of its input to {int(s)} when traced, so the exported graph "
                              f"would only take that {dim}; find the code that reads it as a Python number and "
                              f"{_EXPORT_HINT}")
        vr = ep.range_constraints.get(s.node.expr)
        lower, upper = (int(vr.lower), float(vr.upper)) if vr is not None else (1, math.inf)
        example = EXAMPLE_SIZE[{0: 0, 2: 1, 3: 2}[axis]]
        # (batch: torch.export's ranges start at 2 however the model is written, and 1 works: test_dynamic_batch)
        if math.isfinite(upper) and upper < 2 ** 31 or (axis > 0 and lower >= example):
            valid = f"{lower} to {int(upper)}" if math.isfinite(upper) and upper < 2 ** 31 else f"{lower} or more"
            raise ExportError(f"{name} traced at a {dim} of {example} is only valid for a {dim} of {valid} (it reads a "
                              "size as a Python number, e.g. int() of a scaled size or a chunk count); "
                              f"{_EXPORT_HINT}; TORCH_LOGS=+dynamic shows the line")
        lows[dim] = lower
    return lows["height"], lows["width"]


def _node_scopes(model_ir) -> dict[str, str]:
    """ONNX node name -> "path (Class)" of the module that produced it (from the exporter's node metadata)."""
    out = {}
    for node in model_ir.graph.all_nodes() if hasattr(model_ir.graph, "all_nodes") else model_ir.graph:
        meta = node.metadata_props
        try:
            scopes = ast.literal_eval(meta.get("pkg.torch.onnx.name_scopes", "[]"))
            classes = ast.literal_eval(meta.get("pkg.torch.onnx.class_hierarchy", "[]"))
        except (ValueError, SyntaxError):
            continue
        if len(scopes) >= 2 and len(classes) >= 2:
            out[node.name] = _module_label(scopes[-2], classes[-2])
        for key in ("pkg.torch.onnx.stack_trace", "pkg.torch.onnx.fx_node"):   # bulky, not needed by anyone
            meta.pop(key, None)
    return out


def _to_onnx(ep, name: str, opset: int, with_ids: bool, small_input):
    """ExportedProgram -> ONNXProgram (axes named batch, height, width), with operator failures explained."""
    outputs = ["logits", "ids"] if with_ids else ["logits"]
    try:
        with _quiet():
            prog = torch.onnx.export(ep, (), dynamo=True, opset_version=opset, input_names=["images"],
                                     output_names=outputs, verbose=False, optimize=False)
    except Exception as e:  # noqa: BLE001
        op = _unsupported_op(e)
        if op:
            key = _op_key(op)
            users = _users_in_program(ep, key)
            if not users:
                found = small_input()
                users = [u for k in _matching(found, key) for u in found[k]]
            raise _op_failure(name, op, users, f"the ONNX exporter (opset {opset})") from e
        raise ExportError(f"{name} could not be converted to ONNX opset {opset} ({_short(e, 160)}); try another "
                          f"--opset (default {DEFAULT_OPSET}) or report it with the model name") from e
    written = prog.model.opset_imports.get("")
    if written != opset:   # below what it supports, the exporter writes its minimum without a word
        raise ExportError(f"the ONNX exporter cannot write {name} in opset {opset} (it wrote opset {written}); choose "
                          f"a newer --opset (default {DEFAULT_OPSET})")
    _optimize(prog.model)
    shape = prog.model.graph.inputs[0].shape
    # dynamic axes only (a classifier's height and width are fixed numbers)
    names = {shape[i]: n for i, n in ((0, "batch"), (2, "height"), (3, "width")) if not isinstance(shape[i], int)}
    prog.rename_axes(names)
    return prog


def _optimize(model_ir) -> None:
    """Constant folding and common-subexpression elimination, in place. Not the exporter's ``optimize=True``: its
    pattern rewriter costs about the square of the graph's size (37 of the 100 s of the segmentation-aware VGG)
    for no measured gain: FCN-8s ResNet-18 at 360x480 ran 0.19 s per image in onnxruntime either way (0.24 s
    unfolded)."""
    import onnx_ir.passes.common as passes
    from onnxscript import optimizer
    optimizer.fold_constants(model_ir)
    for p in (passes.RemoveUnusedNodesPass(), passes.CommonSubexpressionEliminationPass(),
              passes.RemoveUnusedNodesPass(), passes.DeduplicateInitializersPass()):
        p(model_ir)


def _session(path, threads: int | None = None):
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.log_severity_level = 3
    if threads:
        so.intra_op_num_threads = int(threads)
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def _ort_failure(e: BaseException, scopes: dict[str, str], what: str) -> ExportError:
    text = str(e)
    node = re.search(r"Name:\s*'([^']+)'", text) or re.search(r"node with name '?([^'\s]+)", text)
    op = re.search(r"(?:implementation for|running) (\w+)(?:\(\d+\))? node", text)
    where = scopes.get(node.group(1)) if node else None
    detail = " ".join(text.split())[:160]
    return ExportError(f"onnxruntime cannot {what}" + (f" at its {op.group(1)} node" if op else "")
                       + (f" from {where}" if where else "") + f" ({detail}); the exported graph is wrong there: "
                       f"{_EXPORT_HINT}")


def check_parity(session, model: nn.Module, sizes, with_ids: bool = False, batch: int = 1, seed: int = 0,
                 scopes: dict | None = None, channels: int = 3, unit_range: bool = False) -> list[dict]:
    """Compare onnxruntime with PyTorch on random normalised images.

    Args:
        session: an onnxruntime InferenceSession of the exported file.
        model: the PyTorch model (eval mode, fp32, CPU).
        sizes: (H, W) pairs.
        with_ids: the file has the ``ids`` output (compared with PyTorch's argmax as well).
        batch, seed: of the random (B, 3, H, W) standard-normal images.
        scopes: ONNX node name -> module label, to explain a runtime failure.
        channels, unit_range: the input's channels, and images uniform in [0, 1] (classifiers) instead of
            standard-normal normalised ones.

    Returns:
        One dict per size: ``size`` [H, W], ``max_abs_diff``, ``logit_scale`` (max |PyTorch logits|),
        ``id_agreement`` (share of pixels whose argmax agrees), ``torch_layout_diff`` (max |PyTorch − PyTorch| between
        the contiguous and the channels_last input: the model's own sensitivity to rounding) and, with ids,
        ``ids_agreement`` (the ``ids`` output against PyTorch's argmax).
    """
    results = []
    g = torch.Generator().manual_seed(seed)
    for H, W in sizes:
        x = (torch.rand if unit_range else torch.randn)(batch, channels, int(H), int(W), generator=g)
        with torch.no_grad():
            ref = reference_logits(model, x)
        try:
            out = session.run(None, {"images": x.numpy()})
        except Exception as e:  # noqa: BLE001
            raise _ort_failure(e, scopes or {}, f"run the exported model on a {H}x{W} image") from e
        logits = torch.from_numpy(out[0])
        if logits.shape != ref.shape:
            raise ExportError(f"the exported model returns logits of shape {tuple(logits.shape)} for a {H}x{W} image, "
                              f"PyTorch {tuple(ref.shape)}: it froze a size when traced; {_EXPORT_HINT}")
        with torch.no_grad():   # PyTorch against itself: the same input in channels_last runs other kernels
            alt = reference_logits(model, x.contiguous(memory_format=torch.channels_last))
        ids = ref.argmax(1)
        r = {"size": [int(H), int(W)], "max_abs_diff": float((logits - ref).abs().max()),
             "logit_scale": float(ref.abs().max()), "id_agreement": float((logits.argmax(1) == ids).float().mean()),
             "torch_layout_diff": float((alt - ref).abs().max())}
        if with_ids:
            r["ids_agreement"] = float((torch.from_numpy(out[1]) == ids).float().mean())
        results.append(r)
    return results


def tolerance(check: dict, atol: float = DEFAULT_ATOL) -> float:
    """The max |Δ logits| a :func:`check_parity` entry may show: atol · max(1, logit scale), or
    :data:`LAYOUT_FACTOR` times PyTorch's own layout difference where that is larger."""
    return max(atol * max(1.0, check["logit_scale"]), LAYOUT_FACTOR * check.get("torch_layout_diff", 0.0))


def parity_ok(check: dict, atol: float = DEFAULT_ATOL, min_agreement: float = MIN_ID_AGREEMENT) -> bool:
    """A :func:`check_parity` entry within tolerance: max |Δ| <= :func:`tolerance`, ids agree on ``min_agreement``
    of the pixels (the ``ids`` output too)."""
    ok = check["max_abs_diff"] <= tolerance(check, atol) and check["id_agreement"] >= min_agreement
    return ok and check.get("ids_agreement", 1.0) >= min_agreement


@contextmanager
def _eval_fp32_cpu(model: nn.Module):
    """The model in eval mode, float32 on the CPU: itself when it already is (restored afterwards), else a copy."""
    p = next(model.parameters(), None)
    if p is not None and (p.device.type != "cpu" or p.dtype != torch.float32):
        import copy
        model = copy.deepcopy(model).float().cpu()
    was = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was)


def export_onnx(model: nn.Module, meta: dict, path, *, opset: int | None = None, with_ids: bool = False,
                check_sizes=None, atol: float = DEFAULT_ATOL, check: bool = True, threads: int | None = None) -> dict:
    """Export ``model`` to an ONNX file at ``path`` and check it against PyTorch with onnxruntime.

    Args:
        model: a semantic ``SegmentationModel`` (``model(images)["logits"]``); exported in eval mode, fp32.
        meta: the checkpoint metadata (``load_model``'s ``meta``), stored as JSON in the file.
        path: the ``.onnx`` file to write (atomically; parent folders are created).
        opset: ONNX opset (default :data:`DEFAULT_OPSET`).
        with_ids: add the ``ids`` (B, H, W) int64 output.
        check_sizes: (H, W) sizes of the parity check (default :func:`default_check_sizes`); sizes below the
            graph's smallest valid size are raised to it.
        atol: parity tolerance on max |ORT − PyTorch|, in units of max(1, max |logits|) (or, where larger,
            :data:`LAYOUT_FACTOR` x PyTorch's own difference between a contiguous and a channels_last input).
        check: run the parity check.
        threads: onnxruntime intra-op threads of the check (default: torch's thread count).

    Returns:
        A report: ``path``, ``bytes``, ``opset``, ``exporter``, ``outputs``, ``min_size`` [H, W], ``export_s``,
        ``checks`` (see :func:`check_parity`), ``atol``, ``min_id_agreement`` and ``parity_ok`` (None unchecked).

    Raises:
        ExportError: the model cannot be exported (the message names the operator or code and the model part).
    """
    try:
        import onnx  # noqa: F401  (the exporter needs onnx and onnxscript, the check onnxruntime)
        import onnxruntime  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as e:
        raise ExportError(f"ONNX export needs the onnx extra ({e.name} is missing): pip install 'attnseg[onnx]'") from e
    from .engine.checkpoint import atomic_write

    path = Path(path)
    name = str(meta.get("model") or type(model).__name__)
    opset = int(opset or DEFAULT_OPSET)
    if not 7 <= opset <= 23:
        raise ExportError(f"opset {opset} is not an ONNX opset the exporter writes; choose one up to 23 (default "
                          f"{DEFAULT_OPSET})")
    why_not = getattr(model, "not_exportable", None)
    if why_not:
        raise ExportError(f"{name} cannot be exported to ONNX: {why_not}")
    nbytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    if nbytes >= MAX_BYTES:
        raise ExportError(f"{name} has {nbytes / 2 ** 30:.1f} GiB of weights, over the 2 GiB of a single ONNX file; "
                          "use a narrower variant (width=...) to export it")
    t0 = time.perf_counter()
    channels, fixed = input_layout(model, meta)
    with _eval_fp32_cpu(model) as m:
        wrapper = ExportWrapper(m, with_ids).eval()
        ep, min_size = _trace(wrapper, name, channels, fixed)
        prog = _to_onnx(ep, name, opset, with_ids, lambda: ops_by_module(
            m, _example(channels, fixed, 1) if fixed else torch.randn(1, 3, 64, 96)))
        scopes = _node_scopes(prog.model)
        outputs = ["logits", "ids"] if with_ids else ["logits"]
        prog.model.metadata_props.update({
            META_KEY: json.dumps(meta), OUTPUTS_KEY: ",".join(outputs), MIN_SIZE_KEY: f"{min_size[0]},{min_size[1]}",
            FORMAT_KEY: FORMAT_VERSION, EXPORTER_KEY: f"{EXPORTER}, torch {torch.__version__}"})
        atomic_write(path, lambda tmp: prog.save(tmp, external_data=False))
        export_s = time.perf_counter() - t0
        report = {"path": str(path), "format": "onnx", "bytes": path.stat().st_size, "opset": opset,
                  "exporter": EXPORTER, "outputs": outputs, "min_size": list(min_size), "export_s": round(export_s, 1),
                  "checks": [], "atol": atol, "min_id_agreement": MIN_ID_AGREEMENT, "parity_ok": None}
        if not check:
            return report
        try:
            session = _session(path, threads or torch.get_num_threads())
        except Exception as e:  # noqa: BLE001
            raise _ort_failure(e, scopes, "load the exported model") from e
        if fixed:   # a classifier takes one size; its batch is dynamic
            if check_sizes and any(tuple(s) != fixed for s in check_sizes):
                raise ExportError(f"{name} is a classifier of {fixed[0]}x{fixed[1]} images: the parity check runs at "
                                  "that size only; drop --check-size")
            report["checks"] = check_parity(session, m, [fixed], with_ids, batch=3, scopes=scopes,
                                            channels=channels, unit_range=True)
        else:
            sizes = [tuple(s) for s in (check_sizes or default_check_sizes(meta))]
            sizes = [(max(h, min_size[0]), max(w, min_size[1])) for h, w in sizes]
            report["checks"] = check_parity(session, m, sizes, with_ids, scopes=scopes)
    report["parity_ok"] = all(parity_ok(c, atol) for c in report["checks"])
    return report


# -- running an exported file ------------------------------------------------------------------------------------
class OnnxModel:
    """An exported ``.onnx`` file run by onnxruntime (CPU), callable like an attnseg model, so that
    ``attnseg.engine.inference.infer`` and ``evaluate`` run on it unchanged.

    Args:
        path: an ``.onnx`` file written by :func:`export_onnx`.
        threads: onnxruntime intra-op threads (default: onnxruntime's choice, all cores).

    Attributes:
        meta: the checkpoint metadata stored in the file (classes, preprocessing, inference, config...).
        outputs: the file's outputs ("logits" [, "ids"]); min_size: (H, W), the smallest image it takes.

    ``model(images (B, 3, H, W) float32) -> {"logits": (B, K, H, W) float32, "aux": {}}`` on the images' device;
    ``predict(images) -> (B, H, W) int64``. Attention maps need the PyTorch checkpoint.
    """

    training = False

    def __init__(self, path, threads: int | None = None):
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"ONNX file {path} does not exist; write one with attnseg export RUN --format onnx")
        try:
            import onnxruntime  # noqa: F401
        except ImportError as e:
            raise ImportError("running an .onnx file needs onnxruntime: pip install 'attnseg[onnx]'") from e
        try:
            self.session = _session(path, threads)
        except Exception as e:  # noqa: BLE001
            raise ValueError(f"{path} is not an ONNX model onnxruntime can load ({_short(e, 120)}); give an .onnx "
                             "file written by attnseg export") from e
        props = self.session.get_modelmeta().custom_metadata_map
        if META_KEY not in props:
            raise ValueError(f"{path} was not written by attnseg export (it has no {META_KEY} metadata with the "
                             "classes and preprocessing); export the run with attnseg export RUN --format onnx")
        try:
            self.meta = json.loads(props[META_KEY])
        except json.JSONDecodeError:
            self.meta = None
        if not isinstance(self.meta, dict):
            raise ValueError(f"{path} has damaged attnseg metadata ({META_KEY} is not a JSON object); export the run "
                             "again")
        self.path = path
        self.outputs = props.get(OUTPUTS_KEY, "logits").split(",")
        self.min_size = tuple(int(v) for v in props.get(MIN_SIZE_KEY, "1,1").split(","))
        self.num_classes = len((self.meta.get("classes") or {}).get("names") or []) or None

    # the nn.Module surface that infer / evaluate use
    def eval(self):
        return self

    def train(self, mode: bool = True):
        return self

    def to(self, *args, **kwargs):
        return self

    def parameters(self):
        return iter(())

    def _run(self, images: torch.Tensor) -> list:
        channels = int((self.meta.get("inference") or {}).get("channels", 3))
        if images.dim() != 4 or images.shape[1] != channels:
            raise ValueError(f"expected images of shape (B, {channels}, H, W), got {tuple(images.shape)}")
        H, W = images.shape[-2:]
        fixed = (self.meta.get("inference") or {}).get("input_size") if self.meta.get("task") == "classification" \
            else None
        if fixed and (H, W) != tuple(fixed):
            raise ValueError(f"{self.path.name} classifies {fixed[0]}x{fixed[1]} images, not {H}x{W}; resize them "
                             "(attnseg.load does)")
        if H < self.min_size[0] or W < self.min_size[1]:
            raise ValueError(f"{self.path.name} takes images of at least {self.min_size[0]}x{self.min_size[1]} "
                             f"(H x W), not {H}x{W}; resize or pad the image, or use the PyTorch checkpoint")
        x = images.detach().to("cpu", torch.float32).contiguous().numpy()
        return self.session.run(None, {"images": x})

    def __call__(self, images: torch.Tensor, return_attention: bool = False) -> dict:
        if return_attention:
            raise ValueError("attention maps need the PyTorch checkpoint (an exported ONNX file holds only the "
                             "logits); load the run directory instead of the .onnx file")
        logits = torch.from_numpy(self._run(images)[0]).to(images.device)
        return {"logits": logits, "aux": {}}

    forward = __call__

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, H, W) int64 class ids (the ``ids`` output when the file has it)."""
        out = self._run(images)
        ids = out[1] if "ids" in self.outputs else out[0].argmax(1)
        return torch.as_tensor(ids).to(images.device)

    def __repr__(self) -> str:
        return f"OnnxModel({self.path}, {self.meta.get('model')}, outputs={','.join(self.outputs)})"


# -- command line ------------------------------------------------------------------------------------------------
def _size(s: str) -> tuple[int, int]:
    import argparse
    try:
        h, w = (int(v) for v in s.lower().replace(",", "x").split("x"))
        if min(h, w) < 1:
            raise ValueError
    except ValueError:
        raise argparse.ArgumentTypeError(f"takes HxW, two integers >= 1 such as 360x480; not {s!r}") from None
    return h, w


def add_parser(sub) -> None:
    """Add ``attnseg export RUN --format onnx ...`` to the CLI's subparsers."""
    e = sub.add_parser("export", help="export a trained model to ONNX, checked against PyTorch with onnxruntime")
    e.add_argument("run", help="run directory or checkpoint file (model.safetensors, best.safetensors, last.pt)")
    e.add_argument("--format", default="onnx", help="onnx (the only format)")
    e.add_argument("--out", help="output .onnx file (default: RUN/export/model.onnx, or next to a checkpoint file)")
    e.add_argument("--opset", type=int, help=f"ONNX opset (default {DEFAULT_OPSET})")
    e.add_argument("--ids", action="store_true", help="also output the class ids (B, H, W) int64")
    e.add_argument("--check-size", type=_size, action="append", metavar="HxW",
                   help="a size of the parity check, repeatable (default: the training crop and an odd size)")
    e.add_argument("--no-check", action="store_true", help="skip the onnxruntime parity check")
    e.set_defaults(func=cmd_export)


def default_output(run) -> Path:
    """``RUN/export/model.onnx`` for a run directory, ``<checkpoint>.onnx`` next to a checkpoint file."""
    run = Path(run)
    if run.is_dir():
        root = run.parent if run.name == "checkpoints" else run
        return root / "export" / "model.onnx"
    return run.with_suffix(".onnx")


def cmd_export(args) -> int:
    if str(args.format).lower() != "onnx":
        raise ValueError(f"export format {args.format!r} unknown; attnseg exports --format onnx")
    from .engine.checkpoint import load_model
    model, meta = load_model(args.run)
    out = Path(args.out) if args.out else default_output(args.run)
    instances = getattr(model, "task", "semantic") == "instances"
    classifier = getattr(model, "task", "semantic") == "classification"
    if instances and args.ids:
        raise ValueError(f"--ids is the argmax of a semantic model's logits; {meta['model']} is an instance model, "
                         "whose instances come from post-processing that is not exported")
    if out.suffix.lower() != ".onnx":
        raise ValueError(f"--out {out} should name an .onnx file, e.g. {out.with_suffix('.onnx')}")
    report = export_onnx(model, meta, out, opset=args.opset, with_ids=args.ids, check_sizes=args.check_size,
                         check=not args.no_check)
    low = report["min_size"]
    print(f"wrote {out} ({report['bytes'] / 2 ** 20:.1f} MiB, opset {report['opset']}, outputs "
          f"{', '.join(report['outputs'])}, "
          + (f"dynamic batch of {low[0]}x{low[1]} images" if classifier else "dynamic batch and size"
             + (f" >= {low[0]}x{low[1]}" if max(low) > 2 else ""))
          + f", {report['export_s']:.0f} s)")
    if classifier:
        print(f"classifier: input (B, {model.in_channels}, {low[0]}, {low[1]}) grey in [0, 1], output logits (B, "
              f"{len(meta['classes']['names'])})" + (" and ids (B,)" if args.ids else "")
              + "; recurrent glimpses are unrolled, RAM follows its policy's means (deterministic); the glimpse "
              "pictures need the PyTorch checkpoint")
    if instances:
        layout = ", ".join(f"{k} ({c} channel{'s' if c > 1 else ''})" for k, c in model.map_channels().items())
        print(f"instance model: the file's logits are the network's dense maps {layout}; the post-processing that "
              "turns them into instances (watershed, mean shift) is not in the file: attnseg.load / attnseg predict "
              "on the .onnx file run it")
    if not report["checks"]:
        return 0
    print("parity with PyTorch (onnxruntime, CPU, fp32):")
    for c in report["checks"]:
        line = (f"  {c['size'][0]}x{c['size'][1]}: max |Δ logits| {c['max_abs_diff']:.2e} (logits up to "
                f"{c['logit_scale']:.3g}, tolerance {tolerance(c, report['atol']):.1e}), ids agree "
                f"{100 * c['id_agreement']:.2f} %")
        if "ids_agreement" in c:
            line += f", ids output agrees {100 * c['ids_agreement']:.2f} %"
        print(line + ("" if parity_ok(c, report["atol"]) else "  <- beyond the tolerance"))
    if not report["parity_ok"]:
        bad = [c for c in report["checks"] if not parity_ok(c, report["atol"])]
        at = ", ".join(f"{c['size'][0]}x{c['size'][1]}" for c in bad)
        raise ValueError(f"the exported model differs from PyTorch at {at} beyond the tolerance (max |Δ logits| <= "
                         f"{report['atol']:g} x max(1, |logits|) or {LAYOUT_FACTOR:g} x PyTorch's own layout "
                         f"difference, ids agree >= {100 * report['min_id_agreement']:.1f} %); {out} is kept for "
                         "inspection, do not deploy it")
    return 0
