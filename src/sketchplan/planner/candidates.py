"""Candidate configurations per tensor and their exact costs (from the optimizers' layouts).

A candidate is a ``MethodConfig``: method, rank or block size, graft and momentum (grafting and momentum are
part of a candidate because they dominate memory once the preconditioner is sublinear). For each distinct
(shape, dtype) the planner evaluates every candidate once — bytes from ``methods.state_layout``, workspace
from ``methods.workspace_bytes``, score from ``planner.quality``, and with a hardware profile the predicted
amortised step time (``planner.timing``) — and drops candidates that another beats or ties on all of them.
Time is part of the dominance test: without it Adam (more bytes than a sublinear Sketchy, a lower score) would
be pruned before the time budget is considered, and the fastest plan would be lost.

Tensors without elements (a zero-sized dimension) have nothing to precondition: every candidate on them is
Adam, whose moments are empty. Blocked candidates that would cut one axis into more than
``MAX_BLOCKS_PER_AXIS`` blocks, and candidates needing more than 2^63 bytes, are not offered (no device runs
them); Adam, a fallback every grid can name, is offered instead when nothing else is left.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from ..errors import UserError
from ..methods import METHOD_MODULES, state_layout, total_bytes, workspace_bytes
from ..methods.layout import ALL_GRAFTS, ALL_MOMENTA, COMPRESSIONS, GRAFTS, MOMENTA, MethodConfig, OptimizerDefaults
from . import quality
from ..validate import MAX_BYTES

DEFAULT_METHODS = ("adam", "shampoo", "blocked_shampoo", "sketchy")
DEFAULT_RANKS = (16, 32, 64, 128, 256, 512)
DEFAULT_BLOCK_SIZES = (256, 512, 1024, 2048, 4096)
DEFAULT_GRAFTS = GRAFTS
DEFAULT_MOMENTA = ("none", "float32", "bfloat16")
#: Storage of the second moments offered by default: uncompressed (``--compress none,bfloat16,int8`` and
#: ``--momenta ...,int8`` offer bfloat16 and 8-bit blockwise state; ``methods.compression``).
DEFAULT_COMPRESS = ("none",)


@dataclass(frozen=True)
class Candidate:
    cfg: MethodConfig
    state_bytes: int
    workspace_bytes: int
    score: float
    time_ms: float = 0.0  # predicted amortised step time (0 without a hardware profile)
    device_bytes: int | None = None  # on a mesh: the state bytes of the device holding most (planner.mesh)

    @property
    def budget_bytes(self) -> int:
        """The bytes the memory budget sees: the largest device's on a mesh, else the whole state."""
        return self.state_bytes if self.device_bytes is None else self.device_bytes


def check_grid(methods, ranks, block_sizes, grafts, momenta, compress=DEFAULT_COMPRESS) -> None:
    """Reject unknown methods, grafts, momenta and non-positive ranks or block sizes with one sentence."""
    for m in methods:
        if m not in METHOD_MODULES:
            raise UserError(f"unknown method {m!r}; choose from {', '.join(METHOD_MODULES)}.")
    for r in ranks:
        if not isinstance(r, int) or r <= 0:
            raise UserError(f"rank {r!r} is not a positive integer; give ranks like --ranks 64,128,256.")
    for b in block_sizes:
        if not isinstance(b, int) or b <= 0:
            raise UserError(f"block size {b!r} is not a positive integer; give sizes like --block-sizes 512,1024.")
    for g in grafts:
        if g not in ALL_GRAFTS:
            raise UserError(f"unknown graft {g!r}; choose from {', '.join(ALL_GRAFTS)}.")
    for m in momenta:
        if m not in ALL_MOMENTA:
            raise UserError(f"unknown momentum {m!r}; choose from {', '.join(ALL_MOMENTA)}.")
    for c in compress:
        if c not in COMPRESSIONS:
            raise UserError(f"unknown compression {c!r}; choose from {', '.join(COMPRESSIONS)} (--compress).")
    if not compress:
        raise UserError("no second-moment storage to choose from; give --compress none (or bfloat16, int8).")
    if not methods:
        raise UserError("no methods to choose from; give at least one with --methods.")
    if "sketchy" in methods and not ranks:
        raise UserError("method sketchy needs at least one rank; give --ranks.")
    if "blocked_shampoo" in methods and not block_sizes:
        raise UserError("method blocked_shampoo needs at least one block size; give --block-sizes.")


def candidate_configs(methods=DEFAULT_METHODS, ranks=DEFAULT_RANKS, block_sizes=DEFAULT_BLOCK_SIZES,
                      grafts=DEFAULT_GRAFTS, momenta=DEFAULT_MOMENTA, compress=DEFAULT_COMPRESS) -> list[MethodConfig]:
    """Every configuration of the grid: each method's ``grid(ranks, block_sizes)`` (``sketchplan.methods``;
    e.g. Sketchy runs unblocked and inside every block size larger than k) × momenta (× grafts for the matrix
    methods) × second-moment storage (``compress``, where the configuration has a second moment to store)."""
    check_grid(methods, ranks, block_sizes, grafts, momenta, compress)
    out: list[MethodConfig] = []
    for m in methods:
        mod = METHOD_MODULES[m]
        grid = mod.grid(tuple(ranks), tuple(block_sizes))  # the method's own per-tensor options
        if mod.MATRIX and getattr(mod, "GRAFTED", True):
            out += [MethodConfig(method=m, graft=g, momentum=mo, **s) for s in grid for g in grafts for mo in momenta]
        else:
            out += [MethodConfig(method=m, momentum=mo, **s) for s in grid for mo in momenta]
    if tuple(compress) != ("none",):  # issue 19 part A: the storage of the second moments, where there is one
        out = [c.model_copy(update={"compress": v}) for c in out for v in compress
               if v == "none" or _has_second_moment(c)]
    if "none" not in compress:
        out = [c for c in out if c.compress != "none" or not _has_second_moment(c)]
    return out


