"""Partial FC's row-sparse update: sampled rows only, lazy momentum, dense SGD at rate 1.0.

https://arxiv.org/abs/2203.15565 (insightface's Partial FC updates only the sampled centres)
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from torch import nn

from arcface.engine.config import OptimConfig
from arcface.engine.optim import DenseGradAdamW, RowSparseSGD, build_optimizer, clip_grad_norm_
from arcface.heads import create_head
from arcface.heads.partial_fc import PartialFC

B, D = 8, 16
LR, MU, WD = 0.1, 0.9, 5e-2  # a large weight decay so that a missed or extra decay shows


def _optimizer(module: nn.Module, **kw) -> torch.optim.Optimizer:
    cfg = OptimConfig(lr=LR, momentum=MU, weight_decay=WD, head_lr_mult=1.0, **kw)
    return build_optimizer(cfg, nn.Identity(), module)


def _spy_index(pfc: PartialFC) -> list[torch.Tensor]:
    """Record the sampled class indices of every step."""
    seen: list[torch.Tensor] = []
    sample = pfc.sample

    def spy(local):
        index, sub = sample(local)
        seen.append(index)
        return index, sub

    pfc.sample = spy
    return seen


@pytest.mark.parametrize("kind", ["arcface", "subcenter_arcface"])
def test_sampled_step_updates_only_sampled_rows_as_float64_reference(kind):
    num_classes = 60
    pfc = PartialFC(kind, D, num_classes, sample_rate=0.2, seed=3).train().double()
    opt = _optimizer(pfc)
    seen = _spy_index(pfc)
    k = pfc.rows_per_class
    w_ref = pfc.weight.detach().clone()  # float64 hand computation
    buf_ref = torch.zeros_like(w_ref)
    for step in range(4):
        x = 5.0 * torch.randn(B, D, dtype=torch.float64)
        labels = torch.randint(0, num_classes, (B,))
        opt.zero_grad(set_to_none=True)
        pfc(x, labels).backward()
        grad = pfc.weight.grad
        assert grad.is_sparse and grad._nnz() == seen[-1].numel() * k  # only the sampled rows
        rows = pfc.head.class_rows(seen[-1])
        g = grad.to_dense()
        before = pfc.weight.detach().clone()
        opt.step()
        # Reference: buf_i = mu * buf_i + g_i + wd * w_i; w_i -= lr * buf_i, sampled rows only.
        for i in rows.tolist():
            buf_ref[i] = MU * buf_ref[i] + g[i] + WD * w_ref[i]
            w_ref[i] = w_ref[i] - LR * buf_ref[i]
        untouched = torch.ones(w_ref.shape[0], dtype=torch.bool)
        untouched[rows] = False
        assert untouched.any()
        assert torch.equal(pfc.weight.detach()[untouched], before[untouched]), step  # no decay, no momentum
        torch.testing.assert_close(pfc.weight.detach(), w_ref, rtol=1e-12, atol=1e-12)
        buf = opt.state[pfc.weight]["momentum_buffer"]
        assert buf.shape == pfc.weight.shape and buf.is_contiguous()
        torch.testing.assert_close(buf, buf_ref, rtol=1e-12, atol=1e-12)


def test_rate_one_equals_dense_torch_sgd_over_steps():
    """At rate 1.0 build_optimizer's SGD is torch's SGD bit for bit, and tracks the full head."""
    num_classes = 12
    full = create_head("arcface", D, num_classes).train()
    pfc = PartialFC("arcface", D, num_classes, sample_rate=1.0).train()
    twin = PartialFC("arcface", D, num_classes, sample_rate=1.0).train()
    with torch.no_grad():
        pfc.weight.copy_(full.weight)
        twin.weight.copy_(full.weight)
    ref = torch.optim.SGD(full.parameters(), lr=LR, momentum=MU, weight_decay=WD)
    ref_twin = torch.optim.SGD(twin.parameters(), lr=LR, momentum=MU, weight_decay=WD)
    opt = _optimizer(pfc)
    for _ in range(4):
        x, labels = 5.0 * torch.randn(B, D), torch.randint(0, num_classes, (B,))
        for module, o in ((full, ref), (twin, ref_twin), (pfc, opt)):
            o.zero_grad(set_to_none=True)
            module(x, labels).backward()
            o.step()
        assert torch.equal(pfc.weight, twin.weight)
        buf = opt.state[pfc.weight]["momentum_buffer"]
        assert torch.equal(buf, ref_twin.state[twin.weight]["momentum_buffer"])
        torch.testing.assert_close(pfc.weight, full.weight, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(buf, ref.state[full.weight]["momentum_buffer"], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("nesterov", [False, True])
def test_sparse_grad_over_every_row_equals_dense_sgd(nesterov):
    """The row-sparse path with every row present is torch's dense SGD (weights and momentum)."""
    torch.manual_seed(0)
    a = nn.Parameter(torch.randn(20, D))
    b = nn.Parameter(a.detach().clone())
    ref = torch.optim.SGD([a], lr=LR, momentum=MU, weight_decay=WD, nesterov=nesterov)
    opt = RowSparseSGD([b], lr=LR, momentum=MU, weight_decay=WD, nesterov=nesterov)
    for _ in range(4):
        g = torch.randn(20, D)
        a.grad = g.clone()
        b.grad = g.to_sparse(sparse_dim=1)
        ref.step()
        opt.step()
        torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(opt.state[b]["momentum_buffer"], ref.state[a]["momentum_buffer"], rtol=1e-6,
                                   atol=1e-7)


