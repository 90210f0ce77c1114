"""SOAP in torch (Vyas et al. 2024): Adam in the eigenbasis of Shampoo's factors. The math, the state layout,
the workspace replay and the kernel calls are in ``methods.soap``; the statistics update is Shampoo's.
"""

from __future__ import annotations

import torch

from ...kernels.torch.roots import qr_q, safe_eigh
from ...methods.blocking import config_plan, plan_partition
from ...methods.common import bias_correction, ema_weights, stats_weights
from ...methods.layout import MethodConfig, OptimizerDefaults
from ...methods.soap import layout
from .base import MethodRule, SketchplanOptimizer, register
from .common import apply_momentum, apply_update
from .matrix import from_blocks, mode_apply, to_blocks, unfold


def rotate(state: dict, g: int, blocks: torch.Tensor, into: bool) -> torch.Tensor:
    """X ×_1 Q_1ᵀ … ×_k Q_kᵀ (``into`` the eigenbasis) or X ×_1 Q_1 … ×_k Q_k (back), batched over the group."""
    x = blocks
    for i in range(blocks.dim() - 1):
        q = state[f"blocks{g}.basis{i}"]
        x = mode_apply(x, i, lambda y, q=q: torch.bmm(q.mT if into else q, y))
    return x


def adam_direction(m: torch.Tensor, v: torch.Tensor, bc1: float, bc2: float, eps: float) -> torch.Tensor:
    """(m / (1−β1ᵗ)) / (√(v / (1−β2ᵗ)) + ε)."""
    return (m / bc1) / (v / bc2).sqrt_().add_(eps)


class SoapRule(MethodRule):
    """SOAP's step (``methods.soap``): the update in the rotated space, then the statistics and the basis."""

    layout = staticmethod(layout)

    def init_state(self, state, shape, cfg, opts):
        """Q_i = I before the first refresh (the first steps are Adam steps)."""
        for name, t in state.items():
            if ".basis" in name:
                t.copy_(torch.eye(t.shape[-1], dtype=t.dtype, device=t.device).expand_as(t))

    def step_param(self, p: torch.Tensor, grad: torch.Tensor, state: dict, cfg: MethodConfig,
                   opts: OptimizerDefaults) -> None:
        step = state["step"]
        beta1, beta2 = opts.betas
        g = grad.to(getattr(torch, opts.state_dtype))
        m = apply_momentum(state, g, beta1, opts.nesterov)
        bc1 = bias_correction(beta1, step) if "momentum" in state else 1.0
        bc2 = bias_correction(beta2, step)
        decay, weight = ema_weights(beta2)
        mp = config_plan(tuple(p.shape), cfg, opts)
        if mp.fallback is not None:
            v = state["exp_avg_sq"]
            v.mul_(decay).addcmul_(g, g, value=weight)
            direction = adam_direction(m, v, bc1, bc2, opts.eps)
            apply_update(p, direction, opts.lr, opts.weight_decay)
            return
        groups = plan_partition(mp)
        g_blocks = to_blocks(g.reshape(mp.merged), groups)
        self.update(p, state, g_blocks, to_blocks(m.reshape(mp.merged), groups), mp, groups, bc1, bc2, opts)
        del m
        if (step - 1) % opts.stats_every == 0:
            sdecay, sweight = stats_weights(beta2, opts.stats_every)
            for gi, gb in enumerate(g_blocks):
                for i in range(gb.dim() - 1):
                    x = unfold(gb, i)
                    state[f"blocks{gi}.stat{i}"].baddbmm_(x, x.mT, beta=sdecay, alpha=sweight)
                    del x
        start = max(1, opts.start_preconditioning_step)
        if step >= start and (step - start) % opts.precondition_frequency == 0:
            for gi in range(len(groups)):
                self.refresh_basis(state, gi, mp.order, first=step == start)

    def update(self, p, state, g_blocks, m_blocks, mp, groups, bc1, bc2, opts) -> None:
        """V ← β2 V + (1−β2) G'², N = Q (M'/√V) Qᵀ per group, then the step (module ``methods.soap``)."""
        decay, weight = ema_weights(opts.betas[1])
        d_blocks = []
        for gi, (gb, mb) in enumerate(zip(g_blocks, m_blocks)):
            gp = rotate(state, gi, gb, into=True)
            v = state[f"blocks{gi}.exp_avg_sq"]
            v.mul_(decay).addcmul_(gp, gp, value=weight)
            del gp
            mr = rotate(state, gi, mb, into=True)
            n = adam_direction(mr, v, bc1, bc2, opts.eps)
            del mr
            d_blocks.append(rotate(state, gi, n, into=False))
            del n
        del m_blocks
        direction = from_blocks(d_blocks, groups, mp.merged).reshape(p.shape)
        del d_blocks
        apply_update(p, direction, opts.lr, opts.weight_decay)

    def refresh_basis(self, state: dict, g: int, order: int, first: bool) -> None:
        """Q_i ← eigenvectors of L_i (``first``), else one power-iteration step and QR with the estimated
        eigenvalues sorted and V permuted alike (``methods.soap``). A failed eigh or a non-finite QR keeps Q_i."""
        v = state[f"blocks{g}.exp_avg_sq"]
        for i in range(order):
            stat, basis = state[f"blocks{g}.stat{i}"], state[f"blocks{g}.basis{i}"]
            if first:
                dec = safe_eigh(stat)
                if dec is not None:
                    basis.copy_(dec[1].flip(-1))
                del dec
                continue
            lq = torch.bmm(stat, basis)
            est = (basis * lq).sum(dim=-2)
            idx = est.argsort(dim=-1, descending=True)
            del est
            d = basis.shape[-1]
            power = lq.gather(-1, idx[:, None, :].expand(-1, d, -1))
            del lq
            q = qr_q(power)
            if bool(torch.isfinite(q.sum())):
                basis.copy_(q)
                shape = [1] * v.dim()
                shape[0], shape[i + 1] = idx.shape[0], d
                v.copy_(v.gather(i + 1, idx.reshape(shape).expand(v.shape)))
            del q, power, idx


class SOAP(SketchplanOptimizer):
    """SOAP (Vyas et al. 2024, "SOAP: Improving and Stabilizing Shampoo using Adam"): Adam in the eigenbasis of
    Shampoo's Kronecker factors, the basis refreshed every ``precondition_frequency`` steps (eigh the first time,
    then one power-iteration step and QR). See ``methods.soap`` for the algorithm and the state.

    Args:
        params: tensors or param-group dicts.
        lr: learning rate η; betas: (β1, β2) of the moments and of the factors L, R (the paper uses 0.95, 0.95);
        eps: Adam's ε; weight_decay: decoupled λ.
        block_size: optional block size B (blocks as blocked Shampoo's).
        momentum: dtype of the first moment M (``float32``, ``bfloat16``) or ``none`` (M = G).
        packed: store the statistics L, R as packed triangles (``methods.packing``).
        precondition_frequency: f, the steps between basis refreshes (default 10).
        merge_dims, max_precond_dim, stats_every, start_preconditioning_step, state_dtype: as for Shampoo.
    """

    def __init__(self, params, lr: float = 3e-3, betas: tuple[float, float] = (0.95, 0.95),
                 block_size: int | None = None, momentum: str = "float32", packed: bool = False, **options):
        cfg = MethodConfig(method="soap", block_size=block_size, momentum=momentum, packed=packed)
        super().__init__(params, cfg, OptimizerDefaults(lr=lr, betas=betas, **options))


register("soap", SoapRule())
