"""Each method against an independent float64 reference (or a method it must reduce to)."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from sketchplan.optimizers import Adam, BlockedShampoo, ExtremeTensoring, KrADagrad, Shampoo, Sketchy


def _feed(opts_and_params, grads):
    """Give every optimizer's parameter the same gradient and step; return the parameter deltas."""
    deltas = []
    for opt, p in opts_and_params:
        before = p.detach().clone()
        p.grad = grads.to(p.dtype).clone()
        opt.step()
        deltas.append((p.detach() - before).double())
    return deltas


def _rel(a, b):
    return float((a - b).norm() / b.norm())


def test_adamw_matches_torch():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(20, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3))
    ref = copy.deepcopy(model)
    ours = Adam(model.parameters(), lr=1e-2, betas=(0.8, 0.95), eps=1e-7, weight_decay=0.1)
    theirs = torch.optim.AdamW(ref.parameters(), lr=1e-2, betas=(0.8, 0.95), eps=1e-7, weight_decay=0.1,
                               foreach=True)
    for step in range(20):
        x, y = torch.randn(32, 20), torch.randint(0, 3, (32,))
        for m, opt in ((model, ours), (ref, theirs)):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(m(x), y).backward()
            opt.step()
    for a, b in zip(model.parameters(), ref.parameters()):
        assert _rel(a.detach().double(), b.detach().double()) < 1e-6


def _dense_root(s: torch.Tensor, p: int, eps: float) -> torch.Tensor:
    w, v = torch.linalg.eigh(s + eps * torch.eye(s.shape[0], dtype=s.dtype))
    return (v * w.pow(-1.0 / p)) @ v.T


MATRIX_KW = dict(betas=(0.0, 1.0), shampoo_eps=1e-10, merge_dims=1, graft="sgd", momentum="none", precondition_frequency=1)


def test_shampoo_matches_dense_reference():
    torch.manual_seed(1)
    m, n = 6, 9
    p = torch.nn.Parameter(torch.zeros(m, n))
    opt = Shampoo([p], lr=0.1, **MATRIX_KW)
    left, right = torch.zeros(m, m, dtype=torch.float64), torch.zeros(n, n, dtype=torch.float64)
    for t in range(6):
        g = torch.randn(m, n)
        (delta,) = _feed([(opt, p)], g)
        gd = g.double()
        left += gd @ gd.T
        right += gd.T @ gd
        d = _dense_root(left, 4, 1e-10) @ gd @ _dense_root(right, 4, 1e-10)
        expected = -0.1 * d * gd.norm() / d.norm()
        if t >= 1:  # from the second step on both statistics have full rank
            assert _rel(delta, expected) < 1e-5


@pytest.mark.parametrize("shape", [(7, 5), (4, 3, 6), (11,)])
def test_blocked_shampoo_with_large_blocks_equals_shampoo(shape):
    torch.manual_seed(2)
    a, b = torch.nn.Parameter(torch.randn(shape)), torch.nn.Parameter(torch.randn(shape))
    b.data.copy_(a.data)
    full = Shampoo([a], lr=0.05, precondition_frequency=2)
    blocked = BlockedShampoo([b], lr=0.05, block_size=math.prod(shape), precondition_frequency=2)
    for _ in range(5):
        da, db = _feed([(full, a), (blocked, b)], torch.randn(shape))
        assert torch.equal(da, db)


@pytest.mark.parametrize("shape,block", [((6, 9), None), ((5, 4, 3), None), ((12, 10), 5)])
def test_sketchy_full_rank_equals_shampoo(shape, block):
    torch.manual_seed(3)
    a, b = torch.nn.Parameter(torch.zeros(shape)), torch.nn.Parameter(torch.zeros(shape))
    sh = Shampoo([a], lr=0.1, block_size=block, **MATRIX_KW)
    sk = Sketchy([b], lr=0.1, rank=max(shape), block_size=block, **MATRIX_KW)
    for t in range(6):
        da, db = _feed([(sh, a), (sk, b)], torch.randn(shape))
        if t >= 2:  # statistics of full rank (the ridge ε is tiny)
            assert _rel(db, da) < 1e-5


