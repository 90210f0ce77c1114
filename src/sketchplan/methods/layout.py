"""State layouts: the one description of what an optimizer allocates.

Every method module in ``sketchplan.methods`` exposes ``layout(shape, cfg, opts) -> list[StateTensor]``: the
exact state tensors (name, shape, dtype) that the torch optimizer and the optax transformation allocate for one
parameter of that shape. The planner counts bytes from these lists and both backends allocate from them
(``optimizers.torch.state.allocate``, ``optimizers.jax.state``), so they cannot drift apart. This module holds
the framework-neutral pieces they share: the dtype table, ``StateTensor``, the per-tensor options
(``MethodConfig``) and the optimizer-wide options (``OptimizerDefaults``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

#: Bytes per element of every dtype a plan may name.
DTYPE_BYTES: dict[str, int] = {
    "float64": 8,
    "float32": 4,
    "bfloat16": 2,
    "float16": 2,
    "int64": 8,
    "int32": 4,
    "int8": 1,
    "uint8": 1,
    "bool": 1,
    "float8_e4m3fn": 1,
    "float8_e5m2": 1,
    "complex64": 8,
    "complex128": 16,
}

METHODS = ("adam", "shampoo", "blocked_shampoo", "sketchy", "extreme_tensoring", "kradagrad",
           "soap",  # issue 19b
           # issue 19 part A: the diagonal/orthogonalising methods people pick instead
           "adafactor", "lion", "muon")
Method = Literal["adam", "shampoo", "blocked_shampoo", "sketchy", "extreme_tensoring", "kradagrad",
                 "soap",  # issue 19b
                 # issue 19 part A
                 "adafactor", "lion", "muon"]
#: The grafts the planner offers by default; ``none`` (no grafting: the matrix direction at its own scale, as in
#: the papers' and reference implementations' ungrafted Shampoo and Sketchy) is accepted everywhere too.
GRAFTS = ("adam", "rmsprop", "adafactor", "sgd")
ALL_GRAFTS = GRAFTS + ("none",)
Graft = Literal["adam", "rmsprop", "adafactor", "sgd", "none"]
MOMENTA = ("none", "float32", "bfloat16")
#: every momentum storage a plan may name: ``MOMENTA`` and 8-bit blockwise (``methods.compression``)
ALL_MOMENTA = MOMENTA + ("int8",)
Momentum = Literal["none", "float32", "bfloat16", "int8"]
#: storage of the second moments (``methods.compression``)
COMPRESSIONS = ("none", "bfloat16", "int8")
Compress = Literal["none", "bfloat16", "int8"]
#: Methods that precondition with Kronecker-factored matrices (they take grafting and momentum options).
MATRIX_METHODS = ("shampoo", "blocked_shampoo", "sketchy", "kradagrad",
                  "soap")  # issue 19b
#: Methods whose symmetric d×d statistics may be stored as packed triangles (``MethodConfig.packed``, issue 19b;
#: ``methods.packing``).
PACKABLE_METHODS = ("shampoo", "blocked_shampoo", "kradagrad", "soap")


def dtype_bytes(dtype: str) -> int:
    """Bytes per element of ``dtype`` (a name such as ``"float32"``)."""
    try:
        return DTYPE_BYTES[dtype]
    except KeyError:
        raise ValueError(f"unknown dtype {dtype!r}; use one of {', '.join(DTYPE_BYTES)}") from None


@dataclass(frozen=True)
class StateTensor:
    """One tensor an optimizer allocates for one parameter: its state-dict key, shape and dtype."""

    name: str
    shape: tuple[int, ...]
    dtype: str

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.numel * dtype_bytes(self.dtype)


def total_bytes(tensors: list[StateTensor]) -> int:
    return sum(t.nbytes for t in tensors)


class MethodConfig(BaseModel):
    """What one parameter tensor gets: the method and its per-tensor options (one planner candidate).

    ``rank`` is Sketchy's sketch rank k; ``block_size`` is the block size B of blocked Shampoo (and optionally
    Sketchy); ``graft`` is the diagonal method whose step size the matrix direction adopts (and the fallback
    direction for tensors a matrix method cannot precondition), or ``none`` (no grafting: the preconditioned
    direction unscaled; the fallback direction is then the gradient itself); ``momentum`` is the dtype of the momentum
    buffer or ``none`` (or ``int8``: 8-bit blockwise, ``methods.compression``); ``compress`` stores the second
    moments (Adam's ``exp_avg_sq``, the adam/rmsprop graft) in ``bfloat16`` or ``int8`` (``methods.compression``).
    ``packed`` stores the method's symmetric d×d factors as packed upper triangles of d(d+1)/2 elements
    (``methods.packing``; Shampoo, blocked Shampoo, KrADagrad and SOAP).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    method: Method
    rank: int | None = Field(default=None, gt=0)
    block_size: int | None = Field(default=None, gt=0)
    graft: Graft = "adam"
    momentum: Momentum = "float32"
    compress: Compress = "none"
    # structure of the tensor (methods.blocking rule 3): leading axes that index independent matrices (stacked
    # experts), and fused segment sizes along matrix axis ``split_axis`` (gate|up, q|k|v); the planner sets them
    batch_dims: int = Field(default=0, ge=0)
    splits: tuple[int, ...] | None = None
    split_axis: int = Field(default=0, ge=0)
    # issue 19b: symmetric factors stored as packed triangles (methods.packing)
    packed: bool = False

    @model_validator(mode="after")
    def _check(self) -> "MethodConfig":
        if self.method == "sketchy" and self.rank is None:
            raise ValueError("method sketchy needs a rank")
        if self.method != "sketchy" and self.rank is not None:
            raise ValueError(f"method {self.method} takes no rank")
        if self.method == "blocked_shampoo" and self.block_size is None:
            raise ValueError("method blocked_shampoo needs a block_size")
        if self.method in ("adam", "shampoo", "extreme_tensoring", "adafactor", "lion", "muon") \
                and self.block_size is not None:
            raise ValueError(f"method {self.method} takes no block_size")
        if self.packed and self.method not in PACKABLE_METHODS:  # issue 19b
            raise ValueError(f"method {self.method} has no symmetric factors to pack; packed applies to "
                             f"{', '.join(PACKABLE_METHODS)}")
        return self

    def label(self) -> str:
        """Short human label, e.g. ``sketchy(k=256) +adafactor/bf16``."""
        inner = []
        if self.rank is not None:
            inner.append(f"k={self.rank}")
        if self.block_size is not None:
            inner.append(f"B={self.block_size}")
        if self.batch_dims and self.method in MATRIX_METHODS:
            inner.append("per expert")
        if self.splits and self.method in MATRIX_METHODS:
            inner.append("split " + "|".join(map(str, self.splits)))
        if self.packed:  # issue 19b
            inner.append("packed")
        text = self.method + (f"({', '.join(inner)})" if inner else "")
        if self.method == "soap":  # issue 19b: no graft (Adam in the eigenbasis)
            text += " +" + {"none": "nomom", "float32": "fp32", "bfloat16": "bf16", "int8": "m8"}[self.momentum]
        elif self.method in MATRIX_METHODS:
            mom = {"none": "nomom", "float32": "fp32", "bfloat16": "bf16", "int8": "m8"}[self.momentum]
            text += f" +{self.graft}/{mom}"
        elif self.method in ("extreme_tensoring", "adafactor") and self.momentum != "none":
            text += " +" + {"float32": "fp32", "bfloat16": "bf16", "int8": "m8"}[self.momentum]
        elif self.method in ("adam", "lion", "muon") and self.momentum != "float32":
            text += " +" + {"none": "nomom", "bfloat16": "bf16", "int8": "m8"}[self.momentum]
        if self.compress != "none":
            text += " +v:" + {"bfloat16": "bf16", "int8": "8bit"}[self.compress]
        return text


class OptimizerDefaults(BaseModel):
    """Options shared by every tensor of a plan (hyper-parameters and the shape rules of docs/algorithms.md, Shapes).

    - ``lr``, ``betas`` (β1 for momentum, β2 for second moments; β2 = 1 means a running sum), ``eps``,
      ``weight_decay`` (decoupled, AdamW-style).
    - ``state_dtype``: dtype of statistics, roots, sketches and graft moments (momentum has its own option).
    - ``merge_dims``: adjacent dimensions are merged while their product stays ≤ this (docs/algorithms.md, Shapes).
    - ``max_precond_dim``: a merged dimension above this is not preconditioned by a full (unblocked) factor;
      the tensor falls back to its graft method.
    - ``precondition_frequency``: inverse roots are recomputed every this many steps.
    - ``stats_every``: matrix statistics (Sketchy: its FD sketch) are updated every this many steps, the sampled
      gradient standing for the skipped ones (step skipping; 1 = every step).
    - ``shampoo_eps``: the matrix methods' ridge ε: Shampoo's (S + εI), Sketchy's (ρ + ε), KrADagrad's
      initial inverse statistic I/ε.
    - ``start_preconditioning_step``: before this step the graft direction is used as is; roots are refreshed at
      this step and every ``precondition_frequency`` steps after it. ``-1`` (the default, DistributedShampoo's
      rule) means ``precondition_frequency`` for the methods with stored roots (Shampoo, blocked Shampoo,
      KrADagrad), so the first root is built from that many gradients instead of one, and 1 for Sketchy
      (which applies its sketch afresh every step). 0 and 1 both mean the first step.
    - ``et_max_dim``: extreme tensoring splits each natural axis into near-equal factors ≤ this
      (0 means no tensoring: one mode over the flattened tensor, i.e. diagonal AdaGrad).
    - ``kradagrad_variant``: ``star`` (both modes each step) or ``mm`` (one mode per step).
    - ``nesterov``: Nesterov momentum (β1 m + (1−β1) D instead of m) for the matrix methods and extreme
      tensoring.
    - ``root_method``: how Shampoo computes inverse roots: ``eigh`` (float64 retry) or ``newton`` (coupled
      Newton iteration).
    - ``epsilon_mode``: how ``shampoo_eps`` regularises the eigenvalues λ of a statistic before its inverse root
      (``EPSILON_MODES``): ``absolute`` max(λ, 0) + ε; ``relative`` max(λ, 0) + ε·λ_max (ε alone when
      λ_max ≤ 0; the Sketchy reference's default); ``shift`` λ − min(λ_min, 0) + ε (DistributedShampoo's
      rule: a negative rounding eigenvalue lifts the whole spectrum). Sketchy's sketch eigenvalues σ² + ρ are
      never negative, so ``shift`` is ``absolute`` there; KrADagrad takes positive powers and ignores it.
    - ``fd_variant``: Sketchy's FD-update kernel (``kernels.torch.frequent_directions``); ``auto`` is ``subspace``
      (warm-started subspace iteration, O(d·(k+n)·k)) where its flops are under 0.7× the thin SVD's, else ``svd``
      (accurate; the Gram variants square the conditioning and run only when named).
    - ``batch_blocks``: whether the blocks of different tensors of a param group whose factor problems have the
      same size share one batched kernel call (Sketchy's FD updates, Shampoo's eigh roots: ``methods.batching``):
      ``auto`` caps a call at the blocks its largest member brings (so its inputs and workspace are at most that
      member's own), ``all`` makes one call per problem size, ``none`` steps tensor by tensor.
    - ``lion_betas``: Lion's (β1, β2) (Chen et al. 2023: 0.9, 0.99); Lion's step is lr · lion_lr_ratio.
    - ``muon_momentum`` (μ, 0.95), ``ns_steps`` (5): Muon's momentum and Newton–Schulz iterations; Muon's step is
      lr · 0.2·√max(m, n) (Liu et al. 2025, "Muon is scalable": matches AdamW's update RMS, so it shares lr and
      weight decay with AdamW).
    - Every method keeps an int32 counter ``nonfinite_skips`` of gradients it replaced by zeros because they
      held a NaN or Inf.
    - ``nonfinite_guard``: whether that check runs: ``auto`` (default), ``true`` or ``false``. It is one read of
      every gradient per step — about a quarter of a fused Adam step's time (``benchmarks/results/step_time.md``).
      ``auto`` runs it in an optimizer (a torch optimizer, an optax transformation, a plan) that holds a matrix
      method (``MATRIX_METHODS``: one non-finite gradient would leave NaN in factor statistics that an eigh or an
      inverse root then reads, failing or poisoning every later preconditioner) and skips it where every tensor is
      elementwise (Adam, Lion, Adafactor, Muon, extreme tensoring: the NaN reaches the state as in torch's and
      optax's own optimizers, at their speed) — ``guard_runs``; false leaves the gradients as they are for loops
      that already check, e.g. ``GradScaler`` or a clipped global norm tested with ``isfinite``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    lr: float = Field(default=1e-3, gt=0)
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = Field(default=1e-8, ge=0)
    weight_decay: float = Field(default=0.0, ge=0)
    state_dtype: Literal["float32", "float64", "bfloat16"] = "float32"
    merge_dims: int = Field(default=1024, ge=1)
    max_precond_dim: int = Field(default=8192, ge=1)
    precondition_frequency: int = Field(default=10, ge=1)
    stats_every: int = Field(default=1, ge=1)
    start_preconditioning_step: int = Field(default=-1, ge=-1)
    shampoo_eps: float = Field(default=1e-12, ge=0)
    et_max_dim: int = Field(default=64, ge=0)
    kradagrad_variant: Literal["star", "mm"] = "star"
    nesterov: bool = False
    root_method: Literal["eigh", "newton"] = "eigh"
    fd_variant: Literal["auto", "svd", "gram_small", "gram_large", "qr_svd", "subspace"] = "auto"
    epsilon_mode: Literal["absolute", "relative", "shift"] = "relative"
    batch_blocks: Literal["auto", "all", "none"] = "auto"
    # issue 19 part A: Lion and Muon
    lion_betas: tuple[float, float] = (0.9, 0.99)
    lion_lr_ratio: float = Field(default=0.3, gt=0)
    muon_momentum: float = Field(default=0.95, ge=0, lt=1)
    ns_steps: int = Field(default=5, ge=1, le=100)
    nonfinite_guard: Literal["auto"] | bool = "auto"

    @model_validator(mode="after")
    def _check(self) -> "OptimizerDefaults":
        b1, b2 = self.betas
        if not (0 <= b1 < 1 and 0 < b2 <= 1):
            raise ValueError("betas must satisfy 0 <= beta1 < 1 and 0 < beta2 <= 1")
        l1, l2 = self.lion_betas
        if not (0 <= l1 < 1 and 0 <= l2 < 1):
            raise ValueError("lion_betas must satisfy 0 <= beta1 < 1 and 0 <= beta2 < 1")
        return self

    def guard_runs(self, methods) -> bool:
        """Whether the non-finite guard runs in an optimizer whose tensors use ``methods`` (names): ``auto`` when
        any of them is a matrix method (``MATRIX_METHODS``), else as set. One answer for the whole optimizer, so
        that a bad gradient is skipped by every tensor or by none."""
        if self.nonfinite_guard == "auto":
            return any(m in MATRIX_METHODS for m in methods)
        return bool(self.nonfinite_guard)

    def with_guard_for(self, methods) -> "OptimizerDefaults":
        """These options with ``nonfinite_guard`` resolved (``guard_runs``) for an optimizer over ``methods``: what
        the step model (``kernel_calls``) and the backends read."""
        run = self.guard_runs(methods)
        return self if self.nonfinite_guard is run else self.model_copy(update={"nonfinite_guard": run})


EPSILON_MODES = ("absolute", "relative", "shift")

#: Name of the per-tensor counter of skipped non-finite gradients (int32 scalar, every method).
SKIP_COUNTER = StateTensor("nonfinite_skips", (), "int32")
