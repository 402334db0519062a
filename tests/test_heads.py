"""Margin heads against slow float64 references written straight from the papers' formulas.

For every kind: forward and backward against a per-sample reference, gradcheck, identities between
kinds, exact boundaries cos = +-1 in float32 / bfloat16 / float16, a monotonic target-logit curve,
label -1 rows, sharded (Partial FC) consistency, and the running state in buffers.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from arcface.heads import HEADS, MarginHead, create_head
from arcface.heads import margins as M

ALL_KINDS = [
    "adaface",
    "arcface",
    "combined",
    "cosface",
    "curricularface",
    "magface",
    "normface",
    "softmax",
    "sphereface",
    "subcenter_arcface",
]

# Target angles and feature norms of the reference batch: every regime of every kind is visited
# (fallback regions, psi branches, MagFace clamp ends, AdaFace clips), none within 0.02 rad of a
# non-differentiable point.
THETAS = [0.15, 0.6, 1.1, 1.6, 2.1, 2.5, 2.75, 3.0]
NORMS = [5.0, 12.0, 30.0, 60.0, 90.0, 108.0, 130.0, 50.0]

# (kind, params) checked against the reference; the paper settings plus variants.
CASES = [
    ("softmax", {}),
    ("normface", {}),
    ("normface", {"s": 30.0}),
    ("sphereface", {}),
    ("sphereface", {"m1": 3, "s": 30.0, "base": 0.0, "lambda_min": 0.0}),
    ("sphereface", {"m1": 2, "lambda_min": 1.5}),
    ("cosface", {}),
    ("arcface", {}),
    ("arcface", {"m": 0.3, "s": 32.0}),
    ("arcface", {"easy_margin": True}),
    ("combined", {}),
    ("combined", {"m1": 0.9, "m2": 0.4, "m3": 0.15}),
    ("combined", {"m1": 1.35, "m2": 0.0, "m3": 0.0}),
    ("combined", {"m1": 2.0, "m2": 0.3, "m3": 0.1}),
    ("subcenter_arcface", {}),
    ("subcenter_arcface", {"k": 2, "m": 0.4}),
    ("curricularface", {}),
    ("adaface", {}),
    ("adaface", {"h": 0.5, "m": 0.5}),
    ("magface", {}),
]
CASE_IDS = [f"{k}-{'-'.join(f'{a}={b}' for a, b in p.items()) or 'default'}" for k, p in CASES]


# ------------------------------------------------------------------------------------------
# batch construction
# ------------------------------------------------------------------------------------------


def make_batch(num_classes=5, dim=6, k=1, dtype=torch.float64, seed=0, thetas=THETAS, norms=NORMS):
    """Centres W (C*K, D), labels (B,), embeddings x (B, D) at the given angle to the first
    sub-centre of their class and with the given norms."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(num_classes * k, dim, generator=g, dtype=torch.float64)
    b = len(thetas)
    labels = torch.arange(b) % num_classes
    xs = []
    for i in range(b):
        c = F.normalize(w[labels[i] * k], dim=0)
        u = torch.randn(dim, generator=g, dtype=torch.float64)
        u = F.normalize(u - (u @ c) * c, dim=0)
        xs.append(norms[i] * (math.cos(thetas[i]) * c + math.sin(thetas[i]) * u))
    x = torch.stack(xs)
    return x.to(dtype), w.to(dtype), labels


def configure(head):
    """Put non-trivial running state into the heads that have some, and freeze it (eval)."""
    if hasattr(head, "t"):
        head.t.fill_(0.3)
    if hasattr(head, "batch_mean"):
        head.batch_mean.fill_(30.0)
        head.batch_std.fill_(10.0)
    if hasattr(head, "iteration"):
        head.iteration.fill_(50)
    return head.eval()


def build(kind, dim=6, num_classes=5, **params):
    torch.manual_seed(1)
    return configure(create_head(kind, dim, num_classes, **params))


# ------------------------------------------------------------------------------------------
# the slow references, one scalar at a time, straight from the formulas
# ------------------------------------------------------------------------------------------


def _cos(a, b):
    return torch.dot(a, b) / (a.norm() * b.norm())


def _arc(c, m, easy=False):
    """cos(theta + m) with insightface's rules, scalar."""
    theta = torch.acos(c)
    if easy:
        return torch.cos(theta + m) if c > 0 else c
    return torch.cos(theta + m) if c > math.cos(math.pi - m) else c - m * math.sin(m)


def _psi(c, m1, m2=0.0):
    phi = m1 * torch.acos(c) + m2
    k = math.floor(float(phi.detach()) / math.pi)
    return (-1) ** k * torch.cos(phi) - 2 * k


