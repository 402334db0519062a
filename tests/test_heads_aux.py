"""The ArcFace paper's auxiliary losses (section 3.3, Table 2) against float64 loop references,
gradcheck, and their composition with every head."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from arcface.heads import AUX_LOSSES, HEADS, create_head
from arcface.heads import auxiliary as A


def _angle(a, b):
    return torch.acos(torch.dot(a, b) / (a.norm() * b.norm()))


def _val(t):
    return float(t.detach())


def ref_intra(x, w, labels, k=1):
    """1/(pi N) sum_i theta_{y_i}; theta to the nearest sub-centre of the class when K > 1."""
    terms = []
    for i in range(x.shape[0]):
        y = int(labels[i])
        if y < 0:
            continue
        terms.append(min((_angle(x[i], w[y * k + q]) for q in range(k)), key=_val))
    return torch.stack(terms).sum() / (math.pi * len(terms))


def ref_inter(x, w, labels, k=1):
    """-1/(pi N (n-1)) sum_i sum_{j != y_i} arccos(W_{y_i}^T W_j) (eq. (6)); with K > 1 the target
    centre is the nearest sub-centre and the others are all sub-centres of other classes."""
    rows = []
    for i in range(x.shape[0]):
        y = int(labels[i])
        if y < 0:
            continue
        best = min(range(k), key=lambda q: _val(_angle(x[i], w[y * k + q])))
        wy = w[y * k + best]
        others = [_angle(wy, w[r]) for r in range(w.shape[0]) if r // k != y]
        rows.append(torch.stack(others).sum() / len(others))
    return -torch.stack(rows).sum() / (math.pi * len(rows))


def ref_triplet(x, labels, margin, mining):
    n = x.shape[0]
    ang = [[_angle(x[a], x[b]) if a != b else None for b in range(n)] for a in range(n)]
    ok = [int(v) >= 0 for v in labels]
    zero = x.sum() * 0
    if mining == "all":
        terms = []
        for a in range(n):
            for p in range(n):
                for q in range(n):
                    if not (ok[a] and ok[p] and ok[q]) or p == a:
                        continue
                    if labels[p] == labels[a] and labels[q] != labels[a]:
                        terms.append(torch.clamp(ang[a][p] + margin - ang[a][q], min=0))
        return torch.stack(terms).mean() if terms else zero
    terms = []
    for a in range(n):
        if not ok[a]:
            continue
        pos = [ang[a][p] for p in range(n) if p != a and ok[p] and labels[p] == labels[a]]
        neg = [ang[a][q] for q in range(n) if ok[q] and labels[q] != labels[a]]
        if pos and neg:
            terms.append(torch.clamp(max(pos, key=_val) + margin - min(neg, key=_val), min=0))
    return torch.stack(terms).mean() if terms else zero


def batch(n=8, c=4, d=5, k=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64) * 3
    w = torch.randn(c * k, d, generator=g, dtype=torch.float64)
    labels = torch.tensor([0, 1, 0, 2, 1, -1, 3, 0])[:n]
    return x, w, labels


def test_registry_of_auxiliary_losses():
    assert AUX_LOSSES.names() == ["inter", "intra", "triplet"]


@pytest.mark.parametrize("k", [1, 3])
def test_intra_and_inter_match_reference(k):
    x, w, labels = batch(k=k)
    for name, ref in (("intra", ref_intra), ("inter", ref_inter)):
        x1, w1 = x.clone().requires_grad_(True), w.clone().requires_grad_(True)
        out = A.AuxTerm(name)(A.AuxInputs(x1, labels, w1, k))
        out.backward()
        x2, w2 = x.clone().requires_grad_(True), w.clone().requires_grad_(True)
        expected = ref(x2, w2, labels, k)
        expected.backward()
        torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(w1.grad, w2.grad, rtol=1e-8, atol=1e-10)
        if name == "intra":
            torch.testing.assert_close(x1.grad, x2.grad, rtol=1e-8, atol=1e-10)
        else:
            assert x1.grad is None or not x1.grad.any()  # inter depends on the centres only


@pytest.mark.parametrize("mining", ["all", "batch_hard"])
@pytest.mark.parametrize("margin", [0.0, 0.35, 1.0])
def test_triplet_matches_reference(mining, margin):
    x, _, labels = batch()
    x1 = x.clone().requires_grad_(True)
    out = A.triplet_loss(x1, labels, margin=margin, mining=mining)
    out.backward()
    x2 = x.clone().requires_grad_(True)
    expected = ref_triplet(x2, labels, margin, mining)
    expected.backward()
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(x1.grad, x2.grad, rtol=1e-8, atol=1e-10)


def test_triplet_chunking_gives_the_same_value(monkeypatch):
    x, _, labels = batch()
    whole = A.triplet_loss(x, labels)
    monkeypatch.setattr(A, "_TRIPLET_CHUNK", 70)  # one anchor at a time for N = 8
    torch.testing.assert_close(A.triplet_loss(x, labels), whole)


def test_gradcheck_auxiliary_losses():
    x, w, labels = batch(n=6, c=3, d=4, k=2)
    x.requires_grad_(True)
    w.requires_grad_(True)
    for name in ("intra", "inter"):
        assert torch.autograd.gradcheck(lambda x, w, n=name: A.AuxTerm(n)(A.AuxInputs(x, labels, w, 2)), (x, w))
    for mining in ("all", "batch_hard"):
        assert torch.autograd.gradcheck(lambda x, m=mining: A.triplet_loss(x, labels, 0.35, m), (x,))


def test_degenerate_batches_give_a_zero_in_the_graph():
    x = torch.randn(4, 5, requires_grad=True)
    no_pos = torch.tensor([0, 1, 2, 3])
    assert float(A.triplet_loss(x, no_pos).detach()) == 0.0
    assert float(A.triplet_loss(x, no_pos, mining="batch_hard").detach()) == 0.0
    A.triplet_loss(x, no_pos).backward()  # still part of the graph
    none = torch.full((4,), -1)
    assert float(A.intra_loss(torch.empty(0))) == 0.0
    head = create_head("arcface", 5, 3, aux={"intra": 1.0, "inter": 1.0, "triplet": 1.0})
    assert float(head.extra_loss(x, none).detach()) == 0.0
    one_class = create_head("normface", 5, 1, aux={"inter": 1.0})
    assert float(one_class.extra_loss(x, torch.zeros(4, dtype=torch.long)).detach()) == 0.0


def test_finite_at_identical_and_opposite_vectors():
    w = torch.randn(3, 6)
    x = torch.stack([w[0], w[0], -w[0], w[1]]).requires_grad_(True)
    w = torch.cat([w, w[:1]]).requires_grad_(True)  # a duplicated centre: inter angle 0
    labels = torch.tensor([0, 0, 0, 1])
    total = A.AuxTerm("intra")(A.AuxInputs(x, labels, w)) + A.AuxTerm("inter")(A.AuxInputs(x, labels, w))
    total = total + A.triplet_loss(x, labels) + A.triplet_loss(x, labels, mining="batch_hard")
    total.backward()
    assert torch.isfinite(total) and torch.isfinite(x.grad).all() and torch.isfinite(w.grad).all()


@pytest.mark.parametrize("kind", HEADS.names())
def test_composes_with_every_head(kind):
    aux = {"intra": 1.0, "inter": 0.5, "triplet": {"weight": 2.0, "margin": 0.35, "mining": "batch_hard"}}
    torch.manual_seed(0)
    head = create_head(kind, 5, 4, aux=aux).eval()
    torch.manual_seed(0)
    plain = create_head(kind, 5, 4).eval()
    x, _, labels = batch()
    x = x.float()
    k = head.rows_per_class
    inputs = A.AuxInputs(x, labels, head.weight, k)
    expected_aux = (
        A.intra_loss(inputs.target_cos)
        + 0.5 * A.inter_loss(inputs.target_centres, head.weight, inputs.is_other)
        + 2.0 * A.triplet_loss(x, labels, 0.35, "batch_hard")
    )
    torch.testing.assert_close(head.extra_loss(x, labels) - plain.extra_loss(x, labels), expected_aux)
    torch.testing.assert_close(head(x, labels), plain(x, labels) + expected_aux)
    head(x, labels).backward()
    assert torch.isfinite(head.weight.grad).all()


def test_arcface_plus_intra_is_the_papers_l5():
    """L5 = L2 + 1/(pi N) sum theta_y with L2 the margin loss (paper eq. (5))."""
    x, w, labels = batch()
    labels = labels.clamp(min=0)
    head = create_head("arcface", 5, 4, aux={"intra": 1.0})
    head.weight.data = w
    expected = F.cross_entropy(head.logits(x, labels), labels) + ref_intra(x, w, labels)
    torch.testing.assert_close(head(x, labels), expected)


def test_extra_loss_with_explicit_weight():
    x, w, labels = batch()
    head = create_head("normface", 5, 4, aux={"inter": 1.0})
    torch.testing.assert_close(head.extra_loss(x, labels, weight=w), ref_inter(x, w, labels))


def test_aux_spec_validation():
    with pytest.raises(KeyError, match="intra"):
        create_head("arcface", 5, 4, aux={"intra_loss": 1.0})
    with pytest.raises(TypeError, match="margn"):
        create_head("arcface", 5, 4, aux={"triplet": {"margn": 0.3}})
    with pytest.raises(TypeError, match="intra"):
        create_head("arcface", 5, 4, aux={"intra": {"margin": 0.3}})
    with pytest.raises(ValueError, match="mining"):
        create_head("arcface", 5, 4, aux={"triplet": {"mining": "semi"}})
    with pytest.raises(ValueError, match="mining"):
        A.triplet_loss(torch.randn(3, 2), torch.arange(3), mining="semi")
    terms = A.parse_aux({"intra": 2, "triplet": {"weight": 0.5, "margin": 0.2}})
    assert terms == (A.AuxTerm("intra", 2.0, {}), A.AuxTerm("triplet", 0.5, {"margin": 0.2}))