def test_extreme_tensoring_order_one_is_adagrad():
    torch.manual_seed(4)
    p = torch.nn.Parameter(torch.zeros(5, 7))
    opt = ExtremeTensoring([p], lr=0.3, eps=1e-6, et_max_dim=0)
    acc = torch.zeros(5, 7, dtype=torch.float64)
    for _ in range(8):
        g = torch.randn(5, 7)
        (delta,) = _feed([(opt, p)], g)
        acc += g.double() ** 2
        assert _rel(delta, -0.3 * g.double() / (acc + 1e-6).sqrt()) < 1e-6


def test_extreme_tensoring_order_two_memory_and_formula():
    torch.manual_seed(5)
    p = torch.nn.Parameter(torch.zeros(6, 8))
    opt = ExtremeTensoring([p], lr=0.2, eps=1e-6, et_max_dim=8)
    rows, cols = torch.zeros(6, dtype=torch.float64), torch.zeros(8, dtype=torch.float64)
    for _ in range(4):
        g = torch.randn(6, 8)
        (delta,) = _feed([(opt, p)], g)
        g2 = g.double() ** 2
        rows += g2.sum(1)
        cols += g2.sum(0)
        denom = (rows + 1e-6).pow(0.25)[:, None] * (cols + 1e-6).pow(0.25)[None, :]
        assert _rel(delta, -0.2 * g.double() / denom) < 1e-6
    assert sorted(k for k in opt.state[p] if k.startswith("et_acc")) == ["et_acc0", "et_acc1"]


def _ill_conditioned_quadratic(n: int, cond: float, seed: int):
    """f(X) = Σ X ⊙ (H0 X H1), Hi = Qi diag(λ) Qiᵀ with λ log-spaced over [1/cond, 1]."""
    g = torch.Generator().manual_seed(seed)
    lam = torch.logspace(0, -torch.log10(torch.tensor(cond)).item(), n, dtype=torch.float64)
    hs = []
    for _ in range(2):
        q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
        hs.append((q * lam) @ q.T)
    return hs, torch.randn(n, n, generator=g, dtype=torch.float64)


def test_kradagrad_dominates_exact_inverse():
    torch.manual_seed(6)
    m, n, eps = 8, 5, 1e-2
    p = torch.nn.Parameter(torch.zeros(m, n))
    opt = KrADagrad([p], lr=0.01, betas=(0.0, 1.0), shampoo_eps=eps, momentum="none", merge_dims=1)
    stats = [eps * torch.eye(m, dtype=torch.float64), eps * torch.eye(n, dtype=torch.float64)]
    for _ in range(10):
        g = torch.randn(m, n).double() * 3
        _feed([(opt, p)], g.float())
        stats[0] += g @ g.T
        stats[1] += g.T @ g
        for i, s in enumerate(stats):
            inv = opt.state[p][f"blocks0.inv{i}"][0].double()
            # L̃ ≽ L⁻¹  ⇔  L^{1/2} L̃ L^{1/2} ≽ I
            w, v = torch.linalg.eigh(s)
            half = (v * w.sqrt()) @ v.T
            assert torch.linalg.eigvalsh(half @ inv @ half).min() >= 1 - 1e-4


@pytest.mark.parametrize("variant", ["star", "mm"])
def test_kradagrad_ill_conditioned_quadratic_float32(variant):
    n = 128
    (h0, h1), x0 = _ill_conditioned_quadratic(n, 1e4, seed=7)
    x = torch.nn.Parameter(x0.float())
    opt = KrADagrad([x], lr=0.02, variant=variant, precondition_frequency=5, shampoo_eps=1e-6)
    f = lambda z: float((z * (h0 @ z @ h1)).sum())
    start = f(x.detach().double())
    for _ in range(30):
        opt.zero_grad()
        xd = x.double()
        x.grad = (h0 @ xd @ h1 + h0.T @ xd @ h1.T).float()
        opt.step()
        for v in opt.state[x].values():
            if torch.is_tensor(v):
                assert torch.isfinite(v.float()).all()
    assert f(x.detach().double()) < start


