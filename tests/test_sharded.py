"""Sharded models under torchrun (2 ranks, gloo, CPU): FSDP2 ``fully_shard`` and tensor parallel.

One launch of ``tests/sharded_worker.py`` runs every case; each is compared with the
same model unsharded in this process, on the union of the ranks' batches.
"""

from __future__ import annotations

import json
import math
from typing import Any

import pytest

from gradscope.history import History
from gradscope.metrics import METRICS
from tests import distributed_worker as ddp
from tests import sharded_worker as worker
from tests.test_distributed import ROOT, needs_torchrun, torchrun

Series = dict[tuple[str, str], dict[int, float]]
#: the worst relative difference allowed between a sharded run and one process
EXACT = 1e-6


@pytest.fixture(scope="module")
def sharded_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[dict[str, Any]]]:
    out = tmp_path_factory.mktemp("sharded")
    proc = torchrun([str(ROOT / "tests" / "sharded_worker.py"), str(out)], cwd=out)
    assert "terminate called" not in proc.stdout + proc.stderr  # every rank exits cleanly
    runs = {case: [json.loads((out / f"{case}.rank{r}.json").read_text())
                   for r in range(ddp.WORLD)] for case in worker.CASES}
    for case, ranks in runs.items():
        for r in ranks:
            assert "error" not in r, (case, r.get("error"))
    assert len(list((out / "tb").glob("events.out.tfevents.*"))) == 1  # only rank 0 writes
    return runs


@pytest.fixture(scope="module")
def union() -> dict[str, History]:
    """One process, unsharded, on the union of the batches: float64, and float32 for bf16."""
    return {case: ddp.train(ddp.build().to(worker.dtype(case)), worker.batches(case),
                            summary=False).history for case in ("fsdp", "fsdp_bf16")}


def series(h: History, kinds: tuple[str, ...] = ()) -> Series:
    """Every series of ``h`` (of those metric kinds only, when given)."""
    return {(layer, m): dict(zip(*h.series(layer, m))) for layer in h.layers()
            for m in h.metrics(layer) if not kinds or METRICS[m].kind in kinds}


def worst(got: Series, want: Series) -> dict[str, float]:
    """The largest relative difference per metric (every step of every layer compared)."""
    assert got.keys() == want.keys()
    out: dict[str, float] = {}
    for (layer, metric), s in want.items():
        assert got[(layer, metric)].keys() == s.keys() == set(range(ddp.STEPS)), (layer, metric)
        for step, v in s.items():
            g = got[(layer, metric)][step]
            d = 0.0 if g == v else abs(g - v) / max(abs(v), 1e-12)
            out[metric] = max(out.get(metric, 0.0), d)
    print("largest relative difference per metric:",  # the figures docs/integrations.md cites
          {m: f"{d:.1e}" for m, d in sorted(out.items())})
    return out


def histories(ranks: list[dict[str, Any]]) -> list[History]:
    return [History.from_dict(r["history"]) for r in ranks]


PARAMETER = ("parameter",)
EVERY_PARAMETER_METRIC = {"grad_norm", "weight_norm", "grad_nonfinite", "update_norm",
                          "update_ratio", "grad_weight_ratio"}


@needs_torchrun
@pytest.mark.parametrize("case", ["fsdp", "fsdp_keep", "fsdp_offload"])
def test_fsdp2_statistics_equal_one_process_on_the_union(sharded_run: Any, union: Any,
                                                         case: str) -> None:
    """Parameter statistics from the shards, activations from each rank's rows: every series
    at every step equals the unsharded model's on the union (float64, so the difference
    is the combination's, not float32 training noise)."""
    h0, h1 = histories(sharded_run[case])
    assert series(h1) == series(h0)  # every rank: the same history
    diff = worst(series(h0), series(union["fsdp"]))
    assert EVERY_PARAMETER_METRIC | {"dead_units", "dead_units_window", "saturation", "mean",
                                     "std", "min", "max", "grad_out_norm"} <= diff.keys()
    assert max(diff.values()) <= EXACT, diff
    assert sharded_run[case][0]["warnings"] == []


@needs_torchrun
def test_fsdp2_layers_are_named_and_typed_as_the_users(sharded_run: Any, union: Any) -> None:
    h = histories(sharded_run["fsdp"])[0]
    assert h.layers() == union["fsdp"].layers()  # no FSDP prefix
    assert {h.info(n).type for n in h.layers("layer")} == {"Linear"}  # not FSDPLinear
    assert h.info("0.weight").shape == (16, 6)  # the full parameter's, not the shard's (8, 6)


