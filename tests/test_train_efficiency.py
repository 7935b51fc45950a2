"""The training step wastes no device time and its randomness is per global row.

* at most one host-device synchronisation per training step outside logging steps;
* a number of RNG launches per step that does not grow with the batch size;
* ``RowStream``: row j of every draw depends only on (seed, draw, j), whatever the split;
* fp16 loss scaling (an injected GradScaler on CPU): a non-finite loss and a gradient overflow are
  skipped without the double-``unscale_`` crash, counters follow applied updates, resume is exact.
"""

from __future__ import annotations

import json

import pytest
import torch

from test_training_common import assert_identical, ckpt_tensors, image_data, make_images, reset_accelerate, tiny_dict
from vca_gen.experiment import schema as C
from vca_gen.utils import rng


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return make_images(tmp_path_factory.mktemp("img") / "images", per_class=8)  # 24 images


def trainer(d, **kw):
    from vca_gen.train.trainer import Trainer

    reset_accelerate()
    return Trainer(C.config_from_dict(d), **kw)


# ----------------------------------------------------------------------------- RowStream
def test_row_stream_rows_do_not_depend_on_the_split():
    full = rng.RowStream(11, 0, 8, 8)
    a = (rng.rand((8,), full), rng.randn((8, 3, 2), full))
    for cuts in ([0, 3, 8], [0, 4, 8], [0, 1, 2, 5, 8]):
        parts = []
        for i0, i1 in zip(cuts[:-1], cuts[1:]):
            s = rng.RowStream(11, i0, i1, 8)
            parts.append((rng.rand((i1 - i0,), s), rng.randn((i1 - i0, 3, 2), s)))
        assert torch.equal(torch.cat([p[0] for p in parts]), a[0])
        assert torch.equal(torch.cat([p[1] for p in parts]), a[1])
    assert full.draws == 2
    other = rng.RowStream(12, 0, 8, 8)
    assert not torch.equal(rng.rand((8,), other), a[0])
    x = torch.zeros(2, 5, dtype=torch.float64)
    assert rng.randn_like(x, rng.RowStream(1, 2, 4, 6)).dtype == torch.float64
    with pytest.raises(ValueError, match="shape"):
        rng.randn((3,), rng.RowStream(1, 0, 2, 4))
    with pytest.raises(ValueError, match="do not fit"):
        rng.RowStream(1, 3, 5, 4)


def test_per_row_training_loss_depends_only_on_its_global_row():
    """The per-row contract that replaced the per-sample generators: a row's training loss is the
    same whether it is computed in the full global batch or in any process's / micro-batch's share."""
    from vca_gen.objectives import DiffusionConfig, ObjectiveConfig, build_objective

    obj = build_objective(ObjectiveConfig(kind="diffusion", diffusion=DiffusionConfig()))

    def model(x, t, y):  # per-sample: output i depends only on input i
        return torch.cat([x * 0.5 + t.view(-1, 1, 1, 1) * 1e-3, x * 0 + 0.1], dim=1)

    x, y = torch.randn(6, 2, 4, 4), torch.arange(6)
    full = obj.training_losses(model, x, y, generator=rng.RowStream(3, 0, 6, 6))["loss"]
    part = obj.training_losses(model, x[2:5], y[2:5], generator=rng.RowStream(3, 2, 5, 6))["loss"]
    torch.testing.assert_close(part, full[2:5], rtol=0, atol=0)


# ----------------------------------------------------------------------------- host syncs
SYNC_METHODS = ("item", "tolist", "__float__", "__int__", "__bool__", "__index__", "cpu", "numpy")


FLOW = {"kind": "flow", "flow": {"sampler": "euler", "sample_steps": 3}}


@pytest.mark.parametrize("objective,scaler", [("flow", False), ("flow", True), ("diffusion", False)])
def test_at_most_one_host_sync_per_training_step(tmp_path, images, monkeypatch, objective, scaler):
    d = tiny_dict(tmp_path / "run", data=image_data(images), max_steps=20, micro_batch_size=2, log_every=1000)
    if objective == "flow":
        d["objective"] = FLOW
    tr = trainer(d, grad_scaler=torch.amp.GradScaler("cpu", init_scale=2.0**8) if scaler else None)
    it = iter(tr.loader)
    batches = [next(it) for _ in range(5)]
    for b in batches[:2]:
        tr.train_step(*b)  # warm-up: optimizer state exists
    # the non-fused (CPU) AdamW keeps its step counts as host tensors and reads them with .item();
    # on CUDA the optimizer is fused (counts on the device, no read), so those reads do not count
    host_steps = {id(st["step"]) for st in tr.torch_optimizer.state.values()}
    calls = []

    def counting(name, real):
        def wrapper(self, *a, **kw):
            if id(self) not in host_steps:
                calls.append(name)
            return real(self, *a, **kw)

        return wrapper

    for name in SYNC_METHODS:
        monkeypatch.setattr(torch.Tensor, name, counting(name, getattr(torch.Tensor, name)))
    for name in ("from_numpy", "as_tensor"):
        real = getattr(torch, name)
        monkeypatch.setattr(torch, name, lambda *a, _real=real, _n=name, **kw: (calls.append(_n), _real(*a, **kw))[1])
    for b in batches[2:]:
        tr.train_step(*b)
    monkeypatch.undo()
    assert len(calls) <= 3, calls  # 3 steps
    assert tr.counters["optimizer_steps"] == 5
    tr.close()


