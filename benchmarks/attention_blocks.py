"""Attention blocks one by one: forward and forward+backward time, peak memory and achieved GFLOP/s of the FLA
block against its peers (non-local, DANet PAM / CAM / dual block, criss-cross), beside the machine's dense matmul
rate measured in the same run.

    python benchmarks/attention_blocks.py --out runs/bench/attention_blocks.json     # C=512, B=2, 4 sizes, fp32
    python benchmarks/attention_blocks.py --threads 1 --sizes 33x33 --repeats 2 --warmup 1 --channels 128
    python benchmarks/attention_blocks.py --blocks fla_block,nonlocal_block --sizes 97x97 --dtype bf16
    python benchmarks/attention_blocks.py --device cuda --repeats 20

Blocks (``--blocks``, comma list; default all), each on an input x (B, C, H, W) with C = ``--channels`` (512),
B = ``--batch`` (2), (H, W) from ``--sizes`` (33x33,65x65,97x97,65x129):

- ``fla_attention``: ``attnseg.attention.fla_attention(x, blk.proj_h, blk.proj_w)`` with the two C x C linears of a
  ``FullyAttentionalBlock(C)``: the FLA attention alone, without gamma, residual and the trailing conv3x3-BN-ReLU.
- ``fla_block``: the whole ``FullyAttentionalBlock(C)`` (attention, gamma, residual, conv3x3-BN-ReLU).
- ``nonlocal_attention``: softmax(q @ k) @ v on already projected q (B, HW, C/2), k (B, C/2, HW), v (B, HW, Cv),
  in fp32, with Cv = C (``--nonlocal-value full``, the default: the configuration of METHODS.md §2.2's and the
  issue's cost comparison, key dim 256 and value dim 512 at C = 512) or Cv = C/2 (``half``: Wang et al.'s g).
  nonlocal_block.py has no function for this core on projected tensors (``NonLocalBlock.attention``
  includes the projections), so it is restated here, ``nonlocal_attention``, with the same ops (matmul,
  softmax(dim=-1), matmul, autocast off). Its inputs are 3-D: ``--channels-last`` does not apply to them.
- ``nonlocal_block``: the whole ``NonLocalBlock(C, value_channels=Cv)`` (embedded Gaussian, C/2 query/key
  channels, Cv value channels, the three 1x1 projections, the output 1x1 conv + BN and the residual).
- ``channel_attention`` (DANet CAM, ``ChannelAttention()``), ``position_attention`` (DANet PAM,
  ``PositionAttention(C)``), ``danet_block`` (``DANetBlock(C)``: PAM and CAM, each with its conv3x3-BN-ReLU),
  ``criss_cross`` (``CrissCrossAttention(C, recurrence=2)``).

Every gamma is set to 0.5 and the non-local output BN scale to 1.0 before timing (their initial 0 would not skip
any computation, but this keeps the outputs dependent on the attention, as after training). Weights: seed 0.

Measured, per block and size, each configuration in a fresh Python process (``--in-process`` to measure all in
this one; the memory figures then interfere):

- forward + backward: train mode (BN batch statistics), the inputs ``requires_grad_(True)``, ``loss = (y.float() *
  g).sum()`` with a fixed random g of y's shape, ``loss.backward()``, gradients set to None after every step; the
  median over ``--repeats`` (5) after ``--warmup`` (2) steps. Measured first, in the fresh process.
- forward: eval mode, ``torch.no_grad()``, the median over ``--repeats`` after ``--warmup``.
- ``--dtype bf16``: both under ``torch.autocast(device, torch.bfloat16)``. The attention cores of every block run in
  fp32 by design (autocast off inside), so bf16 changes only their convolutions / projections; ``fla_attention``
  and ``nonlocal_attention`` are then fp32 throughout. ``--channels-last``: the block and x in channels_last.
- On CUDA every run is synchronised before and after.
- peak memory of forward + backward, weights, inputs and g excluded (what the step needs: activations, attention
  maps, gradients of the parameters and of the inputs, autograd buffers):
  - ``peak_fwd_bwd_MiB`` on CPU: the allocator's view, exact and reproducible: one more forward+backward step
    (after the timed ones, not timed) under ``torch.profiler.profile(profile_memory=True)``; the profiler records
    every CPU tensor allocation and free (+/- bytes); the figure is the peak of their running sum in time order
    (``allocated_peak_bytes``). It does not see memory that oneDNN or the C allocator hold outside tensors.
  - ``rss_peak_fwd_bwd_MiB`` on CPU: the OS's view, with ``common.Meter`` (the method of
    benchmarks/scale_cost.py, which reads the peak RSS from ``VmHWM`` in /proc/self/status, else ``ru_maxrss``): the
    increase of the process's peak resident set size over the timed forward+backward steps, read after them minus the
    same read just before them, the high-water mark first reset to the current RSS (``echo 5 >
    /proc/self/clear_refs``, Linux; ``peak_reset: false`` in a row where that was refused, and the figure is then
    over the process's earlier peak, an under-estimate). One step on a 2x2 input runs before the reset (it pages in
    the kernels' code, starts autograd's and oneDNN's machinery), and nothing else runs before it: memory the C
    allocator kept from an earlier step is reused without raising the peak, hence the fresh process per
    configuration. The figure includes the allocator's slack, oneDNN's buffers and first-use costs of the shapes, and
    misses what the C allocator kept from construction and the 2x2 step: on small configurations it reads ~10-20 MiB
    above ``peak_fwd_bwd_MiB`` (fla_block, C=128, B=2, 33x33: 48 vs 30 MiB); on large ones the two agree (non-local
    attention, C=8, B=1, 97x97: 1015 vs 1013 MiB).
  - CUDA (``peak_fwd_bwd_MiB``): ``torch.cuda.max_memory_allocated()`` over the timed steps minus
    ``torch.cuda.memory_allocated()`` before them (after ``reset_peak_memory_stats``), also with ``common.Meter``.
  Beside it, ``memory_estimate_MiB``: the blocks' own estimate of their attention maps in training (fp32
  energies + softmax): ``attention_memory_bytes`` (non-local), ``PositionAttention.memory_bytes``,
  ``DANetBlock.memory_bytes``, ``CrissCrossAttention.memory_bytes``, ``FullyAttentionalBlock.memory_bytes``
  (B (H + W) C^2 x 4 B x 2) and ``ChannelAttention.memory_bytes`` (B C^2 x 4 B x 2). It counts the attention maps
  only, not the activations of the convolutions or the gradients.

Theoretical cost (``block_macs``): matmuls and convolutions only (no softmax, BN, pooling, means, elementwise
ops), a multiply-add = 2 FLOPs; forward+backward = 3x the forward (backward = 2 matmuls per forward matmul; both
equal torch.utils.flop_counter's counts exactly, see tests/test_attention_blocks_bench.py).
Achieved GFLOP/s = FLOPs / median time, and its ratio to the dense matmul rate: the median time of ``a @ b``,
a, b (n, n) with n = ``--matmul-size`` (2048), in the run's dtype (under autocast for bf16), 2 n^3 FLOPs, measured
at the start and at the end of the run (both medians reported; the rate is from the median of all those runs).

Targets at 97x97 (null where that size or one of the blocks was not measured):
  fla_attention forward+backward >= 5x faster than nonlocal_attention; fla_block >= 2x faster than
  nonlocal_block; fla_block forward+backward GFLOP/s >= 75% of the matmul rate. The same ratios are reported for
  the forward alone, and the FLOP ratios. By the formulas of ``block_macs`` at C = 512, 97x97 these FLOP ratios
  are 6.86 (nonlocal_attention / fla_attention) and 2.27 (nonlocal_block / fla_block) with C value channels (the
  default), and 4.57 and 1.56 with the paper's C/2 (``--nonlocal-value half``).

Prints one JSON document on stdout (``--out`` also writes it); progress and a markdown table go to stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import Meter, emit, machine_info, parse_size, run_child, set_threads  # noqa: E402

from attnseg.attention import (  # noqa: E402
    ChannelAttention,
    CrissCrossAttention,
    DANetBlock,
    FullyAttentionalBlock,
    NonLocalBlock,
    PositionAttention,
    attention_memory_bytes,
    fla_attention,
)
from attnseg.engine.precision import Precision, resolve_device  # noqa: E402

BLOCKS = ("fla_attention", "fla_block", "nonlocal_attention", "nonlocal_block", "channel_attention",
          "position_attention", "danet_block", "criss_cross")
DEFAULT_SIZES = "33x33,65x65,97x97,65x129"
CC_RECURRENCE = 2
GAMMA, NL_BN_SCALE = 0.5, 1.0
TARGET_SIZE = (97, 97)
TARGETS = {  # name: (fast block, reference block, minimum speedup)
    "fla_attention_vs_nonlocal_attention": ("fla_attention", "nonlocal_attention", 5.0),
    "fla_block_vs_nonlocal_block": ("fla_block", "nonlocal_block", 2.0),
}
MATMUL_TARGET = ("fla_block", 0.75)  # achieved GFLOP/s >= 75% of the dense matmul rate
MEMORY_METHOD = {
    "cuda": "peak_fwd_bwd_MiB: torch.cuda.max_memory_allocated() during the forward+backward steps minus "
            "memory_allocated() before them",
    "cpu": "peak_fwd_bwd_MiB: peak of the running sum of torch.profiler's CPU memory events (tensor bytes allocated "
           "minus freed) over one untimed forward+backward step; rss_peak_fwd_bwd_MiB: peak RSS (VmHWM, else "
           "ru_maxrss) after the timed forward+backward steps minus the same before them (block, input and g built, "
           "one 2x2 step run), with the peak reset to the current RSS first (/proc/self/clear_refs) where Linux "
           "allows",
}
FLOP_CONVENTION = ("matmuls and convolutions only (softmax, BN, pooling, means and elementwise ops not counted); "
                   "1 multiply-add = 2 FLOPs; forward+backward = 3 x forward")


# ------------------------------------------------------------------------------------------------- theory

def sig(x: float, digits: int = 4) -> float:
    """x rounded to ``digits`` significant digits."""
    return float(f"{x:.{digits}g}")


NONLOCAL_VALUE = {"full": lambda C: C, "half": lambda C: max(1, C // 2)}


def block_macs(name: str, B: int, C: int, H: int, W: int, nonlocal_value: str = "full") -> int:
    """Multiply-adds of one forward of block ``name`` on a (B, C, H, W) input (matmuls and convolutions only).

    N = H·W; C' = C // 2 (non-local query/key channels), Cv = C or C' (``nonlocal_value`` "full" / "half", the
    non-local value channels); Cq = C // 8 (PAM / criss-cross query and key channels).
    Per image:

    - fla_attention: energies 2·N·C² (column branch: W slices (C×H)@(H×C) = N·C²; row branch the same),
      aggregation 2·N·C², the two linears on the H + W strip-pooled vectors (H + W)·C²: 4·N·C² + (H + W)·C².
    - fla_block: fla_attention + the 3x3 conv 9·C²·N.
    - nonlocal_attention: energies N·N·C' + aggregation N·N·Cv (1.5·N²·C for Cv = C, N²·C for Cv = C').
    - nonlocal_block: nonlocal_attention + theta, phi 2·N·C·C' + g N·C·Cv + output 1x1 N·Cv·C.
    - channel_attention: energies N·C² + aggregation N·C² = 2·N·C².
    - position_attention: q, k 2·N·C·Cq + v N·C² + energies N²·Cq + aggregation N²·C.
    - danet_block: position_attention + channel_attention + two 3x3 convs 2·9·C²·N.
    - criss_cross: per recurrence q, k 2·N·C·Cq + v N·C² + energies N·(H + W)·Cq + aggregation N·(H + W)·C;
      times 2 recurrences.

    Returns the total for the batch (B images). FLOPs = 2 x this.
    """
    N = H * W
    ci, cq, cv = max(1, C // 2), max(1, C // 8), NONLOCAL_VALUE[nonlocal_value](C)
    fla = 4 * N * C * C + (H + W) * C * C
    conv3 = 9 * C * C * N
    nl = N * N * ci + N * N * cv
    cam = 2 * N * C * C
    pam = 2 * N * C * cq + N * C * C + N * N * cq + N * N * C
    cc = 2 * N * C * cq + N * C * C + N * (H + W) * cq + N * (H + W) * C
    per_image = {
        "fla_attention": fla,
        "fla_block": fla + conv3,
        "nonlocal_attention": nl,
        "nonlocal_block": nl + 2 * N * C * ci + 2 * N * C * cv,
        "channel_attention": cam,
        "position_attention": pam,
        "danet_block": pam + cam + 2 * conv3,
        "criss_cross": CC_RECURRENCE * cc,
    }
    if name not in per_image:
        raise ValueError(f"unknown block {name!r}; choose one of {', '.join(BLOCKS)}")
    return B * per_image[name]


def memory_estimate(name: str, module, B: int, C: int, H: int, W: int) -> tuple[int, str]:
    """(bytes, source) of the attention maps the block holds in training, by the block's own estimate where it has
    one."""
    if name.startswith("nonlocal"):
        return attention_memory_bytes(B, H, W, False, 4, True), "attention_memory_bytes"
    if name == "channel_attention":
        return ChannelAttention.memory_bytes(B, C, training=True), "ChannelAttention.memory_bytes"
    return module.memory_bytes(B, H, W, training=True), f"{type(module).__name__}.memory_bytes"


# ------------------------------------------------------------------------------------------------ the cases

def nonlocal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(q @ k) @ v: q (B, N, C'), k (B, C', n), v (B, n, C') -> (B, N, C'), in fp32 with autocast off: the
    ops of ``NonLocalBlock.attention`` after its projections (nonlocal_block.py has no function for them)."""
    with torch.autocast(device_type=q.device.type, enabled=False):
        dt = torch.float64 if q.dtype == torch.float64 else torch.float32
        a = torch.softmax(q.to(dt) @ k.to(dt), dim=-1)
        return a @ v.to(dt)


