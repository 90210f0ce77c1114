"""Kernels against float64 references: FD invariant and variant agreement, inverse roots, low-rank apply."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import fd_reference
from sketchplan.kernels.torch import FD_VARIANTS, fd_update, inverse_root_newton, lowrank_root_apply, symmetric_power


def _sketch(u, sig2):
    return (u * sig2.unsqueeze(-2)) @ u.mT


@pytest.mark.parametrize("beta2", [1.0, 0.9])
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-9), (torch.float32, 1e-4)])
def test_fd_invariant_on_random_stream(beta2, dtype, tol):
    g = torch.Generator().manual_seed(0)
    b, d, k, n = 3, 20, 5, 3
    u, sig2, rho = torch.zeros(b, d, k, dtype=dtype), torch.zeros(b, k, dtype=dtype), torch.zeros(b, dtype=dtype)
    cov = torch.zeros(b, d, d, dtype=torch.float64)
    for _ in range(25):
        x = torch.randn(b, d, n, generator=g, dtype=torch.float64) * torch.linspace(0.1, 3, d)[:, None]
        u, sig2, rho = fd_update(u, sig2, rho, x.to(dtype), beta2)
        cov = beta2 * cov + x @ x.mT
        gap = torch.linalg.eigvalsh(cov - _sketch(u.double(), sig2.double()))
        scale = cov.diagonal(dim1=-2, dim2=-1).sum(-1)
        assert (gap[:, 0] >= -tol * scale).all()  # 0 ≼ C − Ĉ
        assert (gap[:, -1] <= rho.double() + tol * scale).all()  # C − Ĉ ≼ ρ I
    assert (rho > 0).all()


@pytest.mark.parametrize("d,k,n", [(16, 4, 3), (10, 6, 8), (12, 12, 5), (8, 3, 40)])
def test_fd_variants_give_the_same_sketch(d, k, n):
    g = torch.Generator().manual_seed(1)
    start_u, _ = torch.linalg.qr(torch.randn(2, d, k, generator=g, dtype=torch.float64))
    start = (start_u, torch.rand(2, k, generator=g, dtype=torch.float64) * 5, torch.rand(2, dtype=torch.float64))
    x = torch.randn(2, d, n, generator=g, dtype=torch.float64)
    results = {v: fd_update(*start, x, 0.95, v) for v in FD_VARIANTS}
    ref_u, ref_s, ref_rho = results["svd"]
    for v, (u, s, rho) in results.items():
        assert torch.allclose(_sketch(u, s), _sketch(ref_u, ref_s), atol=1e-9), v
        assert torch.allclose(rho, ref_rho, atol=1e-9), v


def _random_psd(b, d, seed, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(b, d, 2 * d, generator=g, dtype=torch.float64)
    return (a @ a.mT / d).to(dtype)


def _ref_power(s, exponent, eps):
    w, v = torch.linalg.eigh(s.double() + eps * torch.eye(s.shape[-1], dtype=torch.float64))
    return (v * w.pow(exponent).unsqueeze(-2)) @ v.mT


@pytest.mark.parametrize("p", [2, 4, 6])
def test_inverse_roots_eigh_and_newton(p):
    s = _random_psd(4, 12, seed=p).float()
    ref = _ref_power(s, -1.0 / p, 1e-3)
    by_eigh = symmetric_power(s, -1.0 / p, 1e-3).double()
    by_newton = inverse_root_newton(s, p, 1e-3).double()
    assert (by_eigh - ref).norm() / ref.norm() < 1e-5
    assert (by_newton - ref).norm() / ref.norm() < 1e-4


def test_newton_failure_keeps_previous():
    s = _random_psd(2, 6, seed=9).float()
    s[0, 0, 0] = float("nan")
    previous = torch.randn(2, 6, 6)
    assert inverse_root_newton(s, 4, 1e-6, previous=previous) is previous
    assert symmetric_power(s, -0.25, 1e-6, previous=previous) is previous


@pytest.mark.parametrize("d,k", [(15, 4), (9, 9)])
def test_lowrank_apply_matches_dense(d, k):
    g = torch.Generator().manual_seed(2)
    u, _ = torch.linalg.qr(torch.randn(3, d, k, generator=g, dtype=torch.float64))
    sig2 = torch.rand(3, k, generator=g, dtype=torch.float64) * 4
    rho = torch.rand(3, generator=g, dtype=torch.float64) if k < d else torch.zeros(3, dtype=torch.float64)
    x = torch.randn(3, d, 7, generator=g, dtype=torch.float64)
    dense = _sketch(u, sig2) + rho[:, None, None] * torch.eye(d, dtype=torch.float64)
    expected = _ref_power(dense, -0.25, 1e-3) @ x
    got = lowrank_root_apply(u, sig2, rho, x, -0.25, 1e-3)
    assert torch.allclose(got, expected, rtol=1e-10, atol=1e-10)


# ---- Frequent Directions against the independent float64 reference (tests/fd_reference.py) ----

def _stream(seed, d, n, steps, decay_spectrum=True):
    rng = np.random.default_rng(seed)
    scale = np.linspace(3.0, 0.1, d)[:, None] if decay_spectrum else 1.0
    return [rng.standard_normal((d, n)) * scale for _ in range(steps)]


@pytest.mark.parametrize("variant", FD_VARIANTS)
@pytest.mark.parametrize("d,k,n,beta2", [(24, 6, 4, 1.0), (24, 6, 4, 0.9), (12, 4, 20, 0.95), (16, 16, 3, 0.9)])
def test_fd_update_matches_float64_reference(variant, d, k, n, beta2):
    """Every variant, in float64, equals the paper's update step for step: sketch, σ² and ρ (1e-9 relative;
    observed ≤ 1e-12). Catches a missing shrink (σ² − c), an undecayed ρ, a wrong √β2 or a wrong c."""
    u = torch.zeros(1, d, k, dtype=torch.float64)
    sig2, rho = torch.zeros(1, k, dtype=torch.float64), torch.zeros(1, dtype=torch.float64)
    ru, rs, rr = np.zeros((d, k)), np.zeros(k), 0.0
    for x in _stream(3, d, n, 12):
        u, sig2, rho = fd_update(u, sig2, rho, torch.from_numpy(x)[None], beta2, variant)
        ru, rs, rr = fd_reference.fd_step(ru, rs, rr, x, beta2)
        ref = fd_reference.sketch(ru, rs)
        got = fd_reference.sketch(u[0].numpy(), sig2[0].numpy())
        assert np.linalg.norm(got - ref) <= 1e-9 * np.linalg.norm(ref)
        assert abs(rho.item() - rr) <= 1e-9 * max(rr, 1.0)
        assert np.allclose(np.sort(sig2[0].numpy()), np.sort(rs), rtol=1e-9, atol=1e-9 * rs.max())


def test_fd_invariant_fails_for_plain_truncation():
    """The invariant check can fail: truncating without the shrink step violates C − Ĉ ≼ ρI (and the FD update
    does not), so a test of the invariant would catch an FD update that lost its shrink."""
    d, k = 16, 3
    u, s, r = np.zeros((d, k)), np.zeros(k), 0.0
    tu, ts, tr = np.zeros((d, k)), np.zeros(k), 0.0
    cov = np.zeros((d, d))
    worst_fd, worst_trunc = np.inf, np.inf
    for x in _stream(5, d, 2, 15, decay_spectrum=False):
        cov = cov + x @ x.T
        u, s, r = fd_reference.fd_step(u, s, r, x, 1.0)
        tu, ts, tr = fd_reference.truncation_step(tu, ts, tr, x, 1.0)
        worst_fd = min(worst_fd, *fd_reference.invariant_gap(cov, u, s, r))
        worst_trunc = min(worst_trunc, *fd_reference.invariant_gap(cov, tu, ts, tr))
    assert worst_fd >= -1e-12
    assert worst_trunc < -1e-3
