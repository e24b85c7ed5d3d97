"""Each statistic of the hot path against a plain NumPy / loop computation.

The references (``ref_moments``, ``loop_dead_fraction``) live here, in the tests;
what they check is what the monitor's hooks compute (:func:`gradscope.plan.summarize`
runs the same plan), on the CPU path and on the accelerator path.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from gradscope import activation_stats, stats
from gradscope.activations import family_of
from gradscope.plan import summarize

torch.manual_seed(0)
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
DTYPE_IDS = ["fp32", "fp16", "bf16"]


def ref_moments(a: np.ndarray) -> list[float]:
    a = a.astype(np.float64).ravel()
    return [a.mean(), a.std(), a.min(), a.max()]


def loop_dead_fraction(y: np.ndarray, unit_dim: int) -> float:
    moved = np.moveaxis(y, unit_dim, 0).reshape(y.shape[unit_dim], -1)
    dead = 0
    for unit in moved:
        if all(v <= 0 for v in unit):
            dead += 1
    return dead / moved.shape[0]


def hot(y: torch.Tensor, module: nn.Module | None = None, unit_dim: int | None = None
        ) -> dict[str, float]:
    """What the monitor's hooks record for an activation whose output is ``y``."""
    module = module if module is not None else nn.Tanh()
    fam = family_of(module)
    assert fam is not None
    return summarize(fam, module, None, y, eps=0.01, delta=0.01, unit_dim=unit_dim)


def hot_moments(y: torch.Tensor) -> list[float]:
    v = hot(y)
    return [v["mean"], v["std"], v["min"], v["max"]]


@pytest.fixture(params=[True, False], ids=["cpu_path", "accelerator_path"])
def path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> bool:
    """Run a test on the CPU path (values read to skip work) and on the accelerator path."""
    if not request.param:
        monkeypatch.setattr(stats, "host_readable", lambda t: False)
    return bool(request.param)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_moments_match_numpy(dtype: torch.dtype, path: bool) -> None:
    x = (torch.randn(37, 11) * 3 + 1).to(dtype)
    ref = ref_moments(x.float().numpy())
    np.testing.assert_allclose(hot_moments(x), ref, rtol=1e-4, atol=1e-5)


def test_moments_fp16_large_values_do_not_overflow(path: bool) -> None:
    # Sum of squares of 60000 * 4000**2 overflows fp16 but not the fp32 computation.
    x = torch.full((100, 100), 4000.0, dtype=torch.float16)
    x[0, 0] = -4000.0
    got = hot_moments(x)
    assert all(math.isfinite(v) for v in got)
    np.testing.assert_allclose(got, ref_moments(x.float().numpy()), rtol=1e-3)


def test_moments_empty_is_nan_and_all_zero_is_zero(path: bool) -> None:
    assert all(math.isnan(v) for v in hot_moments(torch.empty(0, 5)))
    assert hot_moments(torch.zeros(3, 4)) == [0, 0, 0, 0]


def test_nonfinite_count_counts_nan_and_both_infs() -> None:
    x = torch.tensor([1.0, float("nan"), float("inf"), -float("inf"), 0.0])
    assert stats.nonfinite_count(x).item() == 3
    assert stats.nonfinite_count(torch.empty(0)).item() == 0
    assert stats.nonfinite_count(torch.arange(4)).item() == 0  # integers are always finite
    assert stats.nonfinite_count(x.half()).item() == 3


def test_moments_propagate_nan(path: bool) -> None:
    x = torch.tensor([1.0, float("nan")])
    assert all(math.isnan(v) for v in hot_moments(x))
    assert hot(x)["nonfinite"] == 1


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_l2_norm_matches_numpy(dtype: torch.dtype) -> None:
    x = torch.randn(300).to(dtype) * 100
    ref = np.sqrt((x.float().numpy().astype(np.float64) ** 2).sum())
    assert stats.l2_norm(x).item() == pytest.approx(ref, rel=1e-4)
    assert stats.l2_norm(torch.empty(0)).item() == 0.0


def test_fraction_and_counts() -> None:
    x = torch.tensor([0.001, 0.5, -1.0, float("nan")])
    assert stats.count_where(torch.lt, x, 0.01).item() == 2  # nan is not small
    assert math.isnan(stats.fraction(torch.empty(0, dtype=torch.bool)).item())