def build_case(name: str, C: int, B: int, H: int, W: int, prec: Precision, nonlocal_value: str = "full"):
    """(module, inputs, fn): ``fn(*inputs)`` is one forward of the block; ``module`` holds its parameters."""
    torch.manual_seed(0)
    if name in ("fla_attention", "fla_block"):
        module = FullyAttentionalBlock(C)
    elif name == "nonlocal_attention":
        module = nn.Module()  # no parameters: q, k, v are the inputs
    elif name == "nonlocal_block":
        module = NonLocalBlock(C, value_channels=NONLOCAL_VALUE[nonlocal_value](C))
    else:
        module = {"channel_attention": lambda: ChannelAttention(),
                  "position_attention": lambda: PositionAttention(C),
                  "danet_block": lambda: DANetBlock(C),
                  "criss_cross": lambda: CrissCrossAttention(C, recurrence=CC_RECURRENCE)}[name]()
    with torch.no_grad():
        for pname, p in module.named_parameters():
            if pname.split(".")[-1] == "gamma":
                p.fill_(GAMMA)
        if isinstance(module, NonLocalBlock):
            module.out[1].weight.fill_(NL_BN_SCALE)
    module = prec.model(module)
    inputs = case_inputs(name, C, B, H, W, prec, nonlocal_value)
    if name == "nonlocal_attention":
        return module, inputs, nonlocal_attention
    if name == "fla_attention":
        return module, inputs, lambda t: fla_attention(t, module.proj_h, module.proj_w)
    return module, inputs, module


