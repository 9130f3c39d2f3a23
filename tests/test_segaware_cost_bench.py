"""benchmarks/segaware_cost.py: its naive reference agrees with the operator, and a tiny run reports every case."""

import importlib.util
from pathlib import Path

import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "segaware_cost.py"
_spec = importlib.util.spec_from_file_location("segaware_cost_bench", SCRIPT)
sc = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(sc)


def test_every_case_computes_the_same_unnormalised_convolution():
    torch.manual_seed(0)
    x, m = torch.randn(2, 3, 5, 6, dtype=torch.float64), torch.ones(2, 9, 5, 6, dtype=torch.float64)
    w, b = torch.randn(4, 3, 3, 3, dtype=torch.float64), torch.randn(4, dtype=torch.float64)
    ref = sc.cases()["conv2d"](x, m, w, b)
    for name in ("segaware", "unfold"):
        torch.testing.assert_close(sc.cases()[name](x, m, w, b), ref)
    m = torch.rand_like(m)
    torch.testing.assert_close(sc.cases()["unfold"](x, m, w, b), sc.cases()["segaware"](x, m, w, b))


def test_tiny_run():
    doc = sc.main(["--channels", "4", "--batch", "1", "--size", "6x7", "--repeats", "1", "--warmup", "0"])
    assert set(doc["results"]) == {"conv2d", "segaware", "segaware_normalized", "unfold"}
    assert doc["results"]["conv2d"]["time_vs_conv2d"] == 1.0
    assert all(r["fwd_bwd_ms"] > 0 for r in doc["results"].values())
    assert isinstance(doc["target"]["time_met"], bool)
