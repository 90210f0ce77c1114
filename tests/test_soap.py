"""SOAP (issue 19b): the torch optimizer against an independent float64 implementation of the paper's algorithm
(Vyas et al. 2024, Algorithm 3 with the authors' QR refresh), blocking as independent SOAPs per block, and the
optax transformation against torch."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from sketchplan.methods import MethodConfig, OptimizerDefaults
from sketchplan.optimizers.torch import SOAP


def reference_soap(w0: np.ndarray, grads: list[np.ndarray], lr: float, b1: float, b2: float, eps: float, wd: float,
                   f: int, m_dtype=np.float64) -> list[np.ndarray]:
    """The paper's SOAP for one m×n matrix in float64, written from the paper (not from sketchplan's code):

    M ← β1 M + (1−β1) G;  G' = Q_Lᵀ G Q_R;  M' = Q_Lᵀ M Q_R;  V ← β2 V + (1−β2) G'²;
    N = Q_L [(M'/(1−β1ᵗ)) / (√(V/(1−β2ᵗ)) + ε)] Q_Rᵀ;  W ← W − η(N + λW);
    L ← β2 L + (1−β2) G Gᵀ;  R ← β2 R + (1−β2) Gᵀ G;
    every f steps from step 1: Q ← eigenvectors (descending) the first time, then with λ̂ = diag(Qᵀ L Q) sorted
    descending (V's rows/columns permuted alike) Q ← QR(L Q).  Q_L = I, Q_R = I before the first refresh.
    ``m_dtype``: M is stored in this dtype between steps (the optimizer's momentum buffer; the step itself uses
    the unrounded M, as the optimizer does). Returns W after every step.
    """
    w = w0.astype(np.float64).copy()
    m, n = w.shape
    mom, v = np.zeros((m, n)), np.zeros((m, n))
    lf, rf = np.zeros((m, m)), np.zeros((n, n))
    ql, qr = np.eye(m), np.eye(n)
    out = []
    for t, g in enumerate(grads, start=1):
        g = g.astype(np.float64)
        mom = b1 * mom + (1 - b1) * g
        gp = ql.T @ g @ qr
        mp = ql.T @ mom @ qr
        v = b2 * v + (1 - b2) * gp * gp
        npr = (mp / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t)) + eps)
        w = w - lr * (ql @ npr @ qr.T + wd * w)
        out.append(w.copy())
        mom = mom.astype(m_dtype).astype(np.float64)
        lf = b2 * lf + (1 - b2) * g @ g.T
        rf = b2 * rf + (1 - b2) * g.T @ g
        if (t - 1) % f == 0:
            if t == 1:
                ql = np.linalg.eigh(lf)[1][:, ::-1]
                qr = np.linalg.eigh(rf)[1][:, ::-1]
            else:
                order_l = np.argsort(-np.diag(ql.T @ lf @ ql), kind="stable")
                ql, v = ql[:, order_l], v[order_l, :]
                ql = np.linalg.qr(lf @ ql)[0]
                order_r = np.argsort(-np.diag(qr.T @ rf @ qr), kind="stable")
                qr, v = qr[:, order_r], v[:, order_r]
                qr = np.linalg.qr(rf @ qr)[0]
    return out


def _stream(rng: np.random.Generator, shape, steps: int) -> list[np.ndarray]:
    # gradients with a few dominant directions, as real ones have, so the eigenbasis matters
    a = rng.standard_normal((shape[0], shape[0])) / shape[0] ** 0.5
    return [a @ rng.standard_normal(shape) * (1 + 0.3 * np.sin(t)) for t in range(steps)]


@pytest.mark.parametrize("f", [1, 3])
@pytest.mark.parametrize("momentum", ["none", "float32"])
def test_soap_matches_a_float64_reference_of_the_paper(f, momentum):
    """Square matrices: after one step L and R have full rank, so the eigenbasis (and SOAP's result) is unique
    (with m ≠ n one factor is rank-deficient at the first refresh: its null-space basis is arbitrary and Adam's
    per-coordinate scaling depends on it). Without momentum β1 = 0 (M = G) and everything is float64: 1e-9 of
    the step; with the float32 momentum buffer the reference rounds M alike (1e-6: a rounding tie may flip)."""
    seed = random.randrange(10**6)
    rng = np.random.default_rng(seed)
    d = int(rng.integers(3, 9))
    shape = (d, d)
    w0 = rng.standard_normal(shape)
    grads = _stream(rng, shape, 12)
    b1 = 0.0 if momentum == "none" else 0.9
    hyper = dict(lr=1e-2, b1=b1, b2=0.95, eps=1e-8, wd=0.01)
    ref = reference_soap(w0, grads, f=f, m_dtype=np.float32 if momentum == "float32" else np.float64, **hyper)
    p = torch.nn.Parameter(torch.tensor(w0))
    opt = SOAP([p], lr=hyper["lr"], betas=(0.9, hyper["b2"]), eps=hyper["eps"], momentum=momentum,
               weight_decay=hyper["wd"], precondition_frequency=f, merge_dims=1, state_dtype="float64")
    tol = 1e-9 if momentum == "none" else 1e-6
    prev = w0
    for t, g in enumerate(grads):
        p.grad = torch.tensor(g)
        opt.step()
        err = np.abs(p.detach().numpy() - ref[t]).max() / np.abs(ref[t] - prev).max()
        assert err < tol, (seed, shape, t, err)
        prev = ref[t]


def test_blocked_soap_is_an_independent_soap_per_block():
    seed = random.randrange(10**6)
    rng = np.random.default_rng(seed)
    w0 = rng.standard_normal((8, 8))
    grads = _stream(rng, (8, 8), 8)
    p = torch.nn.Parameter(torch.tensor(w0))
    opt = SOAP([p], lr=1e-2, betas=(0.9, 0.95), precondition_frequency=2, merge_dims=1, block_size=4,
               state_dtype="float64", momentum="none")
    for g in grads:
        p.grad = torch.tensor(g)
        opt.step()
    for rows in (slice(0, 4), slice(4, 8)):
        for cols in (slice(0, 4), slice(4, 8)):
            ref = reference_soap(w0[rows, cols], [g[rows, cols] for g in grads], lr=1e-2, b1=0.0, b2=0.95,
                                 eps=1e-8, wd=0.0, f=2)[-1]
            assert np.allclose(p.detach().numpy()[rows, cols], ref, rtol=0, atol=1e-11), seed


def test_fallback_tensor_is_adam():
    """A tensor above max_precond_dim falls back to Adam: the same steps as torch.optim.Adam (no momentum buffer,
    i.e. β1 = 0, so everything is float64)."""
    torch.manual_seed(random.randrange(10**6))
    p = torch.nn.Parameter(torch.randn(5, 40, dtype=torch.float64))
    q = torch.nn.Parameter(p.detach().clone())
    opt = SOAP([p], lr=1e-2, betas=(0.9, 0.99), max_precond_dim=32, merge_dims=1, state_dtype="float64",
               momentum="none")
    ref = torch.optim.Adam([q], lr=1e-2, betas=(0.0, 0.99), eps=1e-8)
    for _ in range(5):
        g = torch.randn(5, 40, dtype=torch.float64)
        p.grad, q.grad = g.clone(), g.clone()
        opt.step()
        ref.step()
    assert torch.allclose(p, q, rtol=0, atol=1e-12)


def test_soap_has_no_graft_and_labels_it():
    assert MethodConfig(method="soap", momentum="bfloat16").label() == "soap +bf16"
    assert MethodConfig(method="soap", block_size=64, packed=True).label() == "soap(B=64, packed) +fp32"


def test_soap_optax_matches_torch():
    pytest.importorskip("jax")
    pytest.importorskip("optax")

    seed = random.randrange(10**6)
    rng = np.random.default_rng(seed)
    # the first refresh at step 8, from full-rank statistics: a rank-deficient factor's null-space basis is
    # arbitrary (LAPACK's and XLA's eigh pick different ones) and SOAP's Adam scaling depends on it
    shapes = {"mat": (9, 6), "cube": (3, 4, 5), "vec": (7,), "blk": (10, 7)}
    init = {k: np.asarray(rng.standard_normal(s), np.float32) for k, s in shapes.items()}
    kw = dict(precondition_frequency=3, merge_dims=4, weight_decay=0.01, betas=(0.9, 0.95), start_preconditioning_step=8)
    tparams = {k: torch.nn.Parameter(torch.tensor(v, dtype=torch.float64)) for k, v in init.items()}
    opt = SOAP([{"params": [tparams[k]]} for k in ("mat", "cube", "vec")]
               + [{"params": [tparams["blk"]], "block_size": 4, "packed": True, "momentum": "bfloat16"}],
               lr=1e-2, **kw)
    from sketchplan.optimizers.jax import scale_by_assignment, with_learning_rate

    base = OptimizerDefaults(lr=1e-2, **kw)
    cfgs = {k: MethodConfig(method="soap") for k in ("mat", "cube", "vec")}
    cfgs["blk"] = MethodConfig(method="soap", block_size=4, packed=True, momentum="bfloat16")
    tx = with_learning_rate(scale_by_assignment(lambda name, shape: (cfgs[name], base)), base.lr, base.weight_decay)
    from jax_parity import worst_update_error

    worst = worst_update_error(opt, tparams, tx, rng, steps=15, from_step=5)
    assert worst < 1e-4, (seed, worst)


@pytest.mark.parametrize("shape,block", [((24, 40), None), ((6, 5, 4, 3), None), ((70, 9), 16), ((40,), None)])
def test_refresh_kernel_calls_are_what_the_steps_run(monkeypatch, shape, block):
    """``methods.soap.kernel_calls`` declares one ``inv_root`` (eigh or QR) per factor every
    ``precondition_frequency`` steps: count the eigh and QR calls six real steps make."""
    from collections import Counter

    from sketchplan.methods import METHOD_MODULES
    from sketchplan.optimizers.torch import soap as soap_module

    seen = Counter()
    real_eigh, real_qr = soap_module.safe_eigh, torch.linalg.qr

    def eigh(s):
        seen[((s.shape[-1],), s.shape[0])] += 1
        return real_eigh(s)

    def qr(a):
        seen[((a.shape[-1],), a.shape[0])] += 1
        return real_qr(a)

    monkeypatch.setattr(soap_module, "safe_eigh", eigh)
    monkeypatch.setattr(torch.linalg, "qr", qr)
    cfg = MethodConfig(method="soap", block_size=block)
    opts = OptimizerDefaults(precondition_frequency=2, stats_every=1)
    p = torch.nn.Parameter(torch.randn(shape))
    opt = SOAP([p], block_size=block, precondition_frequency=2)
    for i in range(6):
        p.grad = torch.randn(shape)
        opt.step()
    declared = Counter()
    for c in METHOD_MODULES["soap"].kernel_calls(shape, cfg, opts):
        if c.kernel == "inv_root":
            declared[(c.dims, c.batch)] += sum(1 for s in range(1, 7) if (s - 1) % c.every == 0)
    assert seen == declared