def case_inputs(name: str, C: int, B: int, H: int, W: int, prec: Precision,
                nonlocal_value: str = "full") -> list[torch.Tensor]:
    """The block's inputs, random normal: q, k, v for ``nonlocal_attention``, else x (B, C, H, W)."""
    if name == "nonlocal_attention":
        ci, cv, N = max(1, C // 2), NONLOCAL_VALUE[nonlocal_value](C), H * W  # query/key C/2 as NonLocalBlock's
        return [torch.randn(B, N, ci).to(prec.device), torch.randn(B, ci, N).to(prec.device),
                torch.randn(B, N, cv).to(prec.device)]
    return [prec.images(torch.randn(B, C, H, W))]


def output_shape(name: str, inputs: list[torch.Tensor]) -> torch.Size:
    """The shape of the block's output: x's, or v's (B, N, Cv) for ``nonlocal_attention``."""
    return inputs[2].shape if name == "nonlocal_attention" else inputs[0].shape


@contextlib.contextmanager
def quiet_stderr():
    """File descriptor 2 to /dev/null (the profiler's start / stop lines)."""
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def allocated_peak_bytes(step) -> int | None:
    """The peak, during ``step()``, of the bytes of CPU tensors allocated in it and not yet freed: the running sum of
    the +/- sizes of torch.profiler's memory events (``profile_memory=True``), in time order. None where this
    torch's profiler does not expose its events."""
    prof = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True)
    with quiet_stderr():
        prof.start()
    try:
        step()
    finally:
        with quiet_stderr():
            prof.stop()
    try:
        events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
                        if e.name() == "[memory]")
    except AttributeError:
        return None
    live = peak = 0
    for _, nbytes in events:
        live += nbytes
        peak = max(peak, live)
    return peak


