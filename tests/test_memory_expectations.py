"""Optimizer-state bytes against expectations derived by hand from each paper's description, and against a
peer's real allocation (torch.optim.AdamW).

"Allocated bytes == predicted bytes" holds by construction (the optimizers allocate from the layouts the planner
counts), so it cannot catch a wrong layout. These tests can: each expected figure below is written from the
method's definition, as a formula per kind of state tensor, not from the layout code.

Notation: a parameter of shape (m, n) with numel N = m·n; s = bytes per element of the state dtype; μ = bytes per
element of the momentum buffer (0 without momentum); every method keeps one int32 counter (4 bytes) of skipped
non-finite gradients.

| method | state per parameter (bytes) |
|---|---|
| Adam (Kingma & Ba) | first moment N·μ + second moment N·s + 4 |
| Shampoo (Gupta et al.) | per axis d: statistic d²·s and inverse root d²·s; graft (adam: N·s); momentum N·μ; + 4 |
| blocked Shampoo (Anil et al.) | the same per block of ≤ B × B |
| Sketchy (Feinberg et al.) | per axis d: U (d·k)·s, σ² k·s, ρ 1·s with k = min(rank, d); graft, momentum, + 4 |
| KrADagrad (Mei et al.) | per axis d: inverse statistic d²·s and root d²·s; graft, momentum, + 4 |
| extreme tensoring (Chen et al.) | one accumulator per mode, Σ d_i·s; momentum; + 4 |
| adafactor graft (Shazeer & Stern) | row sums m·s + column sums n·s instead of N·s |
"""

from __future__ import annotations

import pytest
import torch

from sketchplan.methods import MethodConfig, OptimizerDefaults, state_layout, total_bytes

SIZE = {"float64": 8, "float32": 4, "bfloat16": 2, "none": 0}
M, N = 48, 80  # 48·80 = 3840 > merge_dims (1024): the shape stays a 48 × 80 matrix
NUMEL = M * N


def expected(method: str, state: str, momentum: str, graft: str = "adam", rank: int | None = None,
             block: int | None = None) -> int:
    """Bytes for a (48, 80) parameter, from the table in the module docstring."""
    s, mu = SIZE[state], SIZE[momentum]
    counter = 4
    if method == "adam":
        return NUMEL * mu + NUMEL * s + counter
    graft_bytes = {"adam": NUMEL * s, "rmsprop": NUMEL * s, "adafactor": (M + N) * s, "sgd": 0}[graft]
    tail = graft_bytes + NUMEL * mu + counter
    if method in ("shampoo", "kradagrad"):
        return 2 * (M * M + N * N) * s + tail
    if method == "blocked_shampoo":  # B = 32: rows 48 = 32 + 16, cols 80 = 32 + 32 + 16
        rows, cols = [32, 16], [32, 32, 16]
        return sum(2 * (r * r + c * c) * s for r in rows for c in cols) + tail
    if method == "sketchy":
        k_m, k_n = min(rank, M), min(rank, N)
        return (M * k_m + k_m + 1 + N * k_n + k_n + 1) * s + tail
    raise AssertionError(method)


CASES = [
    ("adam", "float32", "float32", {}),
    ("adam", "float64", "float32", {}),
    ("adam", "bfloat16", "bfloat16", {}),
    ("adam", "float32", "none", {}),
    ("shampoo", "float32", "float32", {}),
    ("shampoo", "float64", "none", {"graft": "adafactor"}),
    ("shampoo", "bfloat16", "bfloat16", {"graft": "sgd"}),
    ("blocked_shampoo", "float32", "float32", {"block": 32}),
    ("blocked_shampoo", "float64", "bfloat16", {"block": 32, "graft": "rmsprop"}),
    ("sketchy", "float32", "float32", {"rank": 16}),
    ("sketchy", "float64", "none", {"rank": 64, "graft": "adafactor"}),  # k = min(64, 48) on the row axis
    ("sketchy", "bfloat16", "bfloat16", {"rank": 8, "graft": "sgd"}),
    ("kradagrad", "float32", "float32", {}),
    ("kradagrad", "float64", "bfloat16", {"graft": "rmsprop"}),
]


@pytest.mark.parametrize("method,state,momentum,kw", CASES)
def test_layout_bytes_match_the_papers(method, state, momentum, kw):
    cfg = MethodConfig(method=method, momentum=momentum, graft=kw.get("graft", "adam"), rank=kw.get("rank"),
                       block_size=kw.get("block"))
    got = total_bytes(state_layout((M, N), cfg, OptimizerDefaults(state_dtype=state)))
    assert got == expected(method, state, momentum, **kw)


@pytest.mark.parametrize("state", ["float32", "float64", "bfloat16"])
@pytest.mark.parametrize("momentum", ["float32", "bfloat16", "none"])
def test_extreme_tensoring_bytes(state, momentum):
    # (48, 80) with et_max_dim 16: each axis into the fewest near-equal factors ≤ 16: 48 = 8·6, 80 = 10·8
    cfg = MethodConfig(method="extreme_tensoring", momentum=momentum)
    got = total_bytes(state_layout((M, N), cfg, OptimizerDefaults(state_dtype=state, et_max_dim=16)))
    assert got == (8 + 6 + 10 + 8) * SIZE[state] + NUMEL * SIZE[momentum] + 4


@pytest.mark.parametrize("dtype,momentum", [(torch.float32, "float32"), (torch.bfloat16, "bfloat16"),
                                            (torch.float64, "float64")])
def test_adam_state_equals_torch_adamw_allocation(dtype, momentum):
    """The peer: torch.optim.AdamW keeps exp_avg and exp_avg_sq in the parameter's dtype, plus a float32 step
    tensor (4 bytes); ours keeps both moments in the configured dtypes plus an int32 skip counter (4 bytes)."""
    p = torch.nn.Parameter(torch.randn(M, N, dtype=dtype))
    peer = torch.optim.AdamW([p], lr=1e-3, foreach=False)
    p.grad = torch.randn_like(p)
    peer.step()
    peer_bytes = sum(v.numel() * v.element_size() for v in peer.state[p].values() if torch.is_tensor(v))
    if momentum == "float64":  # our momentum dtype is float32 or bfloat16; compare the second moment alone
        ours = state_layout((M, N), MethodConfig(method="adam", momentum="none"),
                            OptimizerDefaults(state_dtype="float64"))
        v_bytes = peer.state[p]["exp_avg_sq"].numel() * peer.state[p]["exp_avg_sq"].element_size()
        assert total_bytes(ours) == v_bytes + 4
        return
    ours = state_layout((M, N), MethodConfig(method="adam", momentum=momentum),
                        OptimizerDefaults(state_dtype=momentum))
    assert total_bytes(ours) == peer_bytes
