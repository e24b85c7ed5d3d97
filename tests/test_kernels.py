"""The Triton kernels (gradscope.kernels) under Triton's interpreter equal the eager path.

CI has no GPU: the kernels run interpreted on CPU tensors (``gradscope.kernels.load(True)``
defines them with ``TRITON_INTERPRET=1``). The reference is the eager statistics
(:func:`gradscope.reductions.summarize`), computed from the same tensors upcast to
``float32``. Tensors stay small (the interpreter runs each program in NumPy).
"""

from __future__ import annotations

import math
import os
from typing import Optional

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from gradscope import kernels
from gradscope.activation_stats import resolve_unit_dim
from gradscope.activations import family_of
from gradscope.kernels import config
from gradscope.kernels.engine import NEVER, FusedStats
from gradscope.plan import Plan, summarize
from tests.fixtures.triton import needs_triton

pytestmark = [
    needs_triton,
    # the interpreter evaluates GELU's y / x at x = 0 in NumPy (NaN, then 1/2 as on the eager path)
    pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning"),
]

EPS = DELTA = 0.01


def test_the_kernels_load_where_triton_is_installed() -> None:
    """Triton is installed here, so the kernels must load (a broken kernel module is a
    failure, never a skip of the fused path's tests)."""
    assert kernels.missing(True) is None
DTYPES = [torch.float32, torch.bfloat16, torch.float16]

MODULES: dict[str, nn.Module] = {
    "relu": nn.ReLU(), "leaky_relu": nn.LeakyReLU(0.1), "sigmoid": nn.Sigmoid(), "tanh": nn.Tanh(),
    "gelu": nn.GELU(), "gelu_tanh": nn.GELU(approximate="tanh"), "silu": nn.SiLU(),
    "elu": nn.ELU(0.7), "selu": nn.SELU(), "celu": nn.CELU(1.5), "hardtanh": nn.Hardtanh(-0.5, 2.0),
    "relu6": nn.ReLU6(), "hardsigmoid": nn.Hardsigmoid(), "softsign": nn.Softsign(),
}


def fused(module: nn.Module, x: torch.Tensor, y: torch.Tensor,
          unit_dim: Optional[int] = None) -> dict[str, float]:
    """The forward metrics of one call from the kernels (interpreted), decoded like the monitor."""
    fam = family_of(module)
    assert fam is not None
    spec = config.forward_spec(fam, module, EPS, DELTA)
    assert spec is not None, fam.name
    plan = Plan(fam, "activation")
    ud = resolve_unit_dim(y.ndim, unit_dim) if spec.regime else None
    eng = FusedStats(window=10)
    with kernels.interpreted():
        out = eng.forward(spec, x if spec.needs_x else None, y, ud, 0)
        eng.finish()
    code = config.decoder_code(spec, plan.needs, y.numel(), DELTA)
    assert code is not None
    vals = out.tolist()
    v = {n: (vals[c] if isinstance(c, int) else vals[c[0]] * c[1] + c[2])
         for n, c in zip(plan.needs, code)}
    units = y.shape[ud] if ud is not None else 0
    return {r.metric: r.value for r in plan.finish(0, "", v, y.numel(), units)}


def eager(module: nn.Module, x: torch.Tensor, y: torch.Tensor,
          unit_dim: Optional[int] = None) -> dict[str, float]:
    fam = family_of(module)
    assert fam is not None
    return summarize(fam, module, x.float(), y.float(), eps=EPS, delta=DELTA, unit_dim=unit_dim)


def assert_close(got: dict[str, float], want: dict[str, float], rel: float = 1e-5,
                 scale: float = 1.0) -> None:
    assert got.keys() == want.keys()
    for k, w in want.items():
        g = got[k]
        if math.isnan(w):
            assert math.isnan(g), (k, g, w)
        elif math.isinf(w):
            assert g == w, (k, g, w)
        else:
            assert g == pytest.approx(w, rel=rel, abs=1e-6 * scale), (k, g, w)