def measure(args, name: str, size: tuple[int, int]) -> dict:
    """One (block, size) configuration in this process: forward+backward time and peak memory, then forward time."""
    set_threads(args.threads)
    device = resolve_device(args.device)
    prec = Precision.resolve(device, args.dtype, args.channels_last)
    H, W = size
    module, inputs, fn = build_case(name, args.channels, args.batch, H, W, prec, args.nonlocal_value)
    # the output's shape is known (``output_shape``): no full-size forward needed to shape g before the memory
    # reset (the C allocator would keep what it frees and the measured steps reuse it without raising the RSS)
    g = torch.randn(output_shape(name, inputs), generator=torch.Generator().manual_seed(1)).to(device)
    est, est_source = memory_estimate(name, module, args.batch, args.channels, H, W)
    meter = Meter(device)

    module.train()
    for t in inputs:
        t.requires_grad_(True)

    def step(inputs=inputs, g=g):
        with prec.autocast():
            y = fn(*inputs)
        (y.float() * g).sum().backward()
        module.zero_grad(set_to_none=True)
        for t in inputs:
            t.grad = None

    # one-off costs out of the RSS figure: a step on a 2x2 input first pages in the kernels' code and starts
    # autograd's and oneDNN's machinery (~10 MiB of RSS otherwise counted in the first measured step)
    small = [t.requires_grad_(True) for t in case_inputs(name, args.channels, args.batch, 2, 2, prec,
                                                                        args.nonlocal_value)]
    step(small, torch.ones(output_shape(name, small), device=device))
    del small
    start = meter.start_memory()
    t_train, train_runs = meter.median_seconds(step, args.warmup, args.repeats)
    memory = {"peak_fwd_bwd_MiB": sig(meter.peak_increase(start) / 2**20)}
    if not meter.cuda:  # the RSS figure above; the tensor bytes from one more (untimed) step under the profiler
        allocated = allocated_peak_bytes(step)
        memory = {"peak_fwd_bwd_MiB": None if allocated is None else sig(allocated / 2**20),
                  "rss_peak_fwd_bwd_MiB": memory["peak_fwd_bwd_MiB"], "peak_reset": meter.peak_reset}

    module.eval()
    for t in inputs:
        t.requires_grad_(False)

    def forward():
        with torch.no_grad(), prec.autocast():
            fn(*inputs)

    t_fwd, fwd_runs = meter.median_seconds(forward, args.warmup, args.repeats)
    row = {"forward_ms": round(1000 * t_fwd, 3), "forward_runs_ms": [round(1000 * s, 3) for s in fwd_runs],
           "fwd_bwd_ms": round(1000 * t_train, 3), "fwd_bwd_runs_ms": [round(1000 * s, 3) for s in train_runs],
           **memory, "memory_estimate_MiB": sig(est / 2**20), "memory_estimate": est_source}
    return row