def test_sigmoid_saturation_matches_loop() -> None:
    y = torch.sigmoid(torch.randn(50, 20) * 6)
    eps = 0.01
    flat = y.flatten().tolist()
    ref = sum(1 for v in flat if v < eps or v > 1 - eps) / len(flat)
    assert activation_stats.sigmoid_saturation(y, eps).item() == pytest.approx(ref)


def test_symmetric_and_interval_saturation_match_loop() -> None:
    y = torch.tanh(torch.randn(40, 10) * 3)
    flat = y.flatten().tolist()
    ref = sum(1 for v in flat if abs(v) > 1 - 0.05) / len(flat)
    assert activation_stats.symmetric_saturation(y, 1.0, 0.05).item() == pytest.approx(ref)
    h = torch.clamp(torch.randn(100) * 2, -1.5, 2.0)
    ref2 = sum(1 for v in h.tolist() if v <= -1.5 + 0.01 or v >= 2.0 - 0.01) / 100
    assert activation_stats.interval_saturation(h, -1.5, 2.0, 0.01).item() == pytest.approx(ref2)
    ref3 = sum(1 for v in h.tolist() if v >= 2.0 - 0.01) / 100
    assert activation_stats.interval_saturation(h, None, 2.0, 0.01).item() == pytest.approx(ref3)


@pytest.mark.parametrize("dim", [0, 1, -1], ids=["dim0", "dim1", "dimlast"])
def test_softmax_saturation_counts_rows(dim: int) -> None:
    logits = torch.randn(6, 5, 4) * torch.tensor([0.1, 20.0, 1.0, 50.0]).view(1, 1, 4)
    p = torch.softmax(logits, dim=dim)
    a = np.moveaxis(p.numpy(), dim, -1).reshape(-1, p.shape[dim])
    ref = float(np.mean(a.max(axis=1) >= 1 - 0.01))
    assert activation_stats.softmax_saturation(p, dim, 0.01).item() == pytest.approx(ref)


def test_resolve_unit_dim_defaults_and_errors() -> None:
    assert activation_stats.resolve_unit_dim(2, None) == 1
    assert activation_stats.resolve_unit_dim(3, None) == 2  # (batch, seq, features)
    assert activation_stats.resolve_unit_dim(4, None) == 1  # (batch, channels, H, W)
    assert activation_stats.resolve_unit_dim(3, 1) == 1
    assert activation_stats.resolve_unit_dim(3, -2) == 1
    with pytest.raises(ValueError, match="unit_dim=5"):
        activation_stats.resolve_unit_dim(2, 5)


@pytest.mark.parametrize(
    "shape,unit_dim",
    [((32, 10), None), ((8, 5, 3, 3), None), ((4, 7, 6), None), ((4, 7, 6), 1)],
    ids=["linear", "conv", "sequence", "conv1d"],
)
def test_dead_fraction_matches_loop(shape: tuple[int, ...], unit_dim: int | None,
                                    path: bool) -> None:
    y = torch.relu(torch.randn(*shape) - 1.2)
    ud = activation_stats.resolve_unit_dim(len(shape), unit_dim)
    assert hot(y, nn.ReLU(), unit_dim)["dead_units"] == pytest.approx(
        loop_dead_fraction(y.numpy(), ud))


def test_dead_fraction_edge_cases(path: bool) -> None:
    def dead(y: torch.Tensor) -> float:
        return hot(y, nn.ReLU())["dead_units"]

    assert dead(torch.zeros(5, 4)) == 1.0
    assert dead(torch.ones(5, 4)) == 0.0
    assert math.isnan(dead(torch.empty(0, 4)))
    # One positive sample keeps a unit alive.
    y = torch.zeros(100, 3)
    y[57, 1] = 1e-6
    assert dead(y) == pytest.approx(2 / 3)


def test_foreach_norms_and_nonfinite_counts_match_per_tensor() -> None:
    ts = [torch.randn(3, 4), torch.randn(7).half(), torch.tensor([1.0, float("nan"), float("inf")])]
    norms = stats.foreach_norms(ts)
    for t, n in zip(ts[:2], norms[:2]):
        assert n.item() == pytest.approx(np.linalg.norm(t.float().numpy()), rel=1e-3)
    assert math.isnan(norms[2].item())
    assert stats.foreach_nonfinite_counts(ts).tolist() == [0.0, 0.0, 2.0]


