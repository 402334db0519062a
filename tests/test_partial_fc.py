"""Partial FC: rate 1.0 is the full head, sampling keeps the positives, 2 gloo ranks equal 1 rank.

https://arxiv.org/abs/2010.05222, https://arxiv.org/abs/2203.15565
"""

from __future__ import annotations

import datetime
import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from arcface.heads import HEADS, create_head
from arcface.heads.partial_fc import PartialFC, shard_range

B, D, C = 8, 16, 10
TOL = {"rtol": 1e-5, "atol": 1e-5}
# Tiny shapes; every head at its default parameters (s = 64, ...). Embeddings with norms around 20
# so that MagFace's and AdaFace's norm-dependent margins are not all clamped to one end.
EMB_SCALE = 5.0


def _rows(head, classes: torch.Tensor) -> torch.Tensor:
    """Weight rows of the given classes (whole row groups for Sub-center ArcFace)."""
    return head.class_rows(classes) if head.rows_per_class > 1 else classes


def _copy_shard(full, pfc: PartialFC) -> None:
    """Copy the full head's centres (and bias) for pfc's class range into pfc's shard."""
    classes = torch.arange(pfc.class_start, pfc.class_start + pfc.num_local)
    with torch.no_grad():
        pfc.weight.copy_(full.weight[_rows(full, classes)])
        if pfc.bias is not None:
            pfc.bias.copy_(full.bias[classes])


def _step(module, emb: torch.Tensor, labels: torch.Tensor):
    """Loss and gradients (embeddings, weight, bias or None) of one forward/backward."""
    module.zero_grad(set_to_none=True)
    x = emb.clone().requires_grad_(True)
    loss = module(x, labels)
    loss.backward()
    bias = getattr(module, "bias", None)
    w_grad = module.weight.grad
    w_grad = w_grad.to_dense() if w_grad.is_sparse else w_grad.clone()  # sampled: row-sparse
    return loss.detach(), x.grad, w_grad, None if bias is None else bias.grad.clone()


def _buffers(module) -> dict[str, torch.Tensor]:
    return {k.split(".")[-1]: v.clone() for k, v in module.named_buffers()}


# -- partition ------------------------------------------------------------------------------------
@pytest.mark.parametrize("num_classes, world", [(10, 1), (10, 2), (11, 2), (7, 3), (100, 8), (8, 8)])
def test_shard_range_partitions_the_classes(num_classes, world):
    ranges = [shard_range(num_classes, r, world) for r in range(world)]
    assert ranges[0][0] == 0
    for (s0, n0), (s1, _) in zip(ranges, ranges[1:]):
        assert s0 + n0 == s1
    assert sum(n for _, n in ranges) == num_classes
    assert max(n for _, n in ranges) - min(n for _, n in ranges) <= 1


def test_rejects_bad_arguments():
    with pytest.raises(ValueError, match="sample_rate"):
        PartialFC("arcface", D, C, sample_rate=0.0)
    with pytest.raises(ValueError, match="rank"):
        PartialFC("arcface", D, C, rank=2, world_size=2)
    with pytest.raises(ValueError, match="aux"):
        PartialFC("arcface", D, C, rank=0, world_size=2, aux={"intra": 1.0})
    pfc = PartialFC("arcface", D, C)
    with pytest.raises(ValueError, match="labels"):
        pfc(torch.randn(2, D), torch.tensor([0, C]))


# -- rate 1.0 in one process is the full head -------------------------------------------------------
@pytest.mark.parametrize("kind", HEADS.names())
def test_rate_one_equals_full_head(kind):
    full = create_head(kind, D, C).train()
    pfc = PartialFC(kind, D, C, sample_rate=1.0).train()
    _copy_shard(full, pfc)
    assert pfc.weight.shape == full.weight.shape and pfc.weight.is_contiguous()
    for _ in range(2):  # the second step sees the running state the first one left
        emb = EMB_SCALE * torch.randn(B, D)
        labels = torch.randint(0, C, (B,))
        ref = _step(full, emb, labels)
        got = _step(pfc, emb, labels)
        for r, g in zip(ref, got):
            if r is None:
                assert g is None
            else:
                torch.testing.assert_close(g, r, **TOL)
        for name, value in _buffers(full).items():
            torch.testing.assert_close(_buffers(pfc)[name], value, **TOL)


