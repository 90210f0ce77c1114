"""The step shared by the Kronecker-factored methods (Shampoo, blocked Shampoo, Sketchy, KrADagrad).

Per parameter (docs/algorithms.md, Shapes, Shampoo, Grafting and momentum):

1. non-finite gradients are replaced by zeros and counted (``SketchplanOptimizer.sanitize``);
2. the graft's direction A is computed (``common.graft_direction``: adam, rmsprop, adafactor, sgd; none: A = G);
3. the gradient is reshaped to its merged shape and cut into blocks; blocks of one shape are stacked
   (count, *block_shape) so that every kernel below is batched over the blocks of a group;
4. the method updates its statistics every step (``update_statistics``) and, every ``precondition_frequency``
   steps counted from ``start_preconditioning_step``, its roots (``refresh_roots``);
5. from ``start_preconditioning_step`` on, the preconditioned direction D of each block is norm-grafted
   (unless ``graft="none"``),
   D ← D · ‖A‖_F / ‖D‖_F (Agarwal, Anil, Hazan, Koren & Zhang 2020, "Disentangling adaptive gradient methods
   from learning rates"); before it, and for tensors that cannot be preconditioned (scalars, a dimension above
   ``max_precond_dim``), D = A;
6. EMA momentum (optionally Nesterov), decoupled weight decay and the step (``common``).

Across tensors (``step``, ``methods.batching``): in a param group of several tensors whose blocks pose factor
problems of one size, the method's batched kernel (``batched_kernel``: Sketchy's FD update every step, Shampoo's
eigh root every refresh) runs once for all of them, between a first pass over the tensors (their statistics, or
the stacked unfoldings the FD update consumes) and a second (each tensor's direction and update, as above).

Host synchronisation: none in steps that do not refresh roots (CPU aside, where reading a flag costs nothing);
refreshing roots reads back whether eigh succeeded (eigh synchronises on accelerators anyway).
"""

from __future__ import annotations

from typing import Callable

import torch

from ...methods import METHOD_MODULES
from ...methods.batching import Batch, group_batches, may_batch, shares_calls
from ...methods.blocking import BlockGroup, MatrixPlan
from ...methods.blocking import config_plan, plan_partition
from ...methods.common import preconditioning_start
from ...methods.layout import MethodConfig, OptimizerDefaults
from .base import MethodRule
from .common import apply_momentum, apply_update, graft_direction

_TINY = 1e-30


def to_blocks(t: torch.Tensor, groups: tuple[BlockGroup, ...]) -> list[torch.Tensor]:
    """Stack the blocks of each group: one (count, *block_shape) tensor per group (a view for a single block)."""
    if len(groups) == 1 and groups[0].count == 1:
        return [t.unsqueeze(0)]
    return [torch.stack([t[s] for s in g.slices]) for g in groups]


def from_blocks(blocks: list[torch.Tensor], groups: tuple[BlockGroup, ...], shape: tuple[int, ...]) -> torch.Tensor:
    """Inverse of ``to_blocks``."""
    if len(groups) == 1 and groups[0].count == 1:
        return blocks[0][0]
    out = blocks[0].new_empty(shape)
    for g, b in zip(groups, blocks):
        for j, s in enumerate(g.slices):
            out[s] = b[j]
    return out


def unfold(blocks: torch.Tensor, axis: int) -> torch.Tensor:
    """Mode-``axis`` unfolding of stacked blocks (count, d_1..d_k) → (count, d_axis, ∏_{j≠axis} d_j)."""
    moved = blocks.movedim(axis + 1, 1)
    return moved.reshape(moved.shape[0], moved.shape[1], -1)