def ref_row(head, kind, cos_row, y, r):
    """Logits of one row from its cosines (list of 0-d tensors), target y, feature norm r."""
    out = []
    for j, c in enumerate(cos_row):
        t = j == y
        if kind == "normface":
            out.append(head.s * c)
        elif kind == "cosface":
            out.append(head.s * (c - head.m if t else c))
        elif kind in ("arcface", "subcenter_arcface"):
            out.append(head.s * (_arc(c, head.m, head.easy_margin) if t else c))
        elif kind == "combined":
            if not t:
                out.append(head.s * c)
            elif head.m1 == 1:
                out.append(head.s * (_arc(c, head.m2) - head.m3))
            else:
                out.append(head.s * (_psi(c, head.m1, head.m2) - head.m3))
        elif kind == "sphereface":
            scale = r if head.s is None else head.s
            lam = max(head.lambda_min, head.base * (1 + head.gamma * int(head.iteration)) ** (-head.power))
            out.append(scale * ((lam * c + _psi(c, head.m1)) / (1 + lam) if t else c))
        elif kind == "curricularface":
            cy = cos_row[y]
            if t:
                out.append(head.s * _arc(c, head.m))
            elif c > torch.cos(torch.acos(cy) + head.m):
                out.append(head.s * c * (float(head.t) + c))
            else:
                out.append(head.s * c)
        elif kind == "adaface":
            norm = min(max(float(r.detach()), 0.001), 100.0)
            g = (norm - float(head.batch_mean)) / (float(head.batch_std) + head.eps) * head.h
            g = min(max(g, -1.0), 1.0)
            if t:
                ang = torch.clamp(torch.acos(c) - head.m * g, 0.0, math.pi)
                out.append(head.s * (torch.cos(ang) - (head.m + head.m * g)))
            else:
                out.append(head.s * c)
        elif kind == "magface":
            a = torch.clamp(r, head.l_a, head.u_a)
            m = (head.u_m - head.l_m) / (head.u_a - head.l_a) * (a - head.l_a) + head.l_m
            if t:
                theta = torch.acos(c)
                fallback = c - m * torch.sin(m)
                out.append(head.s * (torch.cos(theta + m) if c > torch.cos(math.pi - m) else fallback))
            else:
                out.append(head.s * c)
        else:
            raise AssertionError(kind)
    return torch.stack(out)


