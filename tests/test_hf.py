"""The Hugging Face callback and transformers' activation modules, on tiny models from configs."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")
from transformers import activations as hf_act  # noqa: E402

from gradscope import stats, watch  # noqa: E402
from gradscope.activations import family_of  # noqa: E402
from gradscope.integrations.hf import GradscopeCallback  # noqa: E402
from gradscope.plan import summarize  # noqa: E402

STEPS, ACCUMULATE = 4, 2
HF_ACTIVATIONS = ["GELUActivation", "NewGELUActivation", "GELUTanh", "FastGELUActivation",
                  "AccurateGELUActivation", "QuickGELUActivation", "SiLUActivation",
                  "ReLUSquaredActivation"]
HF_ACTIVATIONS = [n for n in HF_ACTIVATIONS if hasattr(hf_act, n)]


@pytest.mark.parametrize("name", HF_ACTIVATIONS)
def test_transformers_activations_have_families_with_exact_derivatives(
        name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    module = getattr(hf_act, name)()
    fam = family_of(module)  # registered on first sight of a transformers module
    assert fam is not None and fam.derivative is not None
    torch.manual_seed(0)
    x = torch.randn(64, 3) * 3
    x = x[(x.abs() > 1e-3).all(1)].requires_grad_(True)
    y = module(x)
    (g,) = torch.autograd.grad(y.sum(), x)
    d = fam.derivative(x.detach() if fam.needs_input else None, y.detach(), module)
    torch.testing.assert_close(d.expand_as(g), g, rtol=1e-4, atol=1e-5)
    # the scratch-block evaluation (derivative_out) gives what the whole tensor gives
    plain = dataclasses.replace(fam, derivative_out=False)
    x3 = torch.randn(37, 3, 4) * 3
    y3 = module(x3)
    whole = summarize(plain, module, x3, y3, eps=0.05, delta=0.05, unit_dim=None)
    monkeypatch.setattr(stats, "SCRATCH_ELEMENTS", 50)
    monkeypatch.setattr(stats, "_scratch", type(stats._scratch)())
    blocked = summarize(fam, module, x3, y3, eps=0.05, delta=0.05, unit_dim=None)
    assert list(blocked.values()) == pytest.approx(list(whole.values()), rel=1e-5, abs=1e-6)


def gpt2() -> nn.Module:
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(vocab_size=50, n_embd=16, n_layer=2, n_head=2, n_positions=16,
                                  bos_token_id=0, eos_token_id=0)
    return transformers.GPT2LMHeadModel(cfg)


def bert() -> nn.Module:
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2,
                                  num_attention_heads=2, intermediate_size=32,
                                  max_position_embeddings=16, num_labels=2)
    return transformers.BertForSequenceClassification(cfg)


def dataset(kind: str) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 50, (STEPS * ACCUMULATE * 4, 8), generator=g)
    if kind == "gpt2":
        return [{"input_ids": i, "labels": i} for i in ids]
    return [{"input_ids": i, "labels": torch.tensor(int(i[0]) % 2)} for i in ids]


def train(model: nn.Module, kind: str, out: Path, cb: GradscopeCallback,
          scaler: Any = None, **kw: Any) -> Any:
    args = transformers.TrainingArguments(
        output_dir=str(out), max_steps=STEPS, per_device_train_batch_size=4,
        gradient_accumulation_steps=ACCUMULATE, learning_rate=1e-3, max_grad_norm=1e6,
        logging_steps=1, report_to=["tensorboard"], use_cpu=True, save_strategy="no",
        disable_tqdm=True, seed=0, **kw)
    trainer = transformers.Trainer(model=model, args=args, train_dataset=dataset(kind),
                                   callbacks=[cb])
    if scaler is not None:  # what accelerate makes for fp16=True on CUDA (none on the CPU)
        trainer.accelerator.scaler = scaler
    with cb:
        trainer.train()
    return trainer


@pytest.mark.parametrize("kind", ["gpt2", "bert"])
def test_steps_with_the_trainer(kind: str, tmp_path: Path) -> None:
    model = gpt2() if kind == "gpt2" else bert()
    cb = GradscopeCallback(summary=False)
    trainer = train(model, kind, tmp_path, cb)
    h = cb.history
    assert cb.monitor is None and _hooks(model) == 0
    assert h.steps() == list(range(STEPS))
    sites = h.layers("activation")
    want = {"gpt2": "NewGELUActivation", "bert": "GELUActivation"}[kind]
    assert [h.info(s).type for s in sites].count(want) == 2  # one per layer: covered
    # The accumulated gradients of each optimizer step: the Trainer's own total norm
    logged = [e["grad_norm"] for e in trainer.state.log_history if "grad_norm" in e]
    ours = [math.sqrt(sum(v[s] ** 2 for v in _per_layer(h, "grad_norm"))) for s in range(STEPS)]
    assert ours == pytest.approx(logged, rel=1e-4)
    # gradscope's events are in the TensorBoard callback's run
    runs = [p for p in (tmp_path / "runs").iterdir() if p.is_dir()]
    assert len(runs) == 1 and len(list(runs[0].glob("events.out.tfevents.*"))) == 2


def test_bf16_on_cpu(tmp_path: Path) -> None:
    cb = GradscopeCallback(summary=False)
    train(gpt2(), "gpt2", tmp_path, cb, bf16=True)
    h = cb.history
    assert h.steps() == list(range(STEPS)) and "scaler" not in h.layers()
    assert all(math.isfinite(v) for v in h.series("transformer.h.0.mlp.act", "grad_out_norm")[1])


def test_a_grad_scaler_under_the_trainer(tmp_path: Path) -> None:
    """accelerate's GradScaler path (``fp16=True`` on CUDA), with a CPU scaler: true units, a skip."""
    model = gpt2()
    calls = [0]

    def inf_at_step_2(grad: torch.Tensor) -> torch.Tensor:
        calls[0] += 1
        return grad * math.inf if (calls[0] - 1) // ACCUMULATE == 2 else grad

    model.transformer.h[0].mlp.c_fc.weight.register_hook(inf_at_step_2)
    cb = GradscopeCallback(summary=False)
    train(model, "gpt2", tmp_path / "scaled", cb, torch.amp.GradScaler("cpu", init_scale=2.0**10))
    h = cb.history
    assert h.series("scaler", "skipped") == (list(range(STEPS)), [0.0, 0.0, 1.0, 0.0])
    assert h.series("scaler", "scale")[1] == [2.0**10] * 3 + [2.0**9]
    plain = GradscopeCallback(summary=False)
    train(gpt2(), "gpt2", tmp_path / "plain", plain)
    for layer, metric in (("transformer.h.0.mlp.act", "grad_out_norm"),
                          ("transformer.h.1.mlp.c_fc", "grad_norm")):
        got, want = (c.history.series(layer, metric)[1][:2] for c in (cb, plain))
        assert got == pytest.approx(want, rel=1e-4), (layer, metric)  # unscaled: true units
    from gradscope.findings import analyze

    assert [(f.severity, f.rule) for f in analyze(h)] == [("info", "scaler_skipped")]