@needs_torchrun
def test_fsdp2_one_collective_per_flush_and_only_rank_0_writes(sharded_run: Any) -> None:
    """FSDP's own all-gathers and reduce-scatters (not made through ``dist.*``) aside,
    gradscope adds exactly one ``all_gather`` per flush and no other collective."""
    flushes = math.ceil(ddp.STEPS / ddp.FLUSH_EVERY)
    for r in sharded_run["fsdp"]:
        extra = {k: v - r["baseline"].get(k, 0) for k, v in r["counted"].items()}
        assert extra == {"flushes": flushes, "all_gather": flushes}
    assert [(r["writes"], r["writer"]) for r in sharded_run["fsdp"]] == [(True, True),
                                                                         (False, False)]


@needs_torchrun
def test_fsdp2_bf16_mixed_precision_runs_close_to_float32(sharded_run: Any, union: Any) -> None:
    """bfloat16 compute on float32 weights: every series within bf16 rounding of float32's."""
    h0, _ = histories(sharded_run["fsdp_bf16"])
    diff = worst(series(h0, PARAMETER), series(union["fsdp_bf16"], PARAMETER))
    assert EVERY_PARAMETER_METRIC <= diff.keys()
    assert max(diff.values()) <= 0.05, diff


@needs_torchrun
def test_tensor_parallel_equals_the_unsharded_model(sharded_run: Any, union: Any) -> None:
    """Colwise (Shard(0)), rowwise (Shard(1), its bias Replicate()) and a plain Linear
    (sharded and plain parameters mixed); every TP rank sees the whole batch, so the union
    is that batch. Parameters: the full ones' norms. Activations: the ReLU after the colwise
    layer has its units split over the ranks (combined as units), the sigmoid after the
    rowwise one is replicated (each rank's own, not counted twice)."""
    h0, h1 = histories(sharded_run["tp"])
    assert series(h1) == series(h0)
    diff = worst(series(h0), series(union["fsdp"]))
    assert EVERY_PARAMETER_METRIC | {"dead_units", "dead_units_window", "saturation", "mean",
                                     "std", "min", "max", "grad_out_norm"} <= diff.keys()
    assert max(diff.values()) <= EXACT, diff
    assert ("4.weight", "grad_norm") in series(h0)  # the plain layer, unsharded
    for r in sharded_run["tp"]:
        assert r["layouts"] == {"1": "units", "3": "replicate"}
        assert r["warnings"] == []


@needs_torchrun
def test_the_every_step_check_sees_a_nan_in_another_ranks_piece(sharded_run: Any) -> None:
    """A NaN in rank 1's piece of a gradient at an unsampled step: every rank records it
    (the probes of the ranks' pieces travel in the flush's collective)."""
    for h in histories(sharded_run["fsdp_nan"]):
        assert h.series("2", "grad_nonfinite_check") == ([worker.NAN_STEP], [1.0])
        assert "grad_nonfinite_check" not in h.metrics("0")  # its gradient is finite


@pytest.fixture(scope="module")
def four_ranks(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[dict[str, Any]]]:
    out = tmp_path_factory.mktemp("sharded4")
    proc = torchrun([str(ROOT / "tests" / "sharded_worker.py"), str(out)], cwd=out, nproc=4)
    assert "terminate called" not in proc.stdout + proc.stderr
    runs = {case: [json.loads((out / f"{case}.rank{r}.json").read_text()) for r in range(4)]
            for case in worker.CASES_4}
    for case, ranks in runs.items():
        assert "error" not in ranks[0], (case, ranks[0]["error"])
    return runs


@needs_torchrun
def test_hsdp_on_a_2x2_mesh_equals_one_process_on_the_union(four_ranks: Any, union: Any) -> None:
    """4 ranks, ``fully_shard`` on a (replicate, shard) mesh: each parameter's shards add up
    over the shard dim and its replicas are not counted twice; activations over 4 ranks' rows."""
    h = histories(four_ranks["hsdp"])
    assert all(series(other) == series(h[0]) for other in h[1:])
    diff = worst(series(h[0]), series(union["fsdp"]))
    assert EVERY_PARAMETER_METRIC | {"dead_units", "std", "grad_out_norm"} <= diff.keys()
    assert max(diff.values()) <= EXACT, diff
    assert four_ranks["hsdp"][0]["warnings"] == []


