"""The plan file: a versioned, strictly validated pydantic schema, stored as YAML (safe loading only).

A plan names the model (source, fingerprint, parameter counts), the hardware profile used, the budget, the
optimizer defaults, one entry per parameter tensor (method and options, predicted state and workspace bytes),
the totals and the what-if totals of single-method alternatives. Unknown fields and wrong types are rejected
with a message naming the field and the accepted range: byte counts and counts are non-negative integers,
floats are finite, scores lie in [0, 1], shapes and dtypes are ones a device could hold (``validate``). Files are
written atomically (``outputs``).
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field
from pydantic import field_validator, model_serializer, model_validator
from typing import get_args
from typing import Annotated

from ..files import StrictModel as _Strict
from ..files import YamlFile
from ..methods.layout import Compress, Graft, Method, MethodConfig, Momentum, OptimizerDefaults
from ..validate import MAX_BYTES, MAX_COUNT, MAX_DIM, MAX_INT, MAX_WORLD_SIZE

SCHEMA_VERSION = 1

#: a computed byte count or element count (sums over many tensors; exact integers)
Count = Annotated[int, Field(ge=0, le=MAX_COUNT)]
#: a size a user gives (budget, reserve)
Size = Annotated[int, Field(ge=0, le=MAX_BYTES)]
Dim = Annotated[int, Field(ge=0, le=MAX_DIM)]
Positive = Annotated[int, Field(gt=0, le=MAX_INT)]
Score = Annotated[float, Field(ge=0, le=1)]
Millis = Annotated[float, Field(ge=0)]
#: one dimension of a JAX partition spec: not split, one mesh axis, or several (first name major)
SpecEntry = str | list[str] | None


def _omit_none(data, fields: tuple[str, ...]):
    """Drop the optional fields (a mesh's, ZeRO's) that are unset, so plans made without them stay as they were."""
    if isinstance(data, dict):
        for f in fields:
            if data.get(f) is None:
                data.pop(f, None)
    return data


def _known_dtype(v: str | None) -> str | None:
    from ..methods.layout import DTYPE_BYTES

    if v is not None and v not in DTYPE_BYTES:
        raise ValueError(f"unknown dtype {v!r}; use one of {', '.join(DTYPE_BYTES)}")
    return v


class ModelInfo(_Strict):
    source: str
    fingerprint: str = Field(description="sha256 over (name, shape, dtype, trainable) of every parameter")
    n_params: Count
    n_trainable: Count
    n_tensors: Count
    buffers_bytes: Count = 0


class Budget(_Strict):
    memory_bytes: Size | None = None
    reserve_bytes: Size = 0
    time_budget_ms: float | None = Field(default=None, gt=0)
    time_budget_source: str | None = None  # "--time-budget-ms" or the default bound's rule (planner.time_bound)
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
    peak_bytes: Count = Field( description="high-water mark of forward + backward above parameters and "
                            "buffers (activations, gradients as backward creates them, temporaries)")
    forward_bytes: Count | None = Field(default=None, description="the same at the end of the forward")
    checkpointed_peak_bytes: Count | None = Field(default=None, description="the peak with activation "
                                                "checkpointing enabled, when the model supports it")
    checkpointing: bool = Field(default=False, description="whether the traced model had checkpointing on")
    retained_bytes: Count = Field(default=0, description="bytes alive after the backward besides parameters, "
                                "buffers and gradients (the batch, the outputs and loss): held during the step")
    inputs: str = Field(default="", description="the inputs traced, e.g. 'input_ids (8, 2048) int64'")


class Settings(_Strict):
    """How memory is counted: dtypes of parameters/gradients, master weights, optimizer-state sharding."""

    param_dtype: str | None = Field(default=None, description="override of every parameter's dtype")
    grad_dtype: str | None = Field(default=None, description="gradient dtype; default: the parameter's")
    master_weights: bool = False
    world_size: int = Field(default=1, ge=1, le=MAX_WORLD_SIZE)
    shard_optimizer_state: bool = Field(default=False, description="plans before 0.2: ZeRO-1 (now parallelism "
                                        "zero1)")
    parallelism: Literal["none", "ddp", "zero1", "zero2", "fsdp", "hsdp"] = "none"
    shard_group: int | None = Field(default=None, ge=1, le=MAX_WORLD_SIZE,
                                    description="HSDP: ranks a parameter is sharded over")
    mesh: dict[str, Annotated[int, Field(ge=1, le=2**20)]] | None = Field(
        default=None, description="JAX device mesh the plan is for, axis → size in mesh order (planner.mesh); "
        "budget and per-device figures are one device's")

    _dtypes = field_validator("param_dtype", "grad_dtype")(_known_dtype)

    @model_serializer(mode="wrap")
    def _omit_unset_mesh(self, handler):
        return _omit_none(handler(self), ("mesh",))


class CandidateGrid(_Strict):
    """The candidates the plan chose from (so ``sketchplan plan --update`` can re-plan the same way)."""

    methods: list[Method]
    ranks: list[Positive]
    block_sizes: list[Positive]
    grafts: list[Graft]
    momenta: list[Momentum]
    compress: list[Compress] = Field(default_factory=lambda: ["none"])

    @model_serializer(mode="wrap")
    def _omit_default_compress(self, handler):
        data = handler(self)
        if isinstance(data, dict) and data.get("compress") == ["none"]:
            data.pop("compress", None)
        return data


class TensorEntry(_Strict):
    """One parameter tensor and what the plan gives it (method fields are null for frozen tensors)."""

    name: str
    shape: list[Dim]
    dtype: str
    trainable: bool = True
    tied: list[str] = Field(default_factory=list, description="other names of this same tensor")
    method: Method | None = None
    rank: Positive | None = None
    block_size: Positive | None = None
    graft: Graft | None = None
    momentum: Momentum | None = None
    compress: Compress = Field(default="none", description="storage of the second moments (methods.compression)")
    batch_dims: int = Field(default=0, ge=0, description="leading axes indexing independent matrices (stacked "
                            "experts)")
    splits: list[int] | None = Field(default=None, description="fused segment sizes along split_axis (gate|up)")
    split_axis: int = Field(default=0, ge=0)
    packed: bool = Field(default=False, description="symmetric factors stored as packed triangles (issue 19b); "
                         "written only when set")
    state_bytes: Count = Field(default=0, description="optimizer state of this tensor (under FSDP/HSDP: of its "
                               "shard on rank 0, the largest)")
    workspace_bytes: Count = 0
    score: Score | None = None
    step_ms: Millis | None = Field(default=None, description="predicted optimizer step time of this tensor, "
                                   "amortised over precondition_frequency (with the plan's hardware profile)")
    variant: dict[str, str] | None = Field(default=None, description="fastest variant per kernel on the "
                                           "profiled device (fd_update, inv_root); the optimizer runs it")
    owners: list[int] | None = Field(default=None, description="DDP/ZeRO: the rank that keeps and computes each "
                                     "preconditioner block, in flat block order (methods.placement)")
    owner: int | None = Field(default=None, ge=0, description="ZeRO: the rank that keeps this tensor's element-wise "
                              "state (moments, graft, momentum) and computes its update")
    excluded: str | None = Field(default=None, description="why this trainable tensor gets no optimizer from "
                                 "sketchplan (e.g. a complex dtype); written only when set")
    spec: list[SpecEntry] | None = Field(default=None, description="mesh plans: the parameter's partition spec "
                                         "([] replicated); written only with a mesh")
    device_state_bytes: Count | None = Field(default=None, description="mesh plans: this tensor's optimizer state "
                                             "on the device holding most of it (planner.mesh)")

    _dtype = field_validator("dtype")(_known_dtype)

    @model_validator(mode="after")
    def _consistent(self) -> "TensorEntry":
        """The method's options are a valid configuration, and recorded kernel variants are ones the optimizer
        runs (a plan is built into an optimizer without further checks)."""
        if self.method is not None:
            try:
                self.config()
            except ValueError as exc:
                errs = getattr(exc, "errors", None)
                why = errs()[0]["msg"].removeprefix("Value error, ") if callable(errs) else str(exc)
                raise ValueError(f"tensor {self.name!r}: {why}") from None
        from ..kernels.calls import VARIANT_OPTIONS

        for kernel, value in (self.variant or {}).items():
            option = VARIANT_OPTIONS.get(kernel)
            allowed = get_args(OptimizerDefaults.model_fields[option].annotation) if option else ()
            if allowed and value not in allowed:
                raise ValueError(f"variant {kernel}: {value!r} is not one of {', '.join(allowed)}")
        return self

    @model_serializer(mode="wrap")
    def _omit_unset_exclusion(self, handler):
        data = handler(self)
        if isinstance(data, dict) and data.get("excluded") is None:
            data.pop("excluded", None)  # plans without exclusions stay as they were
        if isinstance(data, dict) and not data.get("packed"):
            data.pop("packed", None)  # issue 19b: plans without packed factors stay as they were
        if isinstance(data, dict) and data.get("compress") == "none":
            data.pop("compress", None)  # and so do plans without compressed state
        return _omit_none(data, ("spec", "device_state_bytes"))

    def options(self) -> dict[str, str]:
        """The optimizer options the recorded variants set (``fd_variant``, ``root_method``)."""
        from ..kernels.calls import VARIANT_OPTIONS

        return {VARIANT_OPTIONS[k]: v for k, v in (self.variant or {}).items() if k in VARIANT_OPTIONS}

    def config(self) -> MethodConfig | None:
        if self.method is None:
            return None
        return MethodConfig(method=self.method, rank=self.rank, block_size=self.block_size,
                            graft=self.graft or "adam", momentum=self.momentum or "float32",
                            compress=self.compress,
                            batch_dims=self.batch_dims, splits=tuple(self.splits) if self.splits else None,
                            split_axis=self.split_axis, packed=self.packed)


class Totals(_Strict):
    params_bytes: Count
    grads_bytes: Count
    master_bytes: Count = 0
    state_bytes: Count
    state_bytes_per_rank: Count | None = Field(default=None, description="largest rank's share when sharded")
    workspace_bytes: Count = Field(description="high-water mark of the optimizer step's transients (largest param "
                                   "group's, kernel scratch included)")
    kernel_scratch_bytes: Count = Field(default=0, description="part of workspace_bytes that is kernels' internal "
                                        "scratch (eigh/SVD work buffers; a documented bound, no tensor)")
    buffers_bytes: Count = Field(default=0, description="module buffers (running statistics, position tables)")
    activation_bytes: Count | None = Field(default=None, description="forward+backward high-water mark above "
                                           "parameters and buffers (traced), when known")
    peak_bytes: Count = Field(description="params + buffers + master + state (largest rank) + max(grads + "
                              "workspace, activation_bytes) (+ per-rank communication buffers; with world size > 1 "
                              "every term is the largest rank's)")
    state_bytes_by_method: dict[str, Count] = Field(default_factory=dict)
    state_bytes_by_rank: list[Count] | None = Field(default=None, description="optimizer state of each rank "
                                                    "(of one shard group under FSDP/HSDP)")
    params_bytes_per_rank: Count | None = None
    grads_bytes_per_rank: Count | None = Field(default=None, description="largest rank's gradients after backward "
                                               "(ZeRO-2: the gradients of the tensors it owns)")
    master_bytes_per_rank: Count | None = None
    grads_bytes_by_rank: list[Count] | None = Field(default=None, description="ZeRO-1/2: each rank's gradients "
                                                    "after backward (ZeRO-2: its owned tensors')")
    master_bytes_by_rank: list[Count] | None = Field(default=None, description="ZeRO-1/2: each rank's fp32 master "
                                                     "copies (its owned tensors')")
    comm_bytes_per_rank: Count | None = Field(default=None, description="communication buffers: DDP buckets, "
                                              "FSDP2 all-gather/reduce-scatter, the direction exchange")
    peak_bytes_per_rank: Count | None = None
    params_bytes_per_device: Count | None = Field(default=None, description="mesh plans: parameters on one device "
                                                  "(split like their specs)")
    grads_bytes_per_device: Count | None = None
    master_bytes_per_device: Count | None = None
    state_bytes_per_device: Count | None = Field(default=None, description="mesh plans: optimizer state of the "
                                                 "device holding most, the int32 step count included")
    state_bytes_by_device: list[Count] | None = Field(default=None, description="mesh plans: optimizer state of "
                                                      "each device, in the mesh's row-major device order")
    step_ms: Millis | None = None
    adam_step_ms: Millis | None = Field(default=None, description="all-Adam's predicted step on the same profile")
    forward_backward_ms: Millis | None = Field(default=None, description="predicted forward+backward of one "
                                               "training step, 6·N·tokens FLOPs (planner.time_bound)")
    tokens_per_step: Count | None = Field(default=None, description="tokens per step behind forward_backward_ms")
    score: Score = Field(description="parameter-weighted preconditioning score in [0, 1]")

    @model_serializer(mode="wrap")
    def _omit_unset(self, handler):
        # plans made without a mesh (or without ZeRO) stay as they were
        return _omit_none(handler(self), ("params_bytes_per_device", "grads_bytes_per_device",
                                          "master_bytes_per_device", "state_bytes_per_device",
                                          "state_bytes_by_device", "grads_bytes_by_rank", "master_bytes_by_rank"))


class WhatIf(_Strict):
    label: str
    state_bytes: Count
    peak_bytes: Count
    fits: bool
    score: Score
    step_ms: Millis | None = Field(default=None, description="predicted step time with the plan's profile")


class SolverInfo(_Strict):
    status: Literal["exact", "near-exact"]
    gap: float = Field(ge=0, description="proven bound on (best possible score − this plan's score)")
    binding: str | None = None
    price_per_gib: float | None = Field(default=None, description="shadow price of memory at the optimum: score "
                                        "(parameter-weighted) gained per extra GiB")
    relax: dict[str, dict[str, float]] | None = Field(default=None, description="per binding budget: the score, "
                                                      "bytes and ms of the plan with that budget relaxed")
    #: how long the solve took: shown, never written (a re-plan from the same inputs is byte-identical)
    seconds: float | None = Field(default=None, ge=0, exclude=True)


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

    @model_validator(mode="after")
    def _mesh_specs_fit(self) -> "Plan":
        """A mesh plan's specs name its axes and divide their dimensions (``methods.mesh_placement``), and it has
        one per-device figure per device: a hand-edited plan fails here, not inside JAX."""
        mesh = self.settings.mesh
        if mesh is None:
            return self
        from ..methods.mesh_placement import spec_problem

        for e in self.tensors:
            spec = tuple(tuple(x) if isinstance(x, list) else x for x in (e.spec or []))
            problem = spec_problem(tuple(e.shape), spec, mesh)
            if problem:
                raise ValueError(f"tensor {e.name!r}: {problem}")
        by_device = self.totals.state_bytes_by_device
        n = 1
        for size in mesh.values():
            n *= size
        if by_device is not None and len(by_device) != n:
            raise ValueError(f"totals.state_bytes_by_device lists {len(by_device)} devices, the mesh has {n}")
        return self

    def entry(self, name: str) -> TensorEntry:
        for e in self.tensors:
            if e.name == name:
                return e
        raise KeyError(name)