def _has_second_moment(cfg: MethodConfig) -> bool:
    """Whether ``compress`` changes anything for ``cfg``: Adam and Muon (its AdamW part), or an adam/rmsprop
    graft of a matrix method."""
    if cfg.method in ("adam", "muon"):
        return True
    return METHOD_MODULES[cfg.method].MATRIX and cfg.graft in ("adam", "rmsprop")


def evaluate(shape: tuple[int, ...], cfg: MethodConfig, opts: OptimizerDefaults, spectrum=None) -> Candidate:
    """Exact bytes, workspace and score of one candidate on one shape (``spectrum``: measured, optional).
    On a tensor without elements every candidate is Adam (module docstring)."""
    if _empty(shape):
        cfg = ADAM
    return Candidate(cfg, total_bytes(state_layout(shape, cfg, opts)), workspace_bytes(shape, cfg, opts),
                     quality.score(shape, cfg, opts, spectrum))


def candidates_for(shape: tuple[int, ...], configs: list[MethodConfig], opts: OptimizerDefaults,
                   spectrum=None, timer=None, device_bytes=None) -> list[Candidate]:
    """Evaluated candidates for ``shape``, without duplicates and without dominated ones (in bytes, workspace,
    score and, with ``timer`` (``planner.timing.StepTimer``), predicted step time), sorted by bytes.
    ``device_bytes``: on a mesh, config → the largest device's state bytes; domination then compares those."""
    seen: dict[tuple, Candidate] = {}
    if _empty(shape):
        configs = [ADAM]
    allowed = [cfg for cfg in configs if offered(shape, cfg, opts)] or [ADAM]
    for cfg in allowed:
        c = evaluate(shape, cfg, opts, spectrum)
        if c.state_bytes > MAX_BYTES or c.workspace_bytes > MAX_BYTES:
            continue
        if timer is not None:
            ms, picks = timer(shape, cfg)
            c = replace(c, time_ms=ms, workspace_bytes=_picked_workspace(shape, c, opts, picks))
        if device_bytes is not None:
            c = replace(c, device_bytes=device_bytes(c.cfg))
        key = (c.budget_bytes, c.state_bytes, c.workspace_bytes, round(c.score, 12), round(c.time_ms, 9))
        if key not in seen:  # the first config in grid order wins a tie (simplest: lower rank/block first)
            seen[key] = c
    if not seen:
        c = evaluate(shape, ADAM, opts, spectrum)
        if timer is not None:
            c = replace(c, time_ms=timer(shape, ADAM)[0])
        if device_bytes is not None:
            c = replace(c, device_bytes=device_bytes(c.cfg))
        seen[(c.budget_bytes, c.state_bytes, c.workspace_bytes, round(c.score, 12), round(c.time_ms, 9))] = c
    cands = sorted(seen.values(), key=lambda c: (c.budget_bytes, c.workspace_bytes, -c.score))
    kept: list[Candidate] = []
    for c in cands:
        if any(o.budget_bytes <= c.budget_bytes and o.workspace_bytes <= c.workspace_bytes and o.score >= c.score
               and o.time_ms <= c.time_ms for o in kept):
            continue
        kept.append(c)
    return kept


def _picked_workspace(shape: tuple[int, ...], c: Candidate, opts: OptimizerDefaults, picks: dict) -> int:
    """The workspace with the kernel variants the timer picked (the plan records them and the optimizer runs
    them, e.g. Sketchy's ``gram_small`` FD update, whose transients differ from the default's): at least the
    default's, so the solver never under-counts what ``step_workspace`` later reports."""
    from ..kernels.calls import VARIANT_OPTIONS

    update = {VARIANT_OPTIONS[k]: v for k, v in picks.items()
              if k in VARIANT_OPTIONS and getattr(opts, VARIANT_OPTIONS[k]) != v}
    if not update:
        return c.workspace_bytes
    return max(c.workspace_bytes, workspace_bytes(shape, c.cfg, opts.model_copy(update=update)))


ADAM = MethodConfig(method="adam")
#: blocked candidates cutting one (merged) axis into more blocks than this are not offered
MAX_BLOCKS_PER_AXIS = 2**13


def _empty(shape: tuple[int, ...]) -> bool:
    return any(d == 0 for d in shape)


def offered(shape: tuple[int, ...], cfg: MethodConfig, opts: OptimizerDefaults) -> bool:
    """False for a blocked candidate with more than ``MAX_BLOCKS_PER_AXIS`` blocks on an axis (listing them
    would cost more time and memory than the plan is worth; no such blocking is sensible)."""
    if cfg.block_size is None:
        return True
    from ..methods.blocking import merged_shape

    return all(-(-d // cfg.block_size) <= MAX_BLOCKS_PER_AXIS for d in merged_shape(tuple(shape), opts.merge_dims))