def test_rate_one_with_aux_and_ignored_rows_equals_full_head():
    aux = {"intra": 1.0, "inter": 0.5}
    full = create_head("arcface", D, C, aux=aux).train()
    pfc = PartialFC("arcface", D, C, aux=aux).train()
    _copy_shard(full, pfc)
    emb = EMB_SCALE * torch.randn(B, D)
    labels = torch.randint(0, C, (B,))
    labels[1] = -1  # ignored, as the plain head's ignore_index=-1
    for r, g in zip(_step(full, emb, labels), _step(pfc, emb, labels)):
        if r is not None:
            torch.testing.assert_close(g, r, **TOL)


def test_eval_mode_uses_every_centre():
    pfc = PartialFC("cosface", D, 40, sample_rate=0.1).eval()
    seen = []
    logits_with = pfc.head.logits_with
    pfc.head.logits_with = lambda *a, **k: seen.append(a[1].shape) or logits_with(*a, **k)
    pfc(torch.randn(B, D), torch.randint(0, 40, (B,)))
    assert seen == [(40, D)]


# -- sampling ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("batch", [4, 32])  # fewer and more positives than num_sample
def test_sampled_set_keeps_positives(batch):
    pfc = PartialFC("arcface", D, 100, sample_rate=0.1).train()  # num_sample = 10
    assert pfc.num_sample == 10
    gen = torch.Generator().manual_seed(1)
    for _ in range(200):
        local = torch.randint(-1, 100, (batch,), generator=gen)
        index, sub = pfc.sample(local)
        positives = torch.unique(local[local >= 0])
        assert torch.isin(positives, index).all()
        assert index.numel() == max(pfc.num_sample, positives.numel())
        assert torch.equal(index, torch.unique(index))  # sorted, no repeats
        assert index.min() >= 0 and index.max() < 100
        has = local >= 0
        assert torch.equal(sub[~has], torch.full_like(sub[~has], -1))
        assert torch.equal(index[sub[has]], local[has])


def test_sampling_draws_negatives_at_random():
    pfc = PartialFC("arcface", D, 100, sample_rate=0.1).train()
    draws = {tuple(pfc.sample(torch.tensor([3, 5]))[0].tolist()) for _ in range(20)}
    assert len(draws) > 15
    # Same seed, two ranks (sample() needs no process group): independent draws.
    r0, r1 = (PartialFC("arcface", D, 200, sample_rate=0.1, rank=r, world_size=2) for r in (0, 1))
    assert not torch.equal(r0.sample(torch.tensor([3]))[0], r1.sample(torch.tensor([3]))[0])


def test_one_process_calls_nothing_from_torch_distributed(monkeypatch):
    import torch.distributed as dist

    def boom(*args, **kwargs):
        raise AssertionError("torch.distributed was called with world_size 1")

    for name in ["all_gather", "all_reduce", "get_rank", "get_world_size", "is_initialized", "broadcast"]:
        monkeypatch.setattr(dist, name, boom)
    for kind in ["curricularface", "magface", "softmax"]:
        pfc = PartialFC(kind, D, 30, sample_rate=0.3).train()
        x = torch.randn(B, D, requires_grad=True)
        pfc(x, torch.randint(0, 30, (B,))).backward()
        assert torch.isfinite(x.grad).all()