def call(name: str, x: torch.Tensor) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    m = MODULES[name]
    with torch.no_grad():
        y = m(x.float()).to(x.dtype)
    return m, x, y


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).split(".")[1])
@pytest.mark.parametrize("name", list(MODULES))
def test_each_family_and_dtype_equals_the_eager_path(name: str, dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(len(name))
    x = (torch.randn(6, 5, 37, generator=gen) * 3).to(dtype)
    m, x, y = call(name, x)
    assert_close(fused(m, x, y), eager(m, x, y), scale=10)


LAYOUTS = {
    "rank1": lambda g: torch.randn(300, generator=g),
    "rank2": lambda g: torch.randn(33, 70, generator=g),
    "rank3": lambda g: torch.randn(4, 9, 67, generator=g),
    "rank4": lambda g: torch.randn(3, 67, 5, 6, generator=g),
    "rank5": lambda g: torch.randn(2, 5, 3, 4, 6, generator=g),
    "channels_last": lambda g: torch.randn(3, 19, 7, 5, generator=g).to(
        memory_format=torch.channels_last),
    "channels_last_3d": lambda g: torch.randn(2, 6, 3, 4, 5, generator=g).to(
        memory_format=torch.channels_last_3d),
    "transposed": lambda g: torch.randn(40, 30, generator=g).t(),
    "strided_slice": lambda g: torch.randn(6, 20, 9, generator=g)[:, ::3],
    "unflattenable": lambda g: torch.randn(5, 8, 6, 7, generator=g).permute(2, 1, 0, 3)[:, ::2],
    "one_unit_block_and_one": lambda g: torch.randn(1, 129, generator=g),
}


@pytest.mark.parametrize("name", ["relu", "gelu", "tanh"])
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_ranks_and_layouts(layout: str, name: str) -> None:
    gen = torch.Generator().manual_seed(7)
    x = LAYOUTS[layout](gen) - 0.2
    m, x, y = call(name, x)
    if layout == "channels_last":
        y = y.contiguous(memory_format=torch.channels_last)
    assert_close(fused(m, x, y), eager(m, x, y), scale=10)


@pytest.mark.parametrize("unit_dim", [0, -1, 2])
def test_unit_dim(unit_dim: int) -> None:
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(5, 7, 11, generator=gen)
    x[:, :, 3] = -1.0  # dead along the last dim
    x[2] = -1.0  # and a dead sample along dim 0
    m, x, y = call("relu", x)
    assert_close(fused(m, x, y, unit_dim), eager(m, x, y, unit_dim))


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).split(".")[1])
@pytest.mark.parametrize("name", ["relu", "gelu", "tanh", "sigmoid", "leaky_relu"])
def test_nan_and_inf(name: str, dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(11)
    x = torch.randn(8, 3, 21, generator=gen)
    x[0, 0, 0] = math.nan  # tl.max may ignore NaN: counted apart
    x[1, 2, 5] = math.inf
    x[3, 1, 7] = -math.inf
    m, x, y = call(name, x.to(dtype))
    got, want = fused(m, x, y), eager(m, x, y)
    assert want["nonfinite"] >= 1 and math.isnan(want["mean"])
    assert_close(got, want)


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_only_one_infinity_keeps_its_sign(sign: float) -> None:
    x = torch.linspace(-2, 2, 300).reshape(10, 30)
    x[4, 4] = sign * math.inf
    m, x, y = call("leaky_relu", x)
    got, want = fused(m, x, y), eager(m, x, y)
    assert got["mean"] == want["mean"] == sign * math.inf
    assert_close(got, want)


def test_large_mean_does_not_cancel() -> None:
    """A mean 1e4 times the std: the one-pass E[y²] - mean² would lose every digit in
    float32; the per-tile Welford merges keep the std to ~1e-6."""
    gen = torch.Generator().manual_seed(5)
    x = 1e4 + torch.randn(64, 300, generator=gen, dtype=torch.float64)
    m, _, _ = call("relu", x.float())
    x32 = x.float()
    got = fused(m, x32, x32)
    assert got["std"] == pytest.approx(x32.double().std(correction=0).item(), rel=1e-5)
    assert got["mean"] == pytest.approx(x32.double().mean().item(), rel=1e-6)


def test_units_not_a_multiple_of_the_block_and_dead_units() -> None:
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(9, 131, generator=gen)
    x[:, [0, 64, 65, 130]] = -1.0
    x[4, 100] = math.nan  # a non-finite unit: neither dead nor alive
    m, x, y = call("relu", x)
    got, want = fused(m, x, y), eager(m, x, y)
    assert want["dead_units"] == pytest.approx(4 / 131)
    assert_close(got, want)


def test_gradient_norm_nonfinite_and_scale() -> None:
    gen = torch.Generator().manual_seed(4)
    g = torch.randn(7, 3000, generator=gen)
    eng = FusedStats(window=10)
    scale = torch.tensor(1024.0)
    with kernels.interpreted():
        plain = eng.gradient(g)
        scaled = eng.gradient(g * 1024.0, scale)
        half = eng.gradient(g.to(torch.bfloat16).t())  # transposed: read in memory order
        bad = g.clone()
        bad[0, 0], bad[5, 7] = math.nan, -math.inf
        nonfinite = eng.gradient(bad)
        probe = eng.probe(bad)
        clean = eng.probe(g)
        empty = eng.gradient(torch.zeros(0))
        eng.finish()
    norm = torch.linalg.vector_norm(g).item()
    assert plain[0].item() == pytest.approx(norm, rel=1e-5)
    assert plain[1].item() == 0.0 and plain[2].item() == 0.0
    assert scaled[0].item() == pytest.approx(norm, rel=1e-5)
    ref = torch.linalg.vector_norm(g.to(torch.bfloat16).float()).item()
    assert half[0].item() == pytest.approx(ref, rel=1e-5)
    assert nonfinite[1].item() == 2.0 and math.isnan(nonfinite[0].item())
    assert math.isnan(probe.item()) and clean.item() == 0.0
    assert empty.tolist() == [0.0, 0.0, 0.0]


def test_unit_window_over_steps() -> None:
    """The finisher keeps each unit's last active step: idle units after ``window`` steps."""
    spec = config.forward_spec(family_of(nn.ReLU()), nn.ReLU(), EPS, DELTA)
    assert spec is not None
    eng = FusedStats(window=2)
    idle = []
    with kernels.interpreted():
        for step in range(5):
            y = torch.ones(4, 70)
            y[:, 5] = 0.0 if step >= 1 else 1.0  # off from step 1
            y[:, 9] = 0.0  # never on
            out = eng.forward(spec, None, y, 1, step, window_key="site")
            eng.finish()
            idle.append(out[12].item())
    # unit 9 is idle from the start (never on), unit 5 once two steps passed since step 0
    assert idle == [1.0, 1.0, 2.0, 2.0, 2.0]
    assert eng.held_numel() == 70
    assert len(eng._desc_cache) == 1  # the same layout every step: one descriptor copy
    assert eng._last[torch.device("cpu")][9].item() == NEVER


@pytest.mark.parametrize("room,finishers", [(None, 1), (26, 3)], ids=["fits", "overflows"])
def test_one_finisher_for_many_segments_and_overflow_finishes_early(
        room: Optional[int], finishers: int, monkeypatch: pytest.MonkeyPatch) -> None:
    from gradscope.kernels import engine
    if room is not None:  # results for two forward segments per batch
        monkeypatch.setattr(engine, "_MIN_OUT", room)
    spec = config.forward_spec(family_of(nn.Tanh()), nn.Tanh(), EPS, DELTA)
    assert spec is not None
    eng = FusedStats(window=10)
    from gradscope.kernels.engine import LAUNCHES
    gen = torch.Generator().manual_seed(0)
    ys = [torch.randn(20, 30, generator=gen).tanh() for _ in range(5)]
    before = LAUNCHES.copy()
    with kernels.interpreted():
        outs = [eng.forward(spec, None, y, None, 0) for y in ys]
        eng.finish()
    assert LAUNCHES["forward_partials"] - before["forward_partials"] == 5
    assert LAUNCHES["finish"] - before["finish"] == finishers
    for y, out in zip(ys, outs):
        assert out[0].item() == pytest.approx(y.sum().item(), rel=1e-5, abs=1e-5)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(shape=st.lists(st.integers(1, 9), min_size=1, max_size=4),
       name=st.sampled_from(["relu", "gelu", "tanh", "sigmoid", "elu"]),
       dtype=st.sampled_from(DTYPES), offset=st.floats(-3, 3), scale=st.floats(0.1, 100),
       seed=st.integers(0, 2**16))
def test_property_random_shapes_and_values(shape: list[int], name: str, dtype: torch.dtype,
                                           offset: float, scale: float, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    x = (torch.randn(*shape, generator=gen) * scale + offset).to(dtype)
    m, x, y = call(name, x)
    assert_close(fused(m, x, y), eager(m, x, y), rel=2e-5, scale=scale)


def test_families_the_kernels_do_not_cover_stay_eager() -> None:
    for m in (nn.Softmax(dim=-1), nn.PReLU(), nn.Softplus(), nn.Mish(), nn.Hardswish(),
              nn.RReLU()):
        fam = family_of(m)
        assert fam is not None
        assert config.forward_spec(fam, m, EPS, DELTA) is None, type(m).__name__


def test_available_only_on_cuda_or_inside_interpreted() -> None:
    cpu = torch.device("cpu")
    assert not kernels.available(cpu)
    with kernels.interpreted():
        assert kernels.available(cpu)
    assert not kernels.available(cpu)




# ------------------------------------------------------------------ CUDA (the compiled kernels)
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.cuda
@needs_cuda
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "large"])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).split(".")[1])
@pytest.mark.parametrize("name", ["relu", "gelu", "tanh", "sigmoid", "silu", "leaky_relu"])
def test_cuda_kernels_equal_the_eager_path(name: str, dtype: torch.dtype,
                                           layout: str) -> None:  # pragma: no cover - no GPU in CI
    gen = torch.Generator().manual_seed(0)
    shape = (64, 256, 28, 28) if layout == "large" else (16, 67, 9, 11)
    x = (torch.randn(*shape, generator=gen) * 2).to(dtype).cuda()
    if layout == "channels_last":
        x = x.to(memory_format=torch.channels_last)
    x[0, 0, 0, 0] = math.nan
    m, x, y = call(name, x)
    assert_close(fused(m, x, y), eager(m, x, y), scale=10)


