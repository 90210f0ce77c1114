"""The torch optimizer shared by every method: param groups that each carry a method and its options.

A param group holds every field of ``MethodConfig`` (method, rank, block_size, graft, momentum) and of
``OptimizerDefaults`` (lr, betas, eps, ...), so one ``SketchplanOptimizer`` can run different methods on
different tensors (``factory.build_optimizer``) while LR schedulers, ``zero_grad``, ``state_dict`` and
``torch.amp.GradScaler`` see an ordinary ``torch.optim.Optimizer``. The per-method classes (``Adam``,
``Shampoo``, ``Sketchy``, ...) are this optimizer with one group default.

Each method registers a ``MethodRule`` (its update rule). State is allocated lazily, on a tensor's first step,
from the method's layout (``state.allocate``) — nothing else is kept per tensor except the Python int ``step``
and, in a group with ``master_weights=True``, the fp32 master copy of each 16-bit (bfloat16/float16) parameter,
``state[p]["master"]`` (Micikevicius et al. 2018, "Mixed precision training"): such a parameter is stepped one
tensor at a time on its master, with its gradient cast to float32, and the master is written back rounded to the
parameter's dtype. The master is part of ``state_dict()`` (so checkpoints resume bit-exact) but not of the
method's layout: the planner counts it as master weights (``planner.memory.Precision.master_bytes``).
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager
from typing import Callable, Iterable

import torch

from ...methods import plain_layout, state_layout
from ...methods.compression import is_compressed, plain_config
from ...methods.layout import MethodConfig, OptimizerDefaults, StateTensor
from ...methods import initial_identity
from ...methods.common import GRAD_SQNORM_LIMIT
from .state import allocate, set_identities

METHOD_KEYS = tuple(MethodConfig.model_fields)
DEFAULT_KEYS = tuple(OptimizerDefaults.model_fields)
#: The state key of a parameter's fp32 master copy, and the parameter dtypes that get one.
MASTER_KEY = "master"
MASTER_DTYPES = (torch.bfloat16, torch.float16)


def method_state_bytes(state: dict) -> int:
    """Bytes of a parameter's optimizer state as the method's layout counts them (the master copy excluded)."""
    return sum(v.numel() * v.element_size() for k, v in state.items() if torch.is_tensor(v) and k != MASTER_KEY)


class MethodRule:
    """One method's update rule: its layout, optional state initialisation, and its step over tensors."""

    layout: Callable[[tuple[int, ...], MethodConfig, OptimizerDefaults], list[StateTensor]]

    def init_state(self, state: dict, shape: tuple[int, ...], cfg: MethodConfig, opts: OptimizerDefaults) -> None:
        """Fill freshly allocated state where neither zero nor ``methods.initial_identity`` is the right start."""

    def begin(self, opt: "SketchplanOptimizer", params: list[torch.Tensor], cfg: MethodConfig,
              opts: OptimizerDefaults) -> tuple[list[dict], list[torch.Tensor]]:
        """What every step starts with: each tensor's state (allocated on first use), its step count advanced,
        and the gradients through the non-finite guard (``SketchplanOptimizer.sanitize``)."""
        states = [opt.state_for(p, cfg, opts) for p in params]
        for s in states:
            s["step"] += 1
        grads = opt.sanitize([p.grad for p in params], [s["nonfinite_skips"] for s in states],
                             states[0]["step"], opts)
        return states, grads

    def step(self, opt: "SketchplanOptimizer", params: list[torch.Tensor], cfg: MethodConfig,
             opts: OptimizerDefaults) -> None:
        """One tensor at a time, so that each tensor's temporaries are gone before the next one's (the workspace
        replays of ``methods.<method>.workspace_bytes`` assume it), with packed factors unpacked around it
        (``packing.unpacked_state``; the state itself when nothing is packed)."""
        from .packing import unpacked_state

        states, grads = self.begin(opt, params, cfg, opts)
        for p, g, s in zip(params, grads, states):
            with unpacked_state(s, cfg, opts) as work:
                self.step_param(p, g, work, cfg, opts)

    def step_param(self, p: torch.Tensor, grad: torch.Tensor, state: dict, cfg: MethodConfig,
                   opts: OptimizerDefaults) -> None:
        """One tensor's update from its sanitised gradient (the rules that step per tensor define it)."""
        raise NotImplementedError


RULES: dict[str, MethodRule] = {}


def register(method: str, rule: MethodRule) -> None:
    RULES[method] = rule


def group_options(cfg: MethodConfig, opts: OptimizerDefaults) -> dict:
    """The param-group entries for one (method config, defaults) pair."""
    return {**cfg.model_dump(), **opts.model_dump()}