@pytest.mark.parametrize("shape", [(7,), (5, 9), (3, 4, 6), (2, 3, 4, 5)])
@pytest.mark.parametrize("op", [torch.lt, torch.le, torch.gt, torch.ge], ids=["lt", "le", "gt", "ge"])
def test_count_where_matches_a_loop_also_blockwise(
        shape: tuple[int, ...], op: object, monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(3)
    x = torch.randn(*shape)
    x.view(-1)[0] = float("nan")  # NaN compares false
    x.view(-1)[-1] = 0.25  # a tie with the threshold
    py_op = {torch.lt: float.__lt__, torch.le: float.__le__, torch.gt: float.__gt__,
             torch.ge: float.__ge__}[op]  # type: ignore[index]
    ref = sum(1 for v in x.flatten().tolist() if py_op(v, 0.25))
    assert stats.count_where(op, x, 0.25).item() == ref  # type: ignore[arg-type]
    monkeypatch.setattr(stats, "SCRATCH_ELEMENTS", 7)  # a few rows per block, or none fits
    monkeypatch.setattr(stats, "SCRATCH_MIN_ELEMENTS", 0)  # the scratch path, even this small
    monkeypatch.setattr(stats, "_scratch", type(stats._scratch)())
    assert stats.count_where(op, x, 0.25).item() == ref  # type: ignore[arg-type]
    assert stats.count_where(op, x.transpose(0, -1), 0.25).item() == ref  # type: ignore[arg-type]


def test_known_finite_reads_cpu_values_only(monkeypatch: pytest.MonkeyPatch) -> None:
    assert stats.known_finite(torch.tensor(3.0))
    assert stats.known_finite(torch.tensor([1.0, 2.0]))
    assert not stats.known_finite(torch.tensor(float("nan")))
    assert not stats.known_finite(torch.tensor([1.0, float("inf")]))
    monkeypatch.setattr(stats, "host_readable", lambda t: False)  # as on a GPU
    assert not stats.known_finite(torch.tensor(3.0))


@pytest.mark.parametrize("blocks", [False, True], ids=["scratch_default", "scratch_1M"])
def test_sum_squares_is_accurate_on_large_tensors(
        blocks: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """vector_norm's float32 accumulation drifts ~1e-4 at 8e6 elements; ours must not."""
    torch.manual_seed(4)
    x = 3.0 + torch.randn(2000, 4000)
    if blocks:
        monkeypatch.setattr(stats, "SCRATCH_ELEMENTS", 10**6)
        monkeypatch.setattr(stats, "_scratch", type(stats._scratch)())
    xd = x.double()
    assert stats.sum_squares(x).item() == pytest.approx(xd.square().sum().item(), rel=1e-6)
    centered = (xd - xd.mean()).square().sum().item()
    assert stats.sum_squares(x, x.mean()).item() == pytest.approx(centered, rel=1e-5)
    assert hot(x)["std"] == pytest.approx(xd.std(correction=0).item(), rel=1e-5)


def test_fused_norms_of_huge_finite_values_are_exact_on_the_cpu(monkeypatch) -> None:
    """float32 squares of 1e20 overflow; the CPU path computes that norm again in float64,
    the accelerator path leaves it inf (never a finite wrong value)."""
    ts = [torch.tensor([1e20, 2e20]), torch.tensor([1.0, float("nan")]), torch.ones(4)]
    got = stats.foreach_norms(ts).tolist()
    assert got[0] == pytest.approx(math.sqrt(5) * 1e20, rel=1e-6)
    assert math.isnan(got[1]) and got[2] == 2.0
    monkeypatch.setattr(stats, "host_readable", lambda t: False)
    assert stats.foreach_norms(ts).tolist()[0] == math.inf


def test_foreach_finite_probe_flags_each_tensor_like_isfinite() -> None:
    """0 for a tensor whose elements are all finite (huge ones and empty ones too), NaN for
    one holding a NaN or ±Inf, whatever the dtype; one fused call."""
    big = torch.full((3,), 3e38)
    tensors = [torch.randn(5), torch.tensor([1.0, math.nan]), torch.tensor([-math.inf]),
               big, torch.zeros(0), torch.randn(4, dtype=torch.float16),
               torch.tensor([math.inf], dtype=torch.bfloat16), big.double() * 1e10]
    got = stats.foreach_finite_probe(tensors)
    assert got.dtype == torch.float32
    want = [0.0 if bool(torch.isfinite(t).all()) else math.nan for t in tensors]
    assert [v if v == v else math.nan for v in got.tolist()] == pytest.approx(want, nan_ok=True)
