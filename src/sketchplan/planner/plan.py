"""The plan file: a versioned, strictly validated pydantic schema, stored as YAML (safe loading only).

A plan names the model (source, fingerprint, parameter counts), the hardware profile used, the budget, the
optimizer defaults, one entry per parameter tensor (method and options, predicted state and workspace bytes),
the totals and the what-if totals of single-method alternatives. Unknown fields and wrong types are rejected
with a message naming the field. Files are written atomically (temporary file + rename).
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from ..files import StrictModel as _Strict
from ..files import YamlFile
from ..methods.layout import Graft, Method, MethodConfig, Momentum, OptimizerDefaults

SCHEMA_VERSION = 1


class ModelInfo(_Strict):
    source: str
    fingerprint: str = Field(description="sha256 over (name, shape, dtype, trainable) of every parameter")
    n_params: int
    n_trainable: int
    n_tensors: int
    buffers_bytes: int = 0


class Budget(_Strict):
    memory_bytes: int | None = Field(default=None, ge=0)
    reserve_bytes: int = Field(default=0, ge=0)
    time_budget_ms: float | None = None
    headroom: float = Field(default=0.0, ge=0, lt=1, description="fraction of the memory budget left free for "
                            "the allocator's fragmentation (planner.activations.DEFAULT_HEADROOM)")

    def available(self) -> int | None:
        """Bytes the predicted peak may use: the budget less the headroom fraction and the reserve."""
        if self.memory_bytes is None:
            return None
        return int(self.memory_bytes * (1 - self.headroom)) - self.reserve_bytes


class ActivationInfo(_Strict):
    """Where the plan's activation figure came from (``planner.activations``)."""

    source: Literal["fake-tensor trace", "reserve"]
    peak_bytes: int = Field(ge=0, description="high-water mark of forward + backward above parameters and "
                            "buffers (activations, gradients as backward creates them, temporaries)")
    forward_bytes: int | None = Field(default=None, description="the same at the end of the forward")
    checkpointed_peak_bytes: int | None = Field(default=None, description="the peak with activation "
                                                "checkpointing enabled, when the model supports it")
    checkpointing: bool = Field(default=False, description="whether the traced model had checkpointing on")
    retained_bytes: int = Field(default=0, ge=0, description="bytes alive after the backward besides parameters, "
                                "buffers and gradients (the batch, the outputs and loss): held during the step")
    inputs: str = Field(default="", description="the inputs traced, e.g. 'input_ids (8, 2048) int64'")


class Settings(_Strict):
    """How memory is counted: dtypes of parameters/gradients, master weights, optimizer-state sharding."""

    param_dtype: str | None = Field(default=None, description="override of every parameter's dtype")
    grad_dtype: str | None = Field(default=None, description="gradient dtype; default: the parameter's")
    master_weights: bool = False
    world_size: int = Field(default=1, ge=1)
    shard_optimizer_state: bool = False


class CandidateGrid(_Strict):
    """The candidates the plan chose from (so ``sketchplan plan --update`` can re-plan the same way)."""

    methods: list[Method]
    ranks: list[int]
    block_sizes: list[int]
    grafts: list[Graft]
    momenta: list[Momentum]


class TensorEntry(_Strict):
    """One parameter tensor and what the plan gives it (method fields are null for frozen tensors)."""

    name: str
    shape: list[int]
    dtype: str
    trainable: bool = True
    tied: list[str] = Field(default_factory=list, description="other names of this same tensor")
    method: Method | None = None
    rank: int | None = None
    block_size: int | None = None
    graft: Graft | None = None
    momentum: Momentum | None = None
    state_bytes: int = 0
    workspace_bytes: int = 0
    score: float | None = None
    step_ms: float | None = Field(default=None, description="predicted optimizer step time of this tensor, "
                                  "amortised over precondition_frequency (with the plan's hardware profile)")
    variant: dict[str, str] | None = Field(default=None, description="fastest variant per kernel on the "
                                           "profiled device (fd_update, inv_root); the optimizer runs it")

    def options(self) -> dict[str, str]:
        """The optimizer options the recorded variants set (``fd_variant``, ``root_method``)."""
        from ..kernels.calls import VARIANT_OPTIONS

        return {VARIANT_OPTIONS[k]: v for k, v in (self.variant or {}).items() if k in VARIANT_OPTIONS}

    def config(self) -> MethodConfig | None:
        if self.method is None:
            return None
        return MethodConfig(method=self.method, rank=self.rank, block_size=self.block_size,
                            graft=self.graft or "adam", momentum=self.momentum or "float32")


class Totals(_Strict):
    params_bytes: int
    grads_bytes: int
    master_bytes: int = 0
    state_bytes: int
    state_bytes_per_rank: int | None = Field(default=None, description="largest rank's share when sharded")
    workspace_bytes: int = Field(description="high-water mark of the optimizer step's transients (largest param "
                                 "group's, kernel scratch included)")
    kernel_scratch_bytes: int = Field(default=0, description="part of workspace_bytes that is kernels' internal "
                                      "scratch (eigh/SVD work buffers; a documented bound, no tensor)")
    buffers_bytes: int = Field(default=0, description="module buffers (running statistics, position tables)")
    activation_bytes: int | None = Field(default=None, description="forward+backward high-water mark above "
                                         "parameters and buffers (traced), when known")
    peak_bytes: int = Field(description="params + buffers + master + state (largest rank) + max(grads + "
                            "workspace, activation_bytes)")
    state_bytes_by_method: dict[str, int] = Field(default_factory=dict)
    step_ms: float | None = None
    score: float = Field(description="parameter-weighted preconditioning score in [0, 1]")


class WhatIf(_Strict):
    label: str
    state_bytes: int
    peak_bytes: int
    fits: bool
    score: float
    step_ms: float | None = Field(default=None, description="predicted step time with the plan's profile")


class SolverInfo(_Strict):
    status: Literal["exact", "near-exact"]
    gap: float = Field(ge=0, description="proven bound on (best possible score − this plan's score)")
    binding: str | None = None
    price_per_gib: float | None = Field(default=None, description="shadow price of memory at the optimum: score "
                                        "(parameter-weighted) gained per extra GiB")
    relax: dict[str, dict[str, float]] | None = Field(default=None, description="per binding budget: the score, "
                                                      "bytes and ms of the plan with that budget relaxed")
    seconds: float | None = None


class Plan(YamlFile):
    kind: ClassVar[str] = "plan file"
    how_to_make: ClassVar[str] = "write one with `sketchplan plan --out {path}`"
    how_to_fix: ClassVar[str] = "regenerate it with `sketchplan plan`"

    schema_version: Literal[1] = SCHEMA_VERSION
    created_by: str
    model: ModelInfo
    hardware: str | None = None
    budget: Budget
    settings: Settings = Field(default_factory=Settings)
    defaults: OptimizerDefaults = Field(default_factory=OptimizerDefaults)
    grid: CandidateGrid | None = None
    tensors: list[TensorEntry]
    totals: Totals
    what_if: list[WhatIf] = Field(default_factory=list)
    solver: SolverInfo | None = None
    activations: ActivationInfo | None = None

    def entry(self, name: str) -> TensorEntry:
        for e in self.tensors:
            if e.name == name:
                return e
        raise KeyError(name)