def child_argv(args, name: str, size: tuple[int, int]) -> list[str]:
    argv = [sys.executable, str(Path(__file__).resolve()), "--child", f"{name}:{size[0]}x{size[1]}",
            "--channels", str(args.channels), "--batch", str(args.batch), "--warmup", str(args.warmup),
            "--repeats", str(args.repeats), "--dtype", args.dtype, "--device", args.device,
            "--nonlocal-value", args.nonlocal_value]
    if args.threads:
        argv += ["--threads", str(args.threads)]
    if args.channels_last:
        argv.append("--channels-last")
    return argv


def run_config(args, name: str, size: tuple[int, int]) -> dict:
    if args.in_process:
        return measure(args, name, size)
    return run_child(child_argv(args, name, size))


# --------------------------------------------------------------------------------------------- matmul, ratios

def matmul_times(args, device: torch.device) -> list[float]:
    """Median-able times of one (n, n) @ (n, n) matmul in the run's dtype, after ``--warmup`` runs."""
    prec = Precision.resolve(device, args.dtype, False)
    gen = torch.Generator().manual_seed(2)
    n = args.matmul_size
    a, b = torch.randn(n, n, generator=gen).to(device), torch.randn(n, n, generator=gen).to(device)

    def mm():
        with prec.autocast():
            a @ b

    return Meter(device).median_seconds(mm, args.warmup, args.repeats)[1]


