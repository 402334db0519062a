"""Margin heads on a CUDA device: same numbers as on the CPU, finite under float16/bfloat16 autocast
at cos = +-1, float32 logits, and no host synchronisation in the training step. Skipped without a GPU.

Also runnable as a script (``python tests/test_heads_cuda.py``) where pytest is not installed.
"""

from __future__ import annotations

import time

import pytest
import torch
import torch.nn.functional as F

from arcface.heads import HEADS, create_head

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
KINDS = HEADS.names()


def _batch(head, device, dtype=torch.float32, b=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    c, k = head.num_classes, head.rows_per_class
    w = torch.randn(c * k, head.embedding_size, generator=g)
    labels = torch.randint(0, c, (b,), generator=g)
    x = torch.randn(b, head.embedding_size, generator=g) * 8
    x[0] = 3 * w[labels[0] * k]  # cos = +1 with the target
    x[1] = -50 * w[labels[1] * k]  # cos = -1 with the target
    x[2] = w[((labels[2] + 1) % c) * k]  # cos = +1 with a non-target
    head.weight.data.copy_(w)
    return x.to(device=device, dtype=dtype), labels.to(device)


@pytest.mark.parametrize("kind", KINDS)
def test_cuda_matches_cpu(kind):
    torch.manual_seed(0)
    cpu = create_head(kind, 32, 50).train()
    x, y = _batch(cpu, "cpu")
    gpu = create_head(kind, 32, 50).train().cuda()
    gpu.load_state_dict(cpu.state_dict())
    xc, xg = x.clone().requires_grad_(True), x.cuda().requires_grad_(True)
    lc, lg = cpu(xc, y), gpu(xg, y.cuda())
    lc.backward()
    lg.backward()
    torch.testing.assert_close(lg.cpu(), lc, rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(xg.grad.cpu(), xc.grad, rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(gpu.weight.grad.cpu(), cpu.weight.grad, rtol=1e-3, atol=1e-3)
    for name, buf in cpu.named_buffers():
        torch.testing.assert_close(dict(gpu.named_buffers())[name].cpu(), buf, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("kind", KINDS)
def test_cuda_autocast_finite(kind, dtype):
    head = create_head(kind, 32, 50).train().cuda()
    x, y = _batch(head, "cuda", dtype)
    x.requires_grad_(True)
    with torch.autocast("cuda", dtype=dtype):
        logits = head.logits(x, y)
        loss = head(x, y)
    assert logits.dtype == torch.float32 and torch.isfinite(logits).all() and torch.isfinite(loss)
    loss.backward()
    assert torch.isfinite(x.grad).all() and torch.isfinite(head.weight.grad).all()


@pytest.mark.parametrize("kind", KINDS)
def test_cuda_no_host_sync(kind):
    """logits_with, the cross-entropy and the backward never wait for the device."""
    head = create_head(kind, 32, 50).train().cuda()
    x, y = _batch(head, "cuda")
    x.requires_grad_(True)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        loss = F.cross_entropy(head.logits_with(x, head.weight, y), y) + head.extra_loss(x, y)
        loss.backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.parametrize("kind", ["arcface", "subcenter_arcface", "curricularface", "adaface", "magface"])
def test_cuda_large(kind):
    """A realistic shard: B = 256, 100k classes, D = 512, bfloat16 autocast; finite, and timed."""
    head = create_head(kind, 512, 100_000).train().cuda()
    x = torch.randn(256, 512, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    y = torch.randint(0, 100_000, (256,), device="cuda")
    for i in range(4):
        if i == 1:
            torch.cuda.synchronize()
            t0 = time.perf_counter()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = head(x, y)
        loss.backward()
    torch.cuda.synchronize()
    ms = (time.perf_counter() - t0) / 3 * 1e3
    print(f"{kind}: {ms:.2f} ms per forward+backward, loss {float(loss.detach()):.3f}")
    assert torch.isfinite(loss) and torch.isfinite(head.weight.grad).all()


if __name__ == "__main__":
    for kind in KINDS:
        test_cuda_matches_cpu(kind)
        test_cuda_no_host_sync(kind)
        for dtype in (torch.float16, torch.bfloat16):
            test_cuda_autocast_finite(kind, dtype)
        print("ok", kind)
    for kind in ["arcface", "subcenter_arcface", "curricularface", "adaface", "magface"]:
        test_cuda_large(kind)