@pytest.mark.parametrize("kind", ["arcface", "softmax", "subcenter_arcface", "curricularface"])
def test_sampled_forward_is_the_head_over_the_sampled_classes(kind):
    num_classes = 50
    pfc = PartialFC(kind, D, num_classes, sample_rate=0.2).train()  # num_sample = 10
    ref = create_head(kind, D, num_classes).train()
    ref.load_state_dict(pfc.head.state_dict())
    record = {}
    sample, logits_with = pfc.sample, pfc.head.logits_with

    def spy_sample(local):
        record["index"], record["sub"] = sample(local)
        return record["index"], record["sub"]

    def spy_logits(*args, **kwargs):
        out = logits_with(*args, **kwargs)
        record["logits"] = out.shape
        return out

    pfc.sample, pfc.head.logits_with = spy_sample, spy_logits
    emb = EMB_SCALE * torch.randn(B, D)
    labels = torch.randint(0, num_classes, (B,))
    loss, _, w_grad, b_grad = _step(pfc, emb, labels)
    index, sub = record["index"], record["sub"]
    S = max(10, len(torch.unique(labels)))
    assert record["logits"] == (B, S)  # never (B, num_classes)
    # Rows outside the sample get exactly zero gradient; the sampled ones get some.
    mask = torch.zeros(num_classes * pfc.rows_per_class, dtype=torch.bool)
    mask[_rows(pfc.head, index)] = True
    assert torch.all(w_grad[~mask] == 0) and w_grad[mask].abs().sum() > 0
    if b_grad is not None:
        kept = torch.zeros(num_classes, dtype=torch.bool)
        kept[index] = True
        assert torch.all(b_grad[~kept] == 0)
    # The loss is the plain head's cross-entropy over exactly the sampled classes (ref started
    # from the same state, so its running state takes the same update here).
    w = ref.weight[_rows(ref, index)]
    bias = None if pfc.bias is None else ref.bias[index]
    expected = F.cross_entropy(ref.logits_with(emb, w, sub, bias=bias), sub) + ref.extra_loss(emb, sub, weight=w)
    torch.testing.assert_close(loss, expected.detach(), **TOL)


def test_state_dict_round_trip_restores_the_sampler(tmp_path: Path):
    a = PartialFC("arcface", D, 60, sample_rate=0.2, seed=7).train()
    labels = torch.randint(0, 60, (B,))
    for _ in range(3):
        a(torch.randn(B, D), labels)
    state = a.state_dict()
    assert all(torch.is_tensor(v) for v in state.values())  # the trainer calls .cpu() on each
    torch.save(state, tmp_path / "pfc.pt")
    b = PartialFC("arcface", D, 60, sample_rate=0.2, seed=0).train()
    b.load_state_dict(torch.load(tmp_path / "pfc.pt", weights_only=True))
    local = torch.tensor([1, 2, 3])
    for _ in range(3):
        assert torch.equal(a.sample(local)[0], b.sample(local)[0])
    fresh = PartialFC("arcface", D, 60, sample_rate=0.2, seed=7)
    assert not torch.equal(fresh.sample(local)[0], a.sample(local)[0])


# -- two gloo ranks equal one process ---------------------------------------------------------------
DIST_KINDS = HEADS.names()  # every head, softmax's sharded bias included
DIST_C = 11  # uneven split: 6 + 5