@needs_torchrun
def test_fsdp_x_tp_equals_one_process_on_the_union(four_ranks: Any, union: Any) -> None:
    """A (dp, tp) mesh: tensor parallel on ``tp``, ``fully_shard`` on ``dp`` (placements such as
    ``(_StridedShard(0), Shard(0))``, ``(Shard(0), Replicate())``). Parameters: the full ones'.
    Activations: within each tensor-parallel group by the site's layout, then across the
    two data-parallel groups' rows."""
    h = histories(four_ranks["fsdp_tp"])
    assert all(series(other) == series(h[0]) for other in h[1:])
    diff = worst(series(h[0]), series(union["fsdp"]))
    assert EVERY_PARAMETER_METRIC | {"dead_units", "dead_units_window", "saturation", "std",
                                     "grad_out_norm"} <= diff.keys()
    assert max(diff.values()) <= EXACT, diff
    for r in four_ranks["fsdp_tp"]:
        assert r["layouts"] == {"1": "units", "3": "replicate"} and r["warnings"] == []


# ---------------------------------------------------------------- in one process
def _partial(units: int = 3) -> Any:
    from gradscope.distributed import Partial

    def finish(step: int, layer: str, values: dict[str, float], numel: int, n: int) -> list[Any]:
        return [(step, layer, "values", {**values, "numel": numel, "units": n})]

    needs = ("sum", "norm", "bad_units", "active_units")
    return Partial(0, "act", "activation", needs, {}, 0, units, finish)


def _ranks() -> list[list[float]]:
    # per rank: numel, sum, norm, bad_units, active_units (its mask carries it), the mask
    return [[6.0, 1.0, 3.0, 1.0, 0.0, 1, 0, 0], [6.0, 2.0, 4.0, 1.0, 0.0, 1, 0, 1]]


@pytest.mark.parametrize("layout, want", [
    ("batch", dict(sum=3.0, norm=2.5, bad_units=1.0, active_units=2.0, numel=12, units=3)),
    ("units", dict(sum=3.0, norm=5.0, bad_units=2.0, active_units=3.0, numel=12, units=6)),
    ("rows", dict(sum=3.0, norm=5.0, bad_units=1.0, active_units=2.0, numel=12, units=3)),
    ("replicate", dict(sum=1.0, norm=3.0, bad_units=1.0, active_units=1.0, numel=6, units=3)),
], ids=["ddp-fsdp", "tp-units-split", "tp-rows-split", "tp-replicated"])
def test_tensor_parallel_layouts_combine_as_one_process(layout: str, want: dict[str, float]) -> None:
    """Units split over the ranks: masks counted per rank, unit counts added, gradient norms
    not averaged; rows split: masks OR-ed; replicated: the group's first rank's."""
    from gradscope.distributed import RankCombiner
    from gradscope.reductions import combine_op

    c = RankCombiner(combine_op)
    if layout != "batch":
        c.layouts, c._groups = {"act": layout}, [[0, 1]]  # one tensor-parallel group
    c._me = 1
    [(_, _, _, got)] = c._combine(_partial(), _ranks())
    assert got == want


def test_an_unknown_tensor_parallel_layout_keeps_the_ranks_own_said_once() -> None:
    from gradscope.distributed import RankCombiner
    from gradscope.reductions import combine_op

    c = RankCombiner(combine_op)
    c.layouts, c._me = {}, 0
    with pytest.warns(RuntimeWarning, match="the layout of 'act' over the ranks") as said:
        for _ in range(2):
            [(_, _, _, got)] = c._combine(_partial(), _ranks())
    assert len(said) == 1 and got["sum"] == 1.0 and got["numel"] == 6


def test_tp_layout_and_shares_of_plain_tensors() -> None:
    import torch

    from gradscope import shards

    x = torch.randn(2, 3, requires_grad=True)
    assert shards.tp_layout((x * 2).relu().grad_fn, 1) == "unknown"  # no DTensor behind it
    assert shards.tp_layout(None, 1) == "unknown"
    assert (shards.share(x, rank=0, world=2), shards.share(x, rank=1, world=2)) == (1.0, 0.0)
    assert shards.local(x) is x and not shards.is_sharded(x)