def group_config(group: dict) -> tuple[MethodConfig, OptimizerDefaults]:
    """Inverse of ``group_options``: the validated method config and defaults of a param group. A key the group
    lacks takes its field's default: a state dict saved before an option existed (e.g. ``nonfinite_guard``) loads
    and steps (``torch.optim.Optimizer.load_state_dict`` keeps the saved groups' keys only)."""
    cfg = MethodConfig(**{k: group[k] for k in METHOD_KEYS if k in group})
    opts = OptimizerDefaults(**{k: (tuple(group[k]) if k == "betas" else group[k]) for k in DEFAULT_KEYS
                                if k in group})
    return cfg, opts


#: The guard compares norms with √``GRAD_SQNORM_LIMIT`` = 2⁵⁰: the test ‖g‖² ≤ 2¹⁰⁰ up to one float32 rounding of
#: the square root (2⁵⁰ is a float), and a float32 ‖g‖² that overflows makes ‖g‖ Inf too.
GRAD_NORM_LIMIT = GRAD_SQNORM_LIMIT**0.5

#: On CPU a float32 gradient of at least this many elements is read by a dot product (MKL's, on both cores of the
#: reference 2-core CPU: 1.1x the single-threaded norm kernel's speed at 2¹⁶ elements, 1.5-1.8x from 2¹⁷ on;
#: at 2¹⁴-2¹⁵ the norm is faster, the dot's threads cost more than they save); the others share one
#: ``torch._foreach_norm`` call (no per-tensor reshape and dispatch from Python: the 98 vectors of GPT-2's
#: 12 blocks in 0.28 ms, 0.44 ms by dots).
DOT_MIN_NUMEL = 2**16

#: Whether this torch's ``_foreach_norm`` takes ``dtype`` (torch 2.4 and later; a float16 gradient's norm needs
#: it: float16 tops out at 65504). Without it every gradient takes the dot product (``_guard_norms``).
_FOREACH_NORM_DTYPE = any(a.name == "dtype" for a in torch.ops.aten._foreach_norm.Scalar._schema.arguments)


def _by_dot(g: torch.Tensor) -> bool:
    """Whether the guard reads ``g`` by a dot product (``_guard_norms``) rather than in a shared norm call."""
    return (g.dtype == torch.float64 or not _FOREACH_NORM_DTYPE
            or (g.device.type == "cpu" and g.dtype == torch.float32 and g.numel() >= DOT_MIN_NUMEL))


def _guard_norms(grads: list[torch.Tensor]) -> tuple[torch.Tensor, list[int]]:
    """(‖g‖ of every gradient, stacked; ``order``: entry k is ``grads[order[k]]``'s). One read of each gradient,
    accumulated in float32 (float64 for a float64 gradient, its ‖g‖² then rounded to float32): NaN and ±Inf
    propagate, and a norm whose float32 square overflows is Inf.

    First the gradients read by a dot product (``_by_dot``: large float32 ones on CPU, float64 ones; the stack's
    square root turns their ‖g‖² into ‖g‖), then the others in one ``torch._foreach_norm`` per dtype (one
    multi-tensor kernel each on accelerators): a bfloat16 gradient's norm accumulates in float32 and comes back
    in bfloat16 (float32's range; on CPU 1.7-2x as fast as asking for a float32 result and 1.3-2.5x as fast as
    the float32 copy and dot it replaces), a float16 one's is asked for in float32. The stack is float32
    (bfloat16 when every norm is). Transients: at most a 4-byte scalar per tensor and their stack (8 bytes per
    tensor; a float64 dot's 8-byte result lives until its float32 rounding), within the 16 per tensor the
    workspace replays allow (``methods.adam.group_workspace_bytes``)."""
    dot = [_by_dot(g) for g in grads]
    order = [i for i, d in enumerate(dot) if d]
    vals = []
    for i in order:
        flat = grads[i].reshape(-1)
        if flat.dtype not in (torch.float32, torch.float64):  # 16-bit, on a torch whose _foreach_norm has no dtype
            flat = flat.float()
        sq = torch.dot(flat, flat)
        vals.append(sq if sq.dtype == torch.float32 else sq.float())
        del flat, sq
    n_dot = len(order)
    by_dtype: dict[torch.dtype, list[int]] = {}
    for i, d in enumerate(dot):
        if not d:
            by_dtype.setdefault(grads[i].dtype, []).append(i)
    for dtype, idx in by_dtype.items():
        vals += torch._foreach_norm([grads[i] for i in idx], 2,
                                    dtype=torch.float32 if dtype == torch.float16 else None)
        order += idx
    norms = torch.stack(vals)
    del vals
    if n_dot:
        norms[:n_dot].sqrt_()
    return norms, order