def ref_logits(head, kind, x, w, labels, bias=None):
    k = head.rows_per_class
    rows = []
    for i in range(x.shape[0]):
        if kind == "softmax":
            rows.append(torch.stack([torch.dot(x[i], w[j]) + bias[j] for j in range(w.shape[0])]))
            continue
        cos_row = [torch.stack([_cos(x[i], w[j * k + q]) for q in range(k)]).max() for j in range(w.shape[0] // k)]
        rows.append(ref_row(head, kind, cos_row, int(labels[i]), x[i].norm()))
    return torch.stack(rows)


def ref_loss(head, kind, x, w, labels, bias=None):
    z = ref_logits(head, kind, x, w, labels, bias)
    terms = [-z[i, labels[i]] + torch.logsumexp(z[i], dim=0) for i in range(x.shape[0])]
    loss = torch.stack(terms).mean()
    if kind == "magface":
        g = [1 / a + a / head.u_a**2 for a in (torch.clamp(x[i].norm(), head.l_a, head.u_a) for i in range(x.shape[0]))]
        loss = loss + head.lambda_g * torch.stack(g).mean()
    return loss


# ------------------------------------------------------------------------------------------
# the registry
# ------------------------------------------------------------------------------------------


def test_registry_has_every_kind():
    assert HEADS.names() == sorted(ALL_KINDS)


@pytest.mark.parametrize("kind", HEADS.names())
def test_every_registered_head(kind):
    head = create_head(kind, 16, 10)
    assert isinstance(head, MarginHead)
    k = head.rows_per_class
    assert head.weight.shape == (10 * k, 16)
    x = torch.randn(6, 16, requires_grad=True)
    y = torch.randint(0, 10, (6,))
    logits = head.logits(x, y)
    assert logits.shape == (6, 10) and logits.dtype == torch.float32
    loss = head(x, y)
    assert loss.shape == () and torch.isfinite(loss)
    loss.backward()
    assert torch.isfinite(x.grad).all() and torch.isfinite(head.weight.grad).all()
    assert head.extra_loss(x, y).shape == ()
    # state round-trips through a state dict (buffers included)
    head.eval()
    other = create_head(kind, 16, 10)
    other.load_state_dict(head.state_dict())
    other.eval()
    torch.testing.assert_close(other.logits(x, y), head.logits(x, y))
    with pytest.raises(TypeError, match="bogus"):
        create_head(kind, 16, 10, bogus=1)


def test_unknown_kind_names_the_known_ones():
    with pytest.raises(KeyError, match="arcface"):
        create_head("arcfase", 8, 4)


@pytest.mark.parametrize(
    ("kind", "params"),
    [
        ("arcface", {"s": 0}),
        ("arcface", {"m": -0.1}),
        ("sphereface", {"m1": 2.5}),
        ("subcenter_arcface", {"k": 0}),
        ("magface", {"l_a": 20, "u_a": 10}),
        ("combined", {"m1": 0}),
    ],
)
def test_invalid_params_raise(kind, params):
    with pytest.raises(ValueError):
        create_head(kind, 8, 4, **params)


# ------------------------------------------------------------------------------------------
# forward and backward against the references
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("kind", "params"), CASES, ids=CASE_IDS)
def test_matches_reference_float64(kind, params):
    head = build(kind, **params)
    k = head.rows_per_class
    x, w, labels = make_batch(k=k)
    bias = torch.randn(5, dtype=torch.float64) if kind == "softmax" else None
    x1 = x.clone().requires_grad_(True)
    w1 = w.clone().requires_grad_(True)
    out = head.logits_with(x1, w1, labels, bias=bias)
    assert out.dtype == torch.float64
    loss = F.cross_entropy(out, labels) + head.extra_loss(x1, labels)
    loss.backward()

    x2 = x.clone().requires_grad_(True)
    w2 = w.clone().requires_grad_(True)
    ref = ref_logits(head, kind, x2, w2, labels, bias)
    rloss = ref_loss(head, kind, x2, w2, labels, bias)
    rloss.backward()

    torch.testing.assert_close(out, ref, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(loss, rloss, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(x1.grad, x2.grad, rtol=1e-7, atol=1e-9)
    torch.testing.assert_close(w1.grad, w2.grad, rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize(("kind", "params"), CASES, ids=CASE_IDS)
def test_float32_close_to_float64_reference(kind, params):
    head = build(kind, **params)
    x, w, labels = make_batch(k=head.rows_per_class)
    bias = torch.zeros(5, dtype=torch.float64) if kind == "softmax" else None
    out32 = head.logits_with(x.float(), w.float(), labels, bias=None if bias is None else bias.float())
    assert out32.dtype == torch.float32
    ref = ref_logits(head, kind, x, w, labels, bias)
    torch.testing.assert_close(out32.double(), ref, rtol=1e-4, atol=2e-3)


@pytest.mark.parametrize(("kind", "params"), CASES, ids=CASE_IDS)
def test_forward_equals_module_call(kind, params):
    """head(x, y) is the mean cross-entropy of head.logits plus extra_loss."""
    head = build(kind, **params)
    head.weight.data = make_batch(k=head.rows_per_class)[1].float()
    x, _, labels = make_batch(k=head.rows_per_class, dtype=torch.float32)
    expected = F.cross_entropy(head.logits(x, labels), labels) + head.extra_loss(x, labels)
    torch.testing.assert_close(head(x, labels), expected)


@pytest.mark.parametrize(("kind", "params"), CASES, ids=CASE_IDS)
def test_gradcheck(kind, params):
    head = build(kind, **params)
    x, w, labels = make_batch(k=head.rows_per_class, thetas=THETAS[:5] + [2.75], norms=NORMS[:5] + [130.0])
    x.requires_grad_(True)
    w.requires_grad_(True)
    bias = torch.randn(5, dtype=torch.float64, requires_grad=True) if kind == "softmax" else None

    norms = x.detach().norm(dim=1, keepdim=True)

    def loss_fn(x, w, *bias):
        if kind == "adaface":
            # AdaFace's margin stops the gradient through ||x|| by design; keep the norm fixed so
            # that finite differences see the same function
            x = norms * F.normalize(x, dim=1)
        logits = head.logits_with(x, w, labels, bias=bias[0] if bias else None)
        return logits, F.cross_entropy(logits, labels) + head.extra_loss(x, labels)

    inputs = (x, w) if bias is None else (x, w, bias)
    assert torch.autograd.gradcheck(loss_fn, inputs, eps=1e-6, atol=1e-5, rtol=1e-4)


# ------------------------------------------------------------------------------------------
# identities between kinds
# ------------------------------------------------------------------------------------------

IDENTITY_THETAS = [0.0, 0.3, 1.0, 1.5, 2.0, 2.6, 2.8, 3.1, math.pi]


def _identity_batch(dtype, k=1):
    return make_batch(k=k, dtype=dtype, thetas=IDENTITY_THETAS, norms=[7.0] * len(IDENTITY_THETAS))


def _logits_and_grads(head, x, w, labels):
    x = x.clone().requires_grad_(True)
    w = w.clone().requires_grad_(True)
    out = head.logits_with(x, w, labels)
    F.cross_entropy(out, labels).backward()
    return out.detach(), x.grad, w.grad


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(
    ("a", "b"),
    [
        (("arcface", {"m": 0.0}), ("normface", {})),
        (("combined", {"m1": 1.0, "m2": 0.5, "m3": 0.0}), ("arcface", {})),
        (("combined", {"m1": 1.0, "m2": 0.0, "m3": 0.35}), ("cosface", {})),
        (("subcenter_arcface", {"k": 1}), ("arcface", {})),
        (("sphereface", {"m1": 1, "s": 64.0, "base": 0.0, "lambda_min": 0.0}), ("normface", {})),
        (
            ("sphereface", {"m1": 4, "s": 64.0, "base": 0.0, "lambda_min": 0.0}),
            ("combined", {"m1": 4, "m2": 0, "m3": 0}),
        ),
        (("adaface", {"h": 0.0, "m": 0.35}), ("cosface", {})),
        (("magface", {"l_m": 0.5, "u_m": 0.5}), ("arcface", {})),
    ],
    ids=lambda p: f"{p[0]}{p[1]}",
)
def test_identities(a, b, dtype):
    ha, hb = build(a[0], **a[1]), build(b[0], **b[1])
    x, w, labels = _identity_batch(dtype)
    la, gxa, gwa = _logits_and_grads(ha, x, w, labels)
    lb, gxb, gwb = _logits_and_grads(hb, x, w, labels)
    tol = {"rtol": 1e-5, "atol": 1e-4} if dtype == torch.float32 else {"rtol": 1e-10, "atol": 1e-10}
    torch.testing.assert_close(la, lb, **tol)
    torch.testing.assert_close(gxa, gxb, **tol)
    torch.testing.assert_close(gwa, gwb, **tol)


def test_curricularface_without_hard_negatives_is_arcface():
    x, w, labels = make_batch(dim=64, thetas=[0.0, 0.1, 0.3, 0.4], norms=[1.0] * 4)
    cur = build("curricularface")
    cos = F.normalize(x) @ F.normalize(w).t()
    threshold = torch.cos(torch.acos(cos[torch.arange(4), labels].clamp(max=1)) + 0.5)
    assert (cos.scatter(1, labels[:, None], -2.0) < threshold[:, None]).all()  # no hard negative
    torch.testing.assert_close(cur.logits_with(x, w, labels), build("arcface").logits_with(x, w, labels))


def test_subcenter_is_max_over_subcentres():
    head = build("subcenter_arcface", k=3)
    x, w, labels = make_batch(k=3, dtype=torch.float32)
    cos_rows = F.normalize(x) @ F.normalize(w).t()  # (B, 15)
    expected = M.arcface_logits(cos_rows.view(8, 5, 3).amax(2), labels)
    torch.testing.assert_close(head.logits_with(x, w, labels), expected)
    rows = head.class_rows(torch.tensor([2, 0]))
    assert rows.tolist() == [6, 7, 8, 0, 1, 2]


# ------------------------------------------------------------------------------------------
# ArcFace specifics: fallback, easy margin, straight-through
# ------------------------------------------------------------------------------------------


def test_arcface_fallback_rule():
    m = 0.5
    cos = torch.tensor([math.cos(math.pi - m), math.cos(math.pi - m) + 1e-6, -1.0, 0.3], dtype=torch.float64)
    out = M.arcface_target(cos, m)
    # at and below cos(pi - m) the target is cos - m sin m
    assert out[0] == pytest.approx(float(cos[0]) - m * math.sin(m), abs=1e-12)
    assert out[2] == pytest.approx(-1 - m * math.sin(m), abs=1e-12)
    # above, cos(theta + m)
    assert out[1] == pytest.approx(math.cos(math.acos(float(cos[1])) + m), abs=1e-9)
    assert out[3] == pytest.approx(math.cos(math.acos(0.3) + m), abs=1e-12)
    easy = M.arcface_target(cos, m, easy_margin=True)
    assert easy[2] == -1.0 and easy[3] == pytest.approx(math.cos(math.acos(0.3) + m), abs=1e-12)


def _arcface_torch_scheme(cos, labels, s, m):
    """arcface_torch's ArcFace: margin applied in place under no_grad (so the gradient is s)."""
    logits = cos * 1.0
    index = torch.where(labels != -1)[0]
    target = logits[index, labels[index]]
    with torch.no_grad():
        target.arccos_()
        logits.arccos_()
        logits[index, labels[index]] = target + m
        logits.cos_()
    return logits * s


def test_straight_through_forward_is_arcface_gradient_is_arcface_torch():
    torch.manual_seed(0)
    cos = torch.rand(6, 5, dtype=torch.float64) * 1.6 - 0.8  # theta < pi - m everywhere
    labels = torch.tensor([0, 1, 2, -1, 4, 0])
    upstream = torch.randn(6, 5, dtype=torch.float64)

    c1 = cos.clone().requires_grad_(True)
    st = M.arcface_logits(c1, labels, straight_through=True)
    (st * upstream).sum().backward()
    c2 = cos.clone().requires_grad_(True)
    exact = M.arcface_logits(c2, labels)
    (exact * upstream).sum().backward()
    c3 = cos.clone().requires_grad_(True)
    ref = _arcface_torch_scheme(c3, labels, 64.0, 0.5)
    (ref * upstream).sum().backward()

    torch.testing.assert_close(st, exact)  # same forward as arcface
    torch.testing.assert_close(st, ref)  # ... which is arcface_torch's where theta < pi - m
    torch.testing.assert_close(c1.grad, c3.grad)  # arcface_torch's gradient: s * upstream
    torch.testing.assert_close(c1.grad, 64.0 * upstream)
    assert not torch.allclose(c1.grad, c2.grad)  # and not the exact one

    # through the head as well, incl. the fallback region, in float32
    head = build("arcface", straight_through=True)
    x, w, y = make_batch(dtype=torch.float32)
    torch.testing.assert_close(head.logits_with(x, w, y), build("arcface").logits_with(x, w, y))


# ------------------------------------------------------------------------------------------
# label -1: scaling only, no margin
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("kind", "params"), [c for c in CASES if c[0] != "softmax"], ids=CASE_IDS[1:])
def test_label_minus_one_gets_no_margin(kind, params):
    head = build(kind, **params)
    x, w, labels = make_batch(k=head.rows_per_class)
    labels = labels.clone()
    labels[::2] = -1
    out = head.logits_with(x, w, labels)
    cos = head._cosine(x, w)
    scale = x.norm(dim=1, keepdim=True) if getattr(head, "s", 1) is None else head.s
    plain = scale * cos
    torch.testing.assert_close(out[::2], plain[::2])
    full = head.logits_with(x, w, make_batch(k=head.rows_per_class)[2])
    torch.testing.assert_close(out[1::2], full[1::2])


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_sharded_logits_match_full(kind):
    """What Partial FC does: split the classes into shards, remap labels (-1 where the target is
    elsewhere), pass each row's target cosine; the concatenated logits equal the full ones."""
    head = build(kind)
    k = head.rows_per_class
    x, w, labels = make_batch(k=k)
    bias = torch.randn(5, dtype=torch.float64)
    full = head.logits_with(x, w, labels, bias=bias)
    shards = [torch.tensor([0, 1]), torch.tensor([2, 3, 4])]
    target_cos = sum(head.target_cosine(x, w[head.class_rows(ids)], _local(labels, ids)) for ids in shards)
    parts = [
        head.logits_with(x, w[head.class_rows(ids)], _local(labels, ids), bias=bias[ids], target_cos=target_cos)
        for ids in shards
    ]
    torch.testing.assert_close(torch.cat(parts, dim=1), full, rtol=1e-12, atol=1e-12)


def test_only_curricularface_needs_target_cos():
    assert [k for k in ALL_KINDS if create_head(k, 4, 3).needs_target_cos] == ["curricularface"]


def _local(labels, ids):
    """Global class ids -> index into the shard ``ids``, -1 where not in the shard."""
    lookup = torch.full((int(labels.max()) + 1,), -1, dtype=torch.long)
    lookup[ids] = torch.arange(len(ids))
    return lookup[labels]


# ------------------------------------------------------------------------------------------
# numerics: cos = +-1 exactly, float32 / bfloat16 / float16, logits in float32
# ------------------------------------------------------------------------------------------


def _boundary_batch(head, dtype):
    """Embeddings exactly on (and opposite to) their target centre, and on a non-target centre."""
    torch.manual_seed(0)
    k = head.rows_per_class
    w = torch.randn(4 * k, 8)
    c = lambda j: w[j * k]  # noqa: E731 - first sub-centre of class j
    x = torch.stack([3 * c(0), -40 * c(1), 1 * c(0), -0.5 * c(3), 200 * c(2), 12 * c(3)])
    labels = torch.tensor([0, 1, 2, 0, 2, 3])
    head.weight.data.copy_(w)
    return x.to(dtype).requires_grad_(True), labels


KIND_PARAMS_FOR_BOUNDARY = [(k, {}) for k in ALL_KINDS] + [
    ("arcface", {"easy_margin": True}),
    ("arcface", {"straight_through": True}),
    ("combined", {"m1": 0.9, "m2": 0.4, "m3": 0.15}),
    ("sphereface", {"s": 64.0}),
]


@pytest.mark.parametrize("mode", ["float32", "bfloat16-autocast", "float16-autocast", "float16-input"])
@pytest.mark.parametrize(("kind", "params"), KIND_PARAMS_FOR_BOUNDARY, ids=lambda p: str(p))
def test_finite_at_cos_plus_minus_one(kind, params, mode):
    head = create_head(kind, 8, 4, **params).train()
    dtype = {"float32": torch.float32, "float16-input": torch.float16}.get(mode, torch.float32)
    if "autocast" in mode:
        dtype = torch.bfloat16 if mode.startswith("bfloat16") else torch.float16
    x, labels = _boundary_batch(head, dtype)
    ctx = torch.autocast("cpu", dtype=dtype) if "autocast" in mode else torch.autocast("cpu", enabled=False)
    with ctx:
        logits = head.logits(x, labels)
        loss = head(x, labels)
    assert logits.dtype == torch.float32
    assert torch.isfinite(logits).all() and torch.isfinite(loss)
    loss.backward()
    assert torch.isfinite(x.grad).all()
    assert torch.isfinite(head.weight.grad).all()


def test_logits_are_float32_under_autocast_and_equal_the_float32_path():
    head = build("arcface", dim=16, num_classes=7)
    x = torch.randn(5, 16).to(torch.bfloat16)
    y = torch.randint(0, 7, (5,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = head.logits(x, y)
    outside = head.logits(x.float(), y)
    assert inside.dtype == torch.float32
    torch.testing.assert_close(inside, outside, rtol=0, atol=0)


MARGIN_FNS = {
    "normface": lambda c, y, n: M.normface_logits(c, y),
    "cosface": lambda c, y, n: M.cosface_logits(c, y),
    "arcface": lambda c, y, n: M.arcface_logits(c, y),
    "arcface-easy": lambda c, y, n: M.arcface_logits(c, y, easy_margin=True),
    "arcface-st": lambda c, y, n: M.arcface_logits(c, y, straight_through=True),
    "sphereface": lambda c, y, n: M.sphereface_logits(c, y, 4, 5.0, n),
    "combined": lambda c, y, n: M.combined_logits(c, y),
    "combined-psi": lambda c, y, n: M.combined_logits(c, y, 64.0, 0.9, 0.4, 0.15),
    "curricularface": lambda c, y, n: M.curricularface_logits(c, y, 0.2, target_cos=c[:, 0]),
    "adaface": lambda c, y, n: M.adaface_logits(c, y, n, 20.0, 10.0),
    "magface": lambda c, y, n: M.magface_logits(c, y, n),
}


@pytest.mark.parametrize("name", list(MARGIN_FNS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_margin_functions_finite_at_exact_boundaries(name, dtype):
    one_below = 1 - torch.finfo(dtype).eps
    values = torch.tensor([-1.0, -one_below, -0.5, 0.0, 0.5, one_below, 1.0, 1.0 + 1e-6], dtype=dtype)
    cos = values.repeat(len(values), 1).clone().requires_grad_(True)  # (8, 8), every value as a target
    labels = torch.arange(len(values))
    norms = torch.linspace(1.0, 150.0, len(values), dtype=dtype, requires_grad=True)
    out = MARGIN_FNS[name](cos, labels, norms)
    assert torch.isfinite(out).all()
    (out * torch.randn_like(out)).sum().backward()
    assert torch.isfinite(cos.grad).all()
    assert norms.grad is None or torch.isfinite(norms.grad).all()


def test_safe_theta_and_sin():
    c = torch.tensor([-1.0, -0.5, 0.0, 0.5, 1.0], dtype=torch.float64, requires_grad=True)
    theta = M.safe_theta(c)
    torch.testing.assert_close(theta, torch.acos(c.detach()), atol=1e-15, rtol=0)
    torch.testing.assert_close(M.safe_sin(c), torch.sin(theta), atol=1e-15, rtol=0)
    theta.sum().backward()
    assert torch.isfinite(c.grad).all()
    assert c.grad[0] == 0 and c.grad[-1] == 0
    torch.testing.assert_close(c.grad[1:4], -1 / torch.sqrt(1 - c.detach()[1:4] ** 2))


def test_chebyshev_cos_multiple_angle():
    c = torch.linspace(-1, 1, 101, dtype=torch.float64)
    for m1 in (1, 2, 3, 4, 5):
        torch.testing.assert_close(M.cos_multiple_angle(c, m1), torch.cos(m1 * torch.acos(c)))
    torch.testing.assert_close(M.cos_multiple_angle(c, 1.5, 0.2), torch.cos(1.5 * torch.acos(c) + 0.2))


# ------------------------------------------------------------------------------------------
# monotonic target-logit curve over theta in [0, pi]
# ------------------------------------------------------------------------------------------

MONOTONIC_CASES = [
    ("softmax", {}, 1.0),
    ("normface", {}, 1.0),
    ("sphereface", {}, 1.0),  # lambda at iteration 0 (about 1000)
    ("sphereface", {"lambda_min": 5.0, "base": 0.0}, 1.0),  # annealed to lambda_min
    ("sphereface", {"base": 0.0, "lambda_min": 0.0}, 30.0),  # pure psi
    ("cosface", {}, 1.0),
    ("arcface", {}, 1.0),
    ("arcface", {"straight_through": True}, 1.0),
    ("combined", {}, 1.0),
    ("combined", {"m1": 0.9, "m2": 0.4, "m3": 0.15}, 1.0),
    ("combined", {"m1": 1.35, "m2": 0.0, "m3": 0.0}, 1.0),
    ("combined", {"m1": 1.0, "m2": 0.5, "m3": 0.0}, 1.0),
    ("subcenter_arcface", {}, 1.0),
    ("curricularface", {}, 1.0),
    *[("adaface", {}, n) for n in (1.0, 15.0, 20.0, 40.0, 90.0)],
    *[("magface", {}, n) for n in (5.0, 10.0, 60.0, 110.0, 200.0)],
]


def _target_curve(head, norm, dtype=torch.float64):
    thetas = torch.linspace(0, math.pi, 2001, dtype=dtype)
    k = head.rows_per_class
    w = torch.zeros(2 * k, 3, dtype=dtype)
    w[:k, 0] = 1.0  # every sub-centre of class 0 on the x axis
    w[k:, 1] = 1.0
    x = norm * torch.stack([torch.cos(thetas), torch.zeros_like(thetas), torch.sin(thetas)], dim=1)
    labels = torch.zeros(len(thetas), dtype=torch.long)
    with torch.no_grad():
        return head.logits_with(x, w, labels, bias=torch.zeros(2, dtype=dtype))[:, 0]


@pytest.mark.parametrize(("kind", "params", "norm"), MONOTONIC_CASES, ids=lambda p: str(p))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_target_logit_is_monotonically_decreasing(kind, params, norm, dtype):
    head = create_head(kind, 3, 2, **params).eval()
    curve = _target_curve(head, norm, dtype)
    assert torch.isfinite(curve).all()
    diffs = curve[1:] - curve[:-1]
    tol = 1e-9 if dtype == torch.float64 else 8 * torch.finfo(dtype).eps * float(curve.abs().max())
    assert float(diffs.max()) <= tol, f"rises by {float(diffs.max())} at theta index {int(diffs.argmax())}"
    assert float(curve[0]) > float(curve[-1])


def test_easy_margin_is_not_monotonic():
    """Documented: the easy-margin rule jumps back up at theta = pi/2 (why it is not the default)."""
    head = create_head("arcface", 3, 2, easy_margin=True).eval()
    curve = _target_curve(head, 1.0)
    assert float((curve[1:] - curve[:-1]).max()) > 1.0


def test_sphereface_psi_values():
    thetas = torch.tensor([0.0, math.pi / 8, math.pi / 4, 3 * math.pi / 8, math.pi / 2, math.pi], dtype=torch.float64)
    psi = M.sphereface_psi(torch.cos(thetas), 4)
    expected = [1.0, math.cos(math.pi / 2), -1.0, -math.cos(3 * math.pi / 2) - 2, -3.0, -7.0]
    torch.testing.assert_close(psi, torch.tensor(expected, dtype=torch.float64), atol=1e-9, rtol=0)


# ------------------------------------------------------------------------------------------
# training state in buffers, updated in training mode only
# ------------------------------------------------------------------------------------------


def test_sphereface_lambda_annealing():
    head = create_head("sphereface", 6, 5)
    x, w, y = make_batch(dtype=torch.float32)
    assert "iteration" in head.state_dict()
    assert float(head.lambda_) == pytest.approx(1000.0)
    head.train()
    for _ in range(3):
        head.logits_with(x, w, y)
    assert int(head.iteration) == 3
    assert float(head.lambda_) == pytest.approx(1000 / (1 + 0.12 * 3))
    head.eval()
    head.logits_with(x, w, y)
    assert int(head.iteration) == 3
    head.iteration.fill_(10**6)
    assert float(head.lambda_) == pytest.approx(5.0)
    # the logits use the counter's value after the increment (the Caffe layer's order)
    head.train()
    head.iteration.fill_(9)
    out = head.logits_with(x.double(), w.double(), y)
    ref = build("sphereface")
    ref.iteration.fill_(10)
    torch.testing.assert_close(out, ref_logits(ref, "sphereface", x.double(), w.double(), y))


def test_curricularface_t_update():
    head = create_head("curricularface", 6, 5)
    x, w, y = make_batch()
    assert "t" in head.state_dict() and float(head.t) == 0.0
    cos = F.normalize(x) @ F.normalize(w).t()
    target = cos[torch.arange(len(y)), y]
    head.eval()
    head.logits_with(x, w, y)
    assert float(head.t) == 0.0
    head.train()
    head.logits_with(x, w, y)
    assert float(head.t) == pytest.approx(0.01 * float(target.mean()), rel=1e-6)
    # the logits of this call already use the updated t
    t1 = float(head.t)
    out = head.logits_with(x, w, y)
    t2 = 0.01 * float(target.mean()) + 0.99 * t1
    assert float(head.t) == pytest.approx(t2, rel=1e-6)
    torch.testing.assert_close(out, M.curricularface_logits(cos, y, t2))
    # on a shard with labels -1, target_cos supplies the missing targets
    head.t.zero_()
    head.logits_with(x, w[:2], torch.where(y < 2, y, -1), target_cos=target)
    assert float(head.t) == pytest.approx(0.01 * float(target.mean()), rel=1e-6)
    head.t.zero_()
    head.logits_with(x, w[:2], torch.where(y < 2, y, -1))
    assert float(head.t) == pytest.approx(0.01 * float(target[y < 2].mean()), rel=1e-6)


def test_curricularface_hard_negative_modulation():
    cos = torch.tensor([[0.5, 0.45, 0.1, -0.2]], dtype=torch.float64)
    labels = torch.tensor([0])
    out = M.curricularface_logits(cos, labels, t=0.4, s=1.0, m=0.5)
    threshold = math.cos(math.acos(0.5) + 0.5)  # ~0.062: 0.45 and 0.1 are hard, -0.2 is not
    assert threshold < 0.1
    expected = [math.cos(math.acos(0.5) + 0.5), 0.45 * (0.4 + 0.45), 0.1 * (0.4 + 0.1), -0.2]
    torch.testing.assert_close(out[0], torch.tensor(expected, dtype=torch.float64))


def test_adaface_norm_statistics():
    head = create_head("adaface", 6, 5)
    x, w, y = make_batch()
    sd = head.state_dict()
    assert float(sd["batch_mean"]) == 20.0 and float(sd["batch_std"]) == 100.0
    norms = x.norm(dim=1).clamp(0.001, 100)
    head.eval()
    head.logits_with(x, w, y)
    assert float(head.batch_mean) == 20.0
    head.train()
    head.logits_with(x, w, y)
    assert float(head.batch_mean) == pytest.approx(0.01 * float(norms.mean()) + 0.99 * 20, rel=1e-6)
    assert float(head.batch_std) == pytest.approx(0.01 * float(norms.std()) + 0.99 * 100, rel=1e-6)
    head.logits_with(x[:1], w, y[:1])  # a batch of one has no std: statistics are left alone
    assert torch.isfinite(head.batch_std)


def test_adaface_margin_has_no_gradient_through_the_norm():
    head = build("adaface")
    x, w, y = make_batch()
    x.requires_grad_(True)
    out = head.logits_with(x, w, y)
    # the logits depend on x only through its direction: the gradient is orthogonal to x
    grad = torch.autograd.grad(out[torch.arange(8), y].sum(), x)[0]
    torch.testing.assert_close((grad * x).sum(dim=1), torch.zeros(8, dtype=torch.float64), atol=1e-9, rtol=0)


def test_magface_regulariser_and_margin():
    head = create_head("magface", 6, 5)
    norms = torch.tensor([5.0, 10.0, 60.0, 110.0, 200.0], dtype=torch.float64)
    torch.testing.assert_close(
        M.magface_margin(norms), torch.tensor([0.45, 0.45, 0.625, 0.8, 0.8], dtype=torch.float64)
    )
    x = torch.eye(5, 6, dtype=torch.float64) * norms.unsqueeze(1)
    a = norms.clamp(10, 110)
    torch.testing.assert_close(head.regulariser(x), 35 * (1 / a + a / 110**2).mean())
    y = torch.arange(5)
    assert float(head.extra_loss(x, y)) == pytest.approx(float(head.regulariser(x)))