def add_rates(row: dict, name: str, B: int, C: int, H: int, W: int, matmul_gflops: float,
              nonlocal_value: str = "full") -> dict:
    """Theoretical FLOPs, achieved GFLOP/s and their fraction of the matmul rate, added to a measured row."""
    flops = 2 * block_macs(name, B, C, H, W, nonlocal_value)
    row = {"gflop_forward": sig(flops / 1e9, 6), "gflop_fwd_bwd": sig(3 * flops / 1e9, 6), **row}
    if "error" in row:
        return row
    fwd = flops / (row["forward_ms"] / 1000) / 1e9
    train = 3 * flops / (row["fwd_bwd_ms"] / 1000) / 1e9
    row.update(forward_gflops=sig(fwd), fwd_bwd_gflops=sig(train), forward_vs_matmul=sig(fwd / matmul_gflops),
               fwd_bwd_vs_matmul=sig(train / matmul_gflops))
    return row


def targets(results: dict, B: int, C: int, nonlocal_value: str = "full") -> dict:
    """The targets at 97x97: measured speedups / matmul fractions and pass booleans, null where not measured."""
    key = f"{TARGET_SIZE[0]}x{TARGET_SIZE[1]}"

    def row(name):
        r = results.get(name, {}).get(key)
        return None if r is None or "error" in r else r

    out = {"size": key}
    for tname, (fast, ref, need) in TARGETS.items():
        a, b = row(fast), row(ref)
        t = {"target_speedup": need,
             "flop_ratio": round(block_macs(ref, B, C, *TARGET_SIZE, nonlocal_value)
                                 / block_macs(fast, B, C, *TARGET_SIZE, nonlocal_value), 3),
             "speedup_fwd_bwd": None, "speedup_forward": None, "met_fwd_bwd": None, "met_forward": None}
        if a is not None and b is not None:
            s_train, s_fwd = b["fwd_bwd_ms"] / a["fwd_bwd_ms"], b["forward_ms"] / a["forward_ms"]
            t.update(speedup_fwd_bwd=round(s_train, 3), speedup_forward=round(s_fwd, 3),
                     met_fwd_bwd=s_train >= need, met_forward=s_fwd >= need)
        out[tname] = t
    name, need = MATMUL_TARGET
    r = row(name)
    t = {"target_fraction": need, "fraction_fwd_bwd": None, "fraction_forward": None, "met_fwd_bwd": None,
         "met_forward": None}
    if r is not None and "fwd_bwd_vs_matmul" in r:
        t.update(fraction_fwd_bwd=r["fwd_bwd_vs_matmul"], fraction_forward=r["forward_vs_matmul"],
                 met_fwd_bwd=r["fwd_bwd_vs_matmul"] >= need, met_forward=r["forward_vs_matmul"] >= need)
    out[f"{name}_vs_matmul"] = t
    return out