@pytest.mark.parametrize("stats_every", [1, 2, 3])
def test_kradagrad_mm_cycles_the_axes_over_statistics_updates(stats_every):
    """``variant="mm"`` updates one axis per statistics update, cycling: with f = ``stats_every`` the updates fall
    on steps 1, f+1, 2f+1, … and take axes 0, 1, 0, … of a matrix (counting steps instead, an even f never
    reached axis 1 — found by the per-tensor replay test)."""
    torch.manual_seed(stats_every)
    p = torch.nn.Parameter(torch.zeros(6, 4))
    opt = KrADagrad([p], lr=0.01, variant="mm", stats_every=stats_every, momentum="none", merge_dims=1)
    changed = []
    for step in range(1, 4 * stats_every + 1):
        before = [opt.state[p][f"blocks0.inv{i}"].clone() for i in range(2)] if opt.state[p] else None
        p.grad = torch.randn(6, 4)
        opt.step()
        if before is None:  # the first step creates the state: compare with L̃₀ = I/ε
            before = [torch.eye(d).expand(1, d, d) / opt.param_groups[0]["shampoo_eps"] for d in (6, 4)]
        axes = [i for i in range(2) if not torch.equal(opt.state[p][f"blocks0.inv{i}"], before[i])]
        changed.append((step, axes))
    expected = [(s, [((s - 1) // stats_every) % 2] if (s - 1) % stats_every == 0 else []) for s, _ in changed]
    assert changed == expected
    assert {a for _, axes in changed for a in axes} == {0, 1}


def test_stats_every_updates_statistics_from_the_sampled_gradient():
    """With stats_every = f the statistic is updated on steps 1, f+1, …, standing for f steps each."""
    import torch

    from sketchplan.optimizers import Shampoo

    torch.manual_seed(3)
    p = torch.nn.Parameter(torch.randn(6, 5, dtype=torch.float32))
    opt = Shampoo([p], lr=1e-2, betas=(0.0, 1.0), stats_every=3, precondition_frequency=1, merge_dims=1)
    grads = [torch.randn(6, 5) for _ in range(4)]
    for g in grads:
        p.grad = g.clone()
        opt.step()
    st = opt.state[p]
    expect_l = 3 * (grads[0].double() @ grads[0].double().T + grads[3].double() @ grads[3].double().T)
    got_l = st["blocks0.stat0"][0].double()
    assert torch.allclose(got_l, expect_l, rtol=1e-5, atol=1e-5)


def test_adam_fused_path_is_bit_identical_to_torch_fused_adamw():
    """float32 parameters and state take torch's fused kernel (``methods.adam.fused``): the same bits as
    ``AdamW(fused=True)`` in parameters and state (the foreach step differs in the last bits within 7 steps)."""
    torch.manual_seed(int(torch.randint(0, 10**6, ())))
    shapes = [(17, 9), (9,), (3, 4, 5)]
    ours = [torch.nn.Parameter(torch.randn(s)) for s in shapes]
    theirs = [torch.nn.Parameter(p.detach().clone()) for p in ours]
    kw = dict(lr=3e-2, betas=(0.85, 0.97), eps=1e-6, weight_decay=0.05)
    a, b = Adam(ours, **kw), torch.optim.AdamW(theirs, fused=True, **kw)
    for _ in range(7):
        for p, q in zip(ours, theirs):
            p.grad = torch.randn(p.shape)
            q.grad = p.grad.clone()
        a.step()
        b.step()
    for p, q in zip(ours, theirs):
        assert torch.equal(p, q)
        assert torch.equal(a.state[p]["exp_avg_sq"], b.state[q]["exp_avg_sq"])