def test_detaches_when_train_raises(tmp_path: Path) -> None:
    model = gpt2()
    calls = [0]

    def fail_on_third(module: nn.Module, args: Any) -> None:
        calls[0] += 1
        if calls[0] == 3 * ACCUMULATE:
            raise RuntimeError("boom in forward")

    model.register_forward_pre_hook(fail_on_third)
    cb = GradscopeCallback(summary=False)
    with pytest.raises(RuntimeError, match="boom in forward"):
        train(model, "gpt2", tmp_path, cb)
    assert cb.monitor is None and _hooks(model) == 1  # only the test's own pre-hook is left
    # the 6th forward is step 2's second micro-batch: its first one was recorded and flushed
    assert cb.history is not None and cb.history.steps() == [0, 1, 2]


def test_a_model_watched_directly_has_its_transformers_activations_covered() -> None:
    model = bert()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with watch(model, optimizer=opt, summary=False) as mon:
        out = model(input_ids=torch.randint(0, 50, (4, 8)), labels=torch.tensor([0, 1, 0, 1]))
        out.loss.backward()
        opt.step()
    fams = {mon.history.info(s).family for s in mon.history.layers("activation")}
    assert "gelu" in fams


def _per_layer(h: Any, metric: str) -> list[dict[int, float]]:
    return [dict(zip(*h.series(layer, metric))) for layer in h.layers("layer")]


def _hooks(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())