def mode_apply(blocks: torch.Tensor, axis: int, fn: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """Apply a batched linear map ``fn`` (count, d, m) → (count, d, m) along mode ``axis``: G ×_axis P."""
    moved = blocks.movedim(axis + 1, 1)
    out = fn(moved.reshape(moved.shape[0], moved.shape[1], -1))
    return out.reshape(moved.shape).movedim(1, axis + 1)


def graft_blocks(d: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """Per block: D · ‖A‖_F / (‖D‖_F + tiny)."""
    dims = tuple(range(1, d.dim()))
    scale = torch.linalg.vector_norm(a, dim=dims) / (torch.linalg.vector_norm(d, dim=dims) + _TINY)
    return d * scale.reshape((-1,) + (1,) * len(dims))


class MatrixRule(MethodRule):
    """Base rule of the matrix methods (module docstring). Subclasses define the three hooks below; state
    names are ``blocks{g}.<name>{i}`` for block group g and axis i (see each method's ``layout``)."""

    #: Whether the method keeps roots refreshed every ``precondition_frequency`` steps (``preconditioning_start``).
    stored_roots = True

    def update_statistics(self, state: dict, g: int, grad_blocks: torch.Tensor, step: int, cfg: MethodConfig,
                          opts: OptimizerDefaults) -> None:
        raise NotImplementedError

    def refresh_roots(self, state: dict, g: int, order: int, opts: OptimizerDefaults) -> None:
        """Recompute stored roots (nothing to do for methods that apply their statistics directly)."""

    def precondition(self, state: dict, g: int, grad_blocks: torch.Tensor, opts: OptimizerDefaults) -> torch.Tensor:
        raise NotImplementedError

    #: The work one batched call does for the blocks of several tensors (``step``): ``"stats"`` (the statistics
    #: update of every due step; Sketchy's FD update), ``"roots"`` (the root refresh; Shampoo's eigh), or None.
    batched_kernel: str | None = None

    def run_batch(self, batch: Batch, states: list[dict], grads: list[torch.Tensor], plans: list[MatrixPlan],
                  cfg: MethodConfig, opts: OptimizerDefaults) -> None:
        """One batched call over the members of ``batch`` (``batched_kernel``'s work, written to each state)."""
        raise NotImplementedError

    def stats_due(self, state: dict, opts: OptimizerDefaults) -> bool:
        return (state["step"] - 1) % opts.stats_every == 0

    def refresh_due(self, state: dict, opts: OptimizerDefaults) -> bool:
        start = preconditioning_start(opts, self.stored_roots)
        step = state["step"]
        return self.stored_roots and step >= start and (step - start) % opts.precondition_frequency == 0

    def step(self, opt, params, cfg, opts):
        """Tensor by tensor (``MethodRule.step``), unless the method batches a kernel across the tensors of the
        group and some batch has more than one member (module docstring): then a first pass does what precedes
        the batched kernel, the batches run, and a second pass steps each tensor without redoing them."""
        if self.batched_kernel is None or not may_batch(len(params), cfg, opts):
            return super().step(opt, params, cfg, opts)
        states, grads = self.begin(opt, params, cfg, opts)
        plans = [config_plan(tuple(p.shape), cfg, opts) for p in params]
        if self.batched_kernel == "stats":
            due = [self.stats_due(s, opts) for s in states]
        else:
            due = [self.refresh_due(s, opts) for s in states]
        batches = group_batches(METHOD_MODULES[cfg.method], tuple(tuple(p.shape) for p in params),
                                tuple(str(p.dtype).removeprefix("torch.") for p in params), tuple(due), cfg, opts)
        if not shares_calls(batches):
            for p, g, s in zip(params, grads, states):
                self.step_param(p, g, s, cfg, opts)
            return
        if self.batched_kernel == "roots":  # the statistics of this step go into the roots
            for g, s, mp, d in zip(grads, states, plans, due):
                if d and mp.fallback is None and self.stats_due(s, opts):
                    self.tensor_statistics(g, s, mp, cfg, opts)
        for b in batches:
            self.run_batch(b, states, grads, plans, cfg, opts)
        for p, g, s, d in zip(params, grads, states, due):
            if self.batched_kernel == "stats":
                self.step_param(p, g, s, cfg, opts, stats_done=d)
            else:
                self.step_param(p, g, s, cfg, opts, stats_done=d, refreshed=d)

    def tensor_statistics(self, grad: torch.Tensor, state: dict, mp: MatrixPlan, cfg: MethodConfig,
                          opts: OptimizerDefaults) -> None:
        """The statistics update of one tensor, as ``step_param`` makes it (the first pass of ``step``)."""
        g = grad.to(getattr(torch, opts.state_dtype))
        for gi, gb in enumerate(to_blocks(g.reshape(mp.merged), plan_partition(mp))):
            self.update_statistics(state, gi, gb, state["step"], cfg, opts)

    def step_param(self, p: torch.Tensor, grad: torch.Tensor, state: dict, cfg: MethodConfig,
                   opts: OptimizerDefaults, stats_done: bool = False, refreshed: bool = False) -> None:
        step = state["step"]
        g = grad.to(getattr(torch, opts.state_dtype))
        a = graft_direction(state, g, cfg.graft, opts, step)
        mp = config_plan(tuple(p.shape), cfg, opts)
        direction = a
        if mp.fallback is None:
            groups = plan_partition(mp)
            g_blocks = to_blocks(g.reshape(mp.merged), groups)
            if not stats_done and self.stats_due(state, opts):
                for gi, gb in enumerate(g_blocks):
                    self.update_statistics(state, gi, gb, step, cfg, opts)
            start = preconditioning_start(opts, self.stored_roots)
            if step >= start:
                refresh = not refreshed and (step - start) % opts.precondition_frequency == 0
                a_blocks = to_blocks(a.reshape(mp.merged), groups)
                d_blocks = []
                for gi, (gb, ab) in enumerate(zip(g_blocks, a_blocks)):
                    if refresh:
                        self.refresh_roots(state, gi, mp.order, opts)
                    d = self.precondition(state, gi, gb, opts)
                    d_blocks.append(d if cfg.graft == "none" else graft_blocks(d, ab))
                    del d  # the ungrafted direction must not live through the next group's refresh
                direction = from_blocks(d_blocks, groups, mp.merged).reshape(p.shape)
        update = apply_momentum(state, direction, opts.betas[0], opts.nesterov)
        apply_update(p, update, opts.lr, opts.weight_decay)


MATRIX_OPTIONS_DOC = """
    Options shared by the matrix methods (keyword arguments, fields of ``OptimizerDefaults``):
        lr: learning rate η (default 1e-3).
        betas: (β1, β2): β1 is the momentum EMA, β2 the decay of the statistics and of the graft's second
            moments (β2 = 1: running sums, as in the papers; default (0.9, 0.999)).
        eps: ε of the graft's denominator (default 1e-8).
        shampoo_eps: the matrix ridge ε (default 1e-12).
        weight_decay: decoupled weight decay λ (default 0).
        graft: diagonal method whose per-block step norm the direction adopts, and the direction before
            ``start_preconditioning_step`` and for tensors that cannot be preconditioned: ``adam``, ``rmsprop``,
            ``adafactor`` (sublinear memory), ``sgd`` (no memory) or ``none`` (no grafting: the preconditioned
            direction at its own scale, as the papers and reference implementations define Shampoo and Sketchy;
            the direction without a preconditioner is then G).
        momentum: momentum buffer dtype ``float32``, ``bfloat16`` or ``none``; nesterov: Nesterov momentum.
        precondition_frequency: roots are recomputed every this many steps (default 10).
        stats_every: statistics (Sketchy: the FD sketch) are updated every this many steps, from the gradient of
            that step standing for the skipped ones (step skipping, Sketchy paper App. F; default 1).
        start_preconditioning_step: before this step the graft direction is used as is (default −1:
            ``precondition_frequency`` for methods with stored roots, 1 for Sketchy).
        merge_dims, max_precond_dim: the shape rules of docs/algorithms.md, Shapes (defaults 1024 and 8192).
        state_dtype: dtype of statistics, roots, sketches and graft moments (default float32).
"""