def _counting_generator(n):
    class CountingGenerator(torch.Generator):
        def manual_seed(self, seed):
            n["seeds"] += 1
            return super().manual_seed(seed)

    return CountingGenerator


def _counting_draw(n, real):
    def draw(*a, **kw):
        n["draws"] += 1
        return real(*a, **kw)

    return draw


def test_rng_launches_per_step_do_not_grow_with_the_batch(tmp_path, images, monkeypatch):
    counts = {}
    for batch in (4, 16):
        d = tiny_dict(tmp_path / f"run{batch}", data=image_data(images), global_batch_size=batch, max_steps=5)
        tr = trainer(d)
        b = next(iter(tr.loader))
        n = counts[batch] = {"draws": 0, "seeds": 0}
        monkeypatch.setattr(rng.torch, "Generator", _counting_generator(n))
        for name in ("randn", "rand"):
            monkeypatch.setattr(torch, name, _counting_draw(n, getattr(torch, name)))
        tr.train_step(*b)
        monkeypatch.undo()
        tr.close()
    assert counts[4] == counts[16], counts
    assert 0 < counts[4]["draws"] <= 4 and counts[4]["seeds"] == counts[4]["draws"]  # labels, t, noise


# ----------------------------------------------------------------------------- fp16 loss scaling
def _inject(tr, nan_loss_at: int, inf_grad_at: int) -> None:
    """Batch ``nan_loss_at``: NaN loss. Batch ``inf_grad_at``: finite loss, inf gradient (overflow)."""
    real = tr.objective.training_losses

    def flaky(model_fn, x, y, generator=None):
        out = real(model_fn, x, y, generator=generator)
        return {"loss": out["loss"] * float("nan")} if tr.counters["batches"] == nan_loss_at else out

    tr.objective.training_losses = flaky
    tr.params[0].register_hook(lambda g: g * float("inf") if tr.counters["batches"] == inf_grad_at else g)


def test_fp16_loss_scaling_skips_bad_steps_and_resumes_exactly(tmp_path, images):
    common = dict(
        data=image_data(images), max_steps=5, ckpt_every=0, micro_batch_size=2, warmup_steps=3, ema_warmup=True
    )
    scaler = lambda: torch.amp.GradScaler("cpu", init_scale=2.0**10, growth_interval=2)  # noqa: E731

    tr = trainer(tiny_dict(tmp_path / "a", **common), grad_scaler=scaler())
    _inject(tr, nan_loss_at=1, inf_grad_at=3)
    summary = tr.run()  # no "unscale_() has already been called" after the skipped steps
    assert summary["step"] == 5
    c = summary["counters"]
    assert (c["batches"], c["optimizer_steps"], c["nonfinite_total"], c["overflow_total"]) == (7, 5, 1, 1)
    state = json.loads((tmp_path / "a/checkpoints/step_00000005/state.json").read_text())
    assert state["counters"] == c and state["step"] == 5
    # batches: ok, NaN (scale /2), ok, overflow (/2), ok, ok (x2 after 2 clean), ok → 2^9, 1 clean since
    assert state["grad_scaler"]["scale"] == 2.0**9 and state["grad_scaler"]["_growth_tracker"] == 1

    # stop at step 3 (after both skipped batches), resume to 5: identical
    tr = trainer(tiny_dict(tmp_path / "b", **{**common, "max_steps": 3}), grad_scaler=scaler())
    _inject(tr, nan_loss_at=1, inf_grad_at=3)
    assert tr.run()["counters"]["batches"] == 5
    tr = trainer(tiny_dict(tmp_path / "b", **common), grad_scaler=scaler())
    _inject(tr, nan_loss_at=1, inf_grad_at=3)
    assert tr.step == 3 and tr.counters["batches"] == 5
    tr.run()
    assert_identical(
        ckpt_tensors(tmp_path / "a/checkpoints/step_00000005"), ckpt_tensors(tmp_path / "b/checkpoints/step_00000005")
    )
    assert json.loads((tmp_path / "b/checkpoints/step_00000005/state.json").read_text()) == state