@pytest.mark.cuda
@needs_cuda
def test_cuda_beyond_2_31_elements() -> None:  # pragma: no cover - no GPU in CI
    """int64 offsets: a bf16 tensor of more than 2**31 elements (4.3 GB) and its gradient."""
    y = torch.ones(2**21 + 3, 1024, dtype=torch.bfloat16, device="cuda")
    y[-1, -1] = 3.0
    m = MODULES["relu"]
    got = fused(m, y, y)
    n = y.numel()
    assert got["mean"] == pytest.approx((n + 2) / n, rel=1e-6)
    assert got["max"] == 3.0 and got["dead_units"] == 0.0
    eng = FusedStats(window=10)
    out = eng.gradient(y)
    eng.finish()
    assert out[0].item() == pytest.approx(math.sqrt(n + 8), rel=1e-6)


# ------------------------------------------------------------------ compiled for a GPU, on the CPU
def _compile_for_hopper(fn: object, signature: dict[str, str], constants: dict[str, object]) -> None:
    """Compile ``fn`` to a cubin for sm_90 (H100/H200) with Triton's bundled ptxas: no GPU
    needed, and it catches what the interpreter cannot (types, unsupported constructs)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    sig = dict(signature, **{name: "constexpr" for name in constants})
    triton.compile(ASTSource(fn=fn, signature=sig, constexprs=constants),
                   target=GPUTarget("cuda", 90, 32))


def _why_no_hopper_compile() -> Optional[str]:
    """Why the compiled kernels cannot be built here (``None``: they must be)."""
    if os.environ.get("TRITON_INTERPRET") == "1":
        return "TRITON_INTERPRET=1 process-wide: every Triton function is interpreted"
    try:
        from triton.backends.nvidia.compiler import CUDABackend  # noqa: F401
    except Exception as e:
        return f"no Triton CUDA backend to compile with ({type(e).__name__}: {e})"
    return None


_FORWARD_SIGNATURE = {
    "y_ptr": "*bf16", "x_ptr": "*bf16", "ws_ptr": "*fp32", "unit_ptr": "*fp32", "R": "i64",
    "U": "i32", "inner": "i32", "ys_o": "i64", "ys_u": "i32", "ys_i": "i32", "xs_o": "i64",
    "xs_u": "i32", "xs_i": "i32", "rows_per_prog": "i32", "n_progs": "i32", "sat_a": "fp32",
    "sat_b": "fp32", "in_lo": "fp32", "in_hi": "fp32", "delta": "fp32", "p1": "fp32", "p2": "fp32"}


def _variants() -> list[tuple[str, dict[str, object]]]:
    """The forward kernel's constants for each covered family (one per distinct set)."""
    seen: dict[tuple, str] = {}
    for name, m in MODULES.items():
        fam = family_of(m)
        assert fam is not None
        spec = config.forward_spec(fam, m, EPS, DELTA)
        assert spec is not None
        consts = dict(HAS_X=spec.needs_x, SAT_LO=spec.sat_lo, SAT_HI=spec.sat_hi,
                      INSIDE=spec.inside, DERIV=spec.deriv, REGIME=spec.regime,
                      SRC_X=spec.src_x, UNITS=spec.regime > 0, BLOCK_R=32 if spec.regime else 4096,
                      BLOCK_U=64 if spec.regime else 1)
        seen.setdefault(tuple(consts.items()), name)
    return [(name, dict(key)) for key, name in seen.items()]


@pytest.mark.skipif(_why_no_hopper_compile() is not None, reason=str(_why_no_hopper_compile()))
def test_every_kernel_compiles_for_a_hopper_gpu() -> None:
    k = kernels.load()
    assert k is not None
    for _, consts in _variants():
        _compile_for_hopper(k.forward_partials, _FORWARD_SIGNATURE, consts)
    _compile_for_hopper(k.grad_partials, {
        "g_ptr": "*bf16", "ws_ptr": "*fp32", "scale_ptr": "*fp32", "N": "i64", "per_prog": "i32",
        "n_progs": "i32"}, {"HAS_SCALE": True, "BLOCK": 4096})
    _compile_for_hopper(k.finish, {
        "ws_ptr": "*fp32", "unit_ptr": "*fp32", "desc_ptr": "*i64", "out_ptr": "*fp32",
        "last_ptr": "*i64", "step": "i64", "limit": "i64"}, {"NDESC": 12, "BLOCK": 256})