# ----------------------------------------------------------------------------------------------------- report

def markdown(doc: dict) -> str:
    def f(v, fmt="{:.1f}"):
        return "-" if v is None else fmt.format(v)

    mm = doc["matmul"]
    lines = [f"dense matmul {mm['n']}x{mm['n']} {doc['dtype']}: {mm['gflops']:.1f} GFLOP/s "
             f"({doc['machine']['torch_threads']} threads)", "",
             "| block | HxW | GFLOP fwd | fwd ms | fwd GFLOP/s | fwd % mm | fwd+bwd ms | fwd+bwd GFLOP/s "
             "| fwd+bwd % mm | peak fwd+bwd MiB | RSS peak MiB | est. attn MiB |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, per_size in doc["results"].items():
        for size, r in per_size.items():
            if "error" in r:
                lines.append(f"| {name} | {size} | {r['gflop_forward']:.3g} | {r['error']} ||||||||")
                continue
            lines.append(f"| {name} | {size} | {r['gflop_forward']:.3g} | {r['forward_ms']:.2f} | "
                         f"{r['forward_gflops']:.1f} | {100 * r['forward_vs_matmul']:.0f} | {r['fwd_bwd_ms']:.2f} | "
                         f"{r['fwd_bwd_gflops']:.1f} | {100 * r['fwd_bwd_vs_matmul']:.0f} | "
                         f"{f(r['peak_fwd_bwd_MiB'], '{:.4g}')} | {f(r.get('rss_peak_fwd_bwd_MiB'), '{:.4g}')} | "
                         f"{r['memory_estimate_MiB']:.4g} |")
    t = doc["targets"]
    lines += ["", f"targets at {t['size']}:",
              "| target | need | FLOP ratio | fwd+bwd | met | fwd | met |", "|---|---|---|---|---|---|---|"]
    for tname in TARGETS:
        v = t[tname]
        lines.append(f"| {tname} speedup | >= {v['target_speedup']:g}x | {v['flop_ratio']:.2f} | "
                     f"{f(v['speedup_fwd_bwd'], '{:.2f}x')} | {v['met_fwd_bwd']} | "
                     f"{f(v['speedup_forward'], '{:.2f}x')} | {v['met_forward']} |")
    v = t[f"{MATMUL_TARGET[0]}_vs_matmul"]
    pct = lambda x: f(None if x is None else 100 * x, "{:.0f}%")
    lines.append(f"| {MATMUL_TARGET[0]} GFLOP/s / matmul | >= {100 * v['target_fraction']:.0f}% | - | "
                 f"{pct(v['fraction_fwd_bwd'])} | {v['met_fwd_bwd']} | {pct(v['fraction_forward'])} | "
                 f"{v['met_forward']} |")
    return "\n".join(lines)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--blocks", default=",".join(BLOCKS), help=f"comma list of {', '.join(BLOCKS)}")
    p.add_argument("--sizes", default=DEFAULT_SIZES, help="comma list of HxW")
    p.add_argument("--channels", type=int, default=512)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--dtype", default="fp32", choices=("fp32", "bf16"), help="bf16 = torch.autocast bfloat16")
    p.add_argument("--channels-last", action="store_true", help="block and input in channels_last")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--nonlocal-value", default="full", choices=tuple(NONLOCAL_VALUE),
                   help="non-local value channels: full = C (the issue's comparison), half = C/2 (Wang et al.)")
    p.add_argument("--matmul-size", type=int, default=2048, help="n of the reference (n, n) @ (n, n) matmul")
    p.add_argument("--in-process", action="store_true",
                   help="measure every configuration in this process (memory figures then interfere)")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--out", default=None, help="also write the JSON here")
    args = p.parse_args(argv)
    if args.repeats < 1 or args.warmup < 0:
        p.error("--repeats must be >= 1 and --warmup >= 0")
    args.blocks = [b.strip() for b in args.blocks.split(",") if b.strip()]
    unknown = [b for b in args.blocks if b not in BLOCKS]
    if unknown:
        p.error(f"unknown blocks {unknown}; choose from {', '.join(BLOCKS)}")
    args.sizes = [parse_size(s) for s in args.sizes.split(",") if s.strip()]
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.child:
        name, _, size = args.child.partition(":")
        print(json.dumps(measure(args, name, parse_size(size))), flush=True)
        return None
    set_threads(args.threads)
    device = resolve_device(args.device)
    t0 = time.time()
    mm_start = matmul_times(args, device)
    results = {name: {} for name in args.blocks}
    for H, W in args.sizes:
        for name in args.blocks:
            row = run_config(args, name, (H, W))
            results[name][f"{H}x{W}"] = row
            print(f"{name} {H}x{W}: " + ", ".join(f"{k} {v}" for k, v in row.items()
                                                   if not k.endswith("runs_ms") and k != "memory_estimate"),
                  file=sys.stderr, flush=True)
    mm_end = matmul_times(args, device)
    n = args.matmul_size
    mm_gflops = 2 * n**3 / statistics.median(mm_start + mm_end) / 1e9
    for name, per_size in results.items():
        for key, row in per_size.items():
            per_size[key] = add_rates(row, name, args.batch, args.channels, *parse_size(key), mm_gflops,
                                      args.nonlocal_value)
    doc = {"benchmark": "attention_blocks", "channels": args.channels, "batch": args.batch,
           "sizes": [list(s) for s in args.sizes], "blocks": args.blocks, "dtype": args.dtype,
           "autocast": args.dtype == "bf16", "channels_last": args.channels_last, "device": str(device),
           "warmup": args.warmup, "repeats": args.repeats, "statistic": "median",
           "nonlocal_value_channels": NONLOCAL_VALUE[args.nonlocal_value](args.channels),
           "gamma": GAMMA, "nonlocal_bn_scale": NL_BN_SCALE, "criss_cross_recurrence": CC_RECURRENCE,
           "fwd_bwd": "train mode, inputs requires_grad, loss = (y.float() * g).sum() with fixed random g, backward",
           "flop_convention": FLOP_CONVENTION,
           "memory_method": MEMORY_METHOD[device.type], "memory_estimate": "the attention maps (fp32 energies + "
           "softmax) in training, by the block's own estimate where it has one (see memory_estimate of a row)",
           "isolation": "in-process" if args.in_process else "fresh process per configuration",
           "matmul": {"n": n, "gflops": sig(mm_gflops),
                      "median_ms_start": round(1000 * statistics.median(mm_start), 3),
                      "median_ms_end": round(1000 * statistics.median(mm_end), 3),
                      "runs_ms": [round(1000 * s, 3) for s in mm_start + mm_end]},
           "results": results, "targets": targets(results, args.batch, args.channels, args.nonlocal_value),
           "wall_seconds": round(time.time() - t0, 1),
           "machine": {**machine_info(device.type), "torch_threads": torch.get_num_threads(),
                       "dtype": args.dtype}}
    print("\n" + markdown(doc) + "\n", file=sys.stderr, flush=True)
    emit(doc, args.out)
    return doc


if __name__ == "__main__":
    main()