def _flags_on_host(device: torch.device) -> bool:
    """Whether ``sanitize`` reads the guard's flags back (CPU: nothing to wait for) or keeps them on the device."""
    return device.type == "cpu"


class SketchplanOptimizer(torch.optim.Optimizer):
    """A ``torch.optim.Optimizer`` whose param groups each name a method (see module docstring).

    ``params``: tensors or param-group dicts (a dict may override any MethodConfig/OptimizerDefaults field);
    ``cfg`` and ``opts`` give the defaults of every group.
    """

    def __init__(self, params: Iterable, cfg: MethodConfig, opts: OptimizerDefaults, master_weights: bool = False):
        self._key: dict[int, torch.Tensor] = {}  # id(a tensor stepped in a parameter's place) → the parameter
        defaults = group_options(cfg, opts)
        defaults["master_weights"] = master_weights
        super().__init__(params, defaults)
        self._warned_nonfinite = False

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if params:
                cfg, opts = group_config(group)
                for batch in self.master_batches(params, group):
                    with self.on_masters(batch, group) as views:
                        if is_compressed(cfg):
                            self._step_compressed(views, cfg, opts)
                        else:
                            RULES[cfg.method].step(self, views, cfg, opts)
        return loss

    # ---- master weights (module docstring) ----

    def wants_master(self, group: dict, p: torch.Tensor) -> bool:
        return bool(group.get("master_weights")) and p.dtype in MASTER_DTYPES

    def master_batches(self, params: list[torch.Tensor], group: dict) -> list[list[torch.Tensor]]:
        """The parameters in the batches they are stepped in: 16-bit ones with a master copy one at a time (one
        fp32 gradient copy alive at a time), the others together."""
        plain = [p for p in params if not self.wants_master(group, p)]
        return ([plain] if plain else []) + [[p] for p in params if self.wants_master(group, p)]

    def master_of(self, p: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
        """The fp32 master copy of ``p`` (the parameter or its local shard), kept in ``state[key]``; made from
        ``p`` on first use."""
        state = self.state[key]
        if MASTER_KEY not in state:
            state[MASTER_KEY] = p.detach().to(torch.float32, copy=True)
        return state[MASTER_KEY]

    @contextmanager
    def on_masters(self, params: list[torch.Tensor], group: dict, keys: list[torch.Tensor] | None = None):
        """Yield the tensors a rule steps in place of ``params``: each 16-bit parameter's fp32 master, its
        ``.grad`` the parameter's gradient cast to float32, keyed to the parameter's state (``keys``: the tensors
        that key it, default ``params``); the others themselves. Afterwards the masters are written back, rounded
        to the parameter's dtype."""
        keys = keys or params
        views, pairs = [], []
        for p, key in zip(params, keys):
            if not self.wants_master(group, p):
                views.append(p)
                continue
            m = self.master_of(p, key)
            m.grad = p.grad.to(torch.float32)
            self._key[id(m)] = key
            views.append(m)
            pairs.append((p, m))
        try:
            yield views
            for p, m in pairs:
                p.copy_(m)
        finally:
            for _, m in pairs:
                m.grad = None
                self._key.pop(id(m), None)

    def allocate_masters(self) -> None:
        """Allocate every master copy this process keeps (checkpoint loading)."""
        for group in self.param_groups:
            for p in group["params"]:
                if self.wants_master(group, p):
                    self.master_of(p, p)

    def _step_compressed(self, params: list[torch.Tensor], cfg: MethodConfig, opts: OptimizerDefaults) -> None:
        """Compressed state (``methods.compression``): one tensor at a time, its stored moments decoded for the
        method's rule, which runs on the plain configuration, and encoded back."""
        from .compressed import decoded

        plain = plain_config(cfg)
        for p in params:
            state = self.state_for(p, cfg, opts)
            with decoded(state, plain_layout(tuple(p.shape), cfg, opts), cfg):
                RULES[cfg.method].step(self, [p], plain, opts)

    def state_for(self, p: torch.Tensor, cfg: MethodConfig, opts: OptimizerDefaults) -> dict:
        """The state of ``p``, allocated from the method's layout on first use."""
        param = self.state_key(p)
        state = self.state[param]
        if "step" not in state:
            rule = RULES[cfg.method]
            shape = tuple(p.shape)
            state.update(allocate(self.local_layout(param, state_layout(shape, cfg, opts)), p.device))
            set_identities(state, initial_identity(shape, cfg, opts))
            rule.init_state(state, shape, cfg, opts)
            state["step"] = 0
        return state

    def state_key(self, p: torch.Tensor) -> torch.Tensor:
        """The tensor that keys ``p``'s state: the parameter itself, or the parameter whose master copy or local
        shard (the distributed optimizer) ``p`` is."""
        return self._key.get(id(p), p)

    def local_layout(self, param: torch.Tensor, layout: list[StateTensor]) -> list[StateTensor]:
        """The part of ``layout`` this process keeps (all of it; the distributed optimizer keeps its blocks)."""
        return layout

    def allocate_state(self) -> None:
        """Allocate (zeros) the state of every parameter, as its first step would (checkpoint loading)."""
        for group in self.param_groups:
            cfg, opts = group_config(group)
            for p in group["params"]:
                self.state_for(p, cfg, opts)
        self.allocate_masters()

    def sanitize(self, grads: list[torch.Tensor], skips: list[torch.Tensor], step: int,
                 opts: OptimizerDefaults) -> list[torch.Tensor]:
        """Gradients with any non-finite or overflowing tensor replaced by zeros; each such tensor adds 1 to its
        skip counter.

        A tensor is skipped when its float32 squared norm ‖g‖² is NaN, infinite or above
        ``methods.common.GRAD_SQNORM_LIMIT`` (2¹⁰⁰, ‖g‖ > 1.1e15), i.e. when its float32 norm is not at most
        ``GRAD_NORM_LIMIT`` = 2⁵⁰: NaN and ±Inf propagate into it, and a finite but huge gradient (1e20 in one
        element) would overflow g², G Gᵀ or the graft's moments and leave Inf in the state for good. A zeroed
        gradient leaves the statistics unchanged except for their decay (an all-zero gradient is harmless in
        every method), so the state stays finite. Whether it runs is one answer for the whole optimizer
        (``OptimizerDefaults.guard_runs`` over its groups' methods: ``auto`` runs it when any group is a matrix
        method; with only elementwise ones the gradients pass as in torch's AdamW). One read of each gradient (``_guard_norms``: one
        ``torch._foreach_norm`` over the small ones, a dot per large float32 one on CPU), their norms stacked
        and compared at once.
        On CPU the flags are read directly (no device to wait for) and only a skipped tensor's counter is
        touched; on accelerators the counters take one multi-tensor add, a skipped gradient is zeroed in place
        (``masked_fill_`` with the flag: no host sync, no copy, but the caller's ``p.grad`` holds the zeros), and
        the warning waits for a step that is a multiple of ``precondition_frequency`` (one scalar
        read then: the only host sync of a diagonal method's step).
        """
        if not opts.guard_runs(g["method"] for g in self.param_groups):  # off, or auto without a matrix method
            return grads
        norms, order = _guard_norms(grads)
        if _flags_on_host(grads[0].device):
            fine = (norms <= GRAD_NORM_LIMIT).tolist()
            del norms
            if all(fine):
                return grads
            out = list(grads)
            for i, ok in zip(order, fine):
                if not ok:
                    skips[i].add_(1)
                    out[i] = torch.zeros_like(grads[i])
            self._warn_nonfinite()
            return out
        bad = ~(norms <= GRAD_NORM_LIMIT)
        del norms
        torch._foreach_add_([skips[i] for i in order], list(bad.to(torch.int32).unbind()))
        if not self._warned_nonfinite and step % opts.precondition_frequency == 0:
            if bool(torch.stack(skips).sum() > 0):
                self._warn_nonfinite()
        for i, b in zip(order, bad.unbind()):  # in place: no gradient-sized copy (none in the replays either)
            grads[i].masked_fill_(b, 0)
        return grads

    def _warn_nonfinite(self) -> None:
        if not self._warned_nonfinite:
            self._warned_nonfinite = True
            warnings.warn("sketchplan: a gradient held NaN or Inf (or its squared norm exceeded 1.3e30); that tensor's statistics update was skipped "
                          "(counted in the state's 'nonfinite_skips'). Warning once.", RuntimeWarning,
                          stacklevel=3)

    def load_state_dict(self, state_dict: dict) -> None:
        """As ``torch.optim.Optimizer.load_state_dict``, but every state tensor keeps its saved dtype.

        (torch casts floating state to the parameter's dtype, which would turn float32 statistics of a bf16
        parameter into bf16 and the int32 skip counter into a float.)
        """
        super().load_state_dict(state_dict)
        saved = state_dict["state"]
        ids = [i for g in state_dict["param_groups"] for i in g["params"]]
        params = [p for g in self.param_groups for p in g["params"]]
        for i, p in zip(ids, params):
            for key, value in saved.get(i, {}).items():
                if torch.is_tensor(value):
                    self.state[p][key] = value.to(device=p.device, copy=True)