def _equivalence_worker(rank: int, world: int, tmp: str) -> None:
    """One rank: load the reference inputs, run Partial FC on its half of the batch, save results."""
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"file://{tmp}/rendezvous",
        rank=rank,
        world_size=world,
        timeout=datetime.timedelta(seconds=60),
    )
    try:
        ref = torch.load(os.path.join(tmp, "reference.pt"), weights_only=True)
        out = {}
        for kind, case in ref.items():
            rate = case["sample_rate"]
            pfc = PartialFC(kind.split(":")[0], D, DIST_C, sample_rate=rate, rank=rank, world_size=world).train()
            with torch.no_grad():
                pfc.weight.copy_(case["weight_rows"][rank])
                if pfc.bias is not None:
                    pfc.bias.copy_(case["bias_rows"][rank])
            record = {}
            if rate < 1:
                sample = pfc.sample

                def spy(local, sample=sample, record=record):
                    record["index"], _ = sample(local)
                    return record["index"], _

                pfc.sample = spy
            n = case["emb"].shape[0] // world
            sl = slice(rank * n, (rank + 1) * n)
            loss, g_emb, g_w, g_b = _step(pfc, case["emb"][sl], case["labels"][sl])
            out[kind] = {
                "loss": loss,
                "emb_grad": g_emb,
                "weight_grad": g_w,
                "bias_grad": g_b,
                "buffers": _buffers(pfc.head),
                "start": pfc.class_start,
                "index": record.get("index"),
            }
        torch.save(out, os.path.join(tmp, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_gloo_ranks_equal_one_process(tmp_path: Path):
    import torch.multiprocessing as mp

    world, batch = 2, 8
    cases, reference = {}, {}
    for kind in [*DIST_KINDS, "arcface:sampled", "softmax:sampled"]:
        name = kind.split(":")[0]
        rate = 0.5 if kind.endswith("sampled") else 1.0
        full = create_head(name, D, DIST_C).train()
        with torch.no_grad():
            full.weight.normal_()
            if getattr(full, "bias", None) is not None:
                full.bias.normal_()
        emb = EMB_SCALE * torch.randn(batch, D)
        labels = torch.randint(0, DIST_C, (batch,))
        shards = [shard_range(DIST_C, r, world) for r in range(world)]
        rows = [_rows(full, torch.arange(s, s + n)) for s, n in shards]
        cases[kind] = {
            "sample_rate": rate,
            "emb": emb,
            "labels": labels,
            "weight_rows": [full.weight.detach()[r].clone() for r in rows],
            "bias_rows": [full.bias.detach()[s : s + n].clone() for s, n in shards]
            if getattr(full, "bias", None) is not None
            else None,
        }
        reference[kind] = (full, emb, labels)
    torch.save(cases, tmp_path / "reference.pt")
    mp.spawn(_equivalence_worker, args=(world, str(tmp_path)), nprocs=world, join=True)
    results = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(world)]

    for kind, (full, emb, labels) in reference.items():
        if kind.endswith("sampled"):
            # Reference: the plain head over the union of both ranks' sampled classes.
            union = torch.cat([res[kind]["index"] + res[kind]["start"] for res in results])
            assert torch.isin(labels, union).all(), kind  # every positive was sampled by its owner
            sub = torch.searchsorted(union, labels)
            x = emb.clone().requires_grad_(True)
            bias = None if getattr(full, "bias", None) is None else full.bias[union]
            loss = F.cross_entropy(full.logits_with(x, full.weight[union], sub, bias=bias), sub)
            for res in results:
                torch.testing.assert_close(res[kind]["loss"], loss.detach(), **TOL)
            continue
        ref_loss, ref_emb, ref_w, ref_b = _step(full, emb, labels)
        n = batch // world
        for rank, res in enumerate(results):
            r = res[kind]
            start, num = shard_range(DIST_C, rank, world)
            torch.testing.assert_close(r["loss"], ref_loss, **TOL, msg=f"{kind} loss rank {rank}")
            torch.testing.assert_close(
                r["weight_grad"],
                ref_w[_rows(full, torch.arange(start, start + num))],
                **TOL,
                msg=f"{kind} weight grad rank {rank}",
            )
            # DDP compensation: world_size x the gradient of the global mean loss.
            torch.testing.assert_close(
                r["emb_grad"],
                world * ref_emb[rank * n : (rank + 1) * n],
                **TOL,
                msg=f"{kind} embedding grad rank {rank}",
            )
            if ref_b is not None:
                torch.testing.assert_close(r["bias_grad"], ref_b[start : start + num], **TOL)
            for name, value in _buffers(full).items():
                torch.testing.assert_close(r["buffers"][name], value, **TOL, msg=f"{kind} {name}")