def test_accumulated_sparse_grads_with_duplicate_rows_are_summed():
    w = nn.Parameter(torch.randn(10, D, dtype=torch.float64))
    opt = RowSparseSGD([w], lr=LR, momentum=MU, weight_decay=WD)
    w0 = w.detach().clone()
    rows1, rows2 = torch.tensor([1, 4, 6]), torch.tensor([4, 6, 9])
    for rows in (rows1, rows2):  # two micro-batches: an uncoalesced gradient with repeated rows
        torch.nn.functional.embedding(rows, w, sparse=True).pow(2).sum().backward()
    assert not w.grad.is_coalesced()
    g = torch.zeros_like(w0)
    g.index_add_(0, rows1, 2 * w0[rows1])
    g.index_add_(0, rows2, 2 * w0[rows2])
    opt.step()
    expected = w0.clone()
    for i in (1, 4, 6, 9):
        expected[i] = w0[i] - LR * (g[i] + WD * w0[i])
    torch.testing.assert_close(w.detach(), expected, rtol=1e-12, atol=1e-12)


def test_clip_grad_norm_takes_sparse_grads():
    torch.manual_seed(0)
    dense = nn.Parameter(torch.randn(5, 3))
    sparse = nn.Parameter(torch.randn(10, 3))
    dense.grad = torch.randn(5, 3)
    g = torch.zeros(10, 3)
    g[[2, 7]] = torch.randn(2, 3)
    sparse.grad = g.to_sparse(sparse_dim=1)
    ref_a, ref_b = dense.grad.clone(), g.clone()
    pa, pb = nn.Parameter(torch.zeros(5, 3)), nn.Parameter(torch.zeros(10, 3))
    pa.grad, pb.grad = ref_a, ref_b
    expected = torch.nn.utils.clip_grad_norm_([pa, pb], 0.5)
    total = clip_grad_norm_([dense, sparse], 0.5)
    torch.testing.assert_close(total, expected)
    torch.testing.assert_close(dense.grad, pa.grad)
    torch.testing.assert_close(sparse.grad.to_dense(), pb.grad)


def test_grad_scaler_unscales_sparse_grads():
    w = nn.Parameter(torch.randn(10, D))
    opt = RowSparseSGD([w], lr=LR, momentum=MU)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    scaler.scale(torch.nn.functional.embedding(torch.tensor([2, 5]), w, sparse=True).sum()).backward()
    scaler.unscale_(opt)
    torch.testing.assert_close(w.grad.to_dense()[[2, 5]], torch.ones(2, D))
    before = w.detach().clone()
    scaler.step(opt)
    scaler.update()
    assert torch.equal(w.detach()[0], before[0]) and not torch.equal(w.detach()[2], before[2])


def test_adamw_densifies_sparse_grads():
    torch.manual_seed(0)
    a = nn.Parameter(torch.randn(10, D))
    b = nn.Parameter(a.detach().clone())
    ref = torch.optim.AdamW([a], lr=1e-2, weight_decay=WD)
    opt = DenseGradAdamW([b], lr=1e-2, weight_decay=WD)
    for rows in ([1, 3], [3, 8]):
        g = torch.zeros(10, D)
        g[rows] = torch.randn(2, D)
        a.grad, b.grad = g.clone(), g.to_sparse(sparse_dim=1)
        ref.step()
        opt.step()
        assert torch.equal(a, b)


def test_optimizer_state_round_trip_after_sparse_steps():
    """A restored optimiser continues exactly (the trainer's --resume relies on it)."""
    pfc = PartialFC("arcface", D, 40, sample_rate=0.25, seed=1).train()
    opt = _optimizer(pfc)
    data = [(5.0 * torch.randn(B, D), torch.randint(0, 40, (B,))) for _ in range(4)]

    def step(module, o, x, y):
        o.zero_grad(set_to_none=True)
        module(x, y).backward()
        o.step()

    for x, y in data[:2]:
        step(pfc, opt, x, y)
    pfc2 = PartialFC("arcface", D, 40, sample_rate=0.25, seed=9).train()
    pfc2.load_state_dict(pfc.state_dict())
    opt2 = _optimizer(pfc2)
    opt2.load_state_dict(copy.deepcopy(opt.state_dict()))  # as from a file: no tensor shared with opt
    for x, y in data[2:]:
        step(pfc, opt, x, y)
        step(pfc2, opt2, x, y)
    assert torch.equal(pfc.weight, pfc2.weight)
    assert torch.equal(opt.state[pfc.weight]["momentum_buffer"], opt2.state[pfc2.weight]["momentum_buffer"])


def test_dense_grad_option_keeps_the_old_gradient():
    pfc = PartialFC("arcface", D, 40, sample_rate=0.25, sparse_grad=False).train()
    pfc(torch.randn(B, D), torch.randint(0, 40, (B,))).backward()
    assert not pfc.weight.grad.is_sparse and pfc.weight.grad.shape == pfc.weight.shape


def test_trainer_resume_is_exact_with_sampled_sparse_centres(tmp_path):
    """--resume through the Trainer with rate < 1 (row-sparse centres) and gradient clipping."""
    from arcface.engine.config import load_config
    from arcface.engine.trainer import Trainer

    smoke = Path(__file__).resolve().parents[1] / "configs" / "smoke_synthetic.yaml"
    cfg = load_config(
        smoke,
        ["head.sample_rate=0.25", "data.params.num_classes=64", "train.clip_grad_norm=5.0", "train.ckpt_every=3"],
    )

    def run(out, steps, resume=False):
        t = Trainer(cfg, out, max_steps=steps, resume=resume, progress=False)
        t.train()
        return t

    straight = run(tmp_path / "a", 5)
    assert straight.head.num_sample == 16
    run(tmp_path / "b", 3)
    resumed = run(tmp_path / "b", 5, resume=True)
    assert torch.equal(resumed.head.weight, straight.head.weight)
    for p, q in zip(resumed.bare_model.parameters(), straight.bare_model.parameters()):
        assert torch.equal(p, q)
