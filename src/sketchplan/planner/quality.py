"""How much of full-matrix (Shampoo) preconditioning a candidate keeps: a score in [0, 1] per tensor.

The default model is a documented prior, used until a measured spectrum replaces it:

- Every Kronecker factor of a d-dimensional axis has eigenvalues λ_j ∝ j^(−α) (α = ``SPECTRUM_DECAY`` = 1), the
  fast decay the Sketchy paper observed. m_d(k) = Σ_{j≤k} λ_j / Σ_{j≤d} λ_j is the top-k spectral mass.
- An axis kept whole with rank k (Sketchy) captures m_d(k); Shampoo (k = d) captures 1.
- Blocks of size b on an axis of size d keep the leading b directions' worth of mass plus the block-diagonal
  share b/d of the rest: c_block = m_d(b) + (1 − m_d(b))·b/d. A rank-k sketch inside such blocks keeps
  m_b(k) of each block: c = c_block · m_b(k).
- A tensor's score is δ + (1 − δ)·mean_i c_i, with δ = ``DIAGONAL_SCORE`` = 0.5 what a diagonal method keeps;
  Adam scores δ, extreme tensoring 0.9·δ (coarser than the diagonal), KrADagrad 0.97 of Shampoo's (its
  statistic is a Loewner upper bound of the inverse, not the inverse). These factors are each method's
  ``SCORE_FACTOR``, and the rank a matrix method keeps per block axis its ``kept_rank`` (``sketchplan.methods``).
- Grafting and momentum scale the score: graft adam 1, rmsprop 0.99, adafactor 0.98, sgd 0.85; momentum
  float32 1, bfloat16 0.995, int8 0.99, none 0.92; second moments stored in bfloat16 0.995, int8 0.99.
- Issue 19's methods: Adafactor 0.97·δ, Lion 0.9·δ (diagonal-like); Muon on a matrix δ + (1 − δ)·0.8 (its
  orthogonalised momentum is Shampoo without accumulation; ``methods.muon.MATRIX_CAPTURE``), elsewhere Adam's δ. A matrix method that falls back on a tensor (a scalar, a dimension
  above ``max_precond_dim``) scores as its graft: δ, or 0.3 for sgd.

- Vectors (merged order 1: biases, norm gains, 1-D parameters): a matrix method would keep a d×d factor (full-matrix
  AdaGrad on the vector). The score model gives it no credit over its diagonal graft (``VECTOR_MATRIX_GAIN`` = 0:
  it scores as the graft), so the diagonal method, cheaper and faster, dominates it. Why: the reference Shampoo
  implementations precondition vectors too, but nothing measured shows it pays; in
  ``benchmarks/results/autotune_value.md`` the plans that won train vectors with Adam. A measured spectrum
  (``--spectrum``) does not change this: the probe sketches only matrices.

- Step skipping (``stats_every``) and the FD variant carry no score penalty, as measured: on the char-LM
  (``benchmarks/results/fd_variant_quality.md``, 3 seeds) Sketchy k = 64 with ``stats_every`` 2, 5, 10 had mean
  validation losses 0.998×, 0.999×, 1.003× every-step's (per-seed spread ±1 %), and the ``subspace`` FD
  variant 1.005× (k = 64) and 1.000× (k = 16) the exact update's. Their time effect is in the kernel calls
  (``every = stats_every``; the profile's per-variant tables), so a time-bounded plan gains from them at no
  modelled quality cost.

The planner maximises the parameter-weighted mean of these scores; the ordering full > blocked > sketched >
diagonal at growing memory is what matters, and measured spectra (``sketchplan probe``) refine it.
"""

from __future__ import annotations

from functools import lru_cache
import math

from ..methods import METHOD_MODULES
from ..methods.blocking import cached_plan
from ..methods.layout import MethodConfig, OptimizerDefaults

DIAGONAL_SCORE = 0.5
SPECTRUM_DECAY = 1.0
GRAFT_FACTOR = {"adam": 1.0, "rmsprop": 0.99, "adafactor": 0.98, "sgd": 0.85, "none": 0.85}
MOMENTUM_FACTOR = {"float32": 1.0, "bfloat16": 0.995, "none": 0.92, "int8": 0.99}
#: Storage of the second moments (``methods.compression``): 8-bit blockwise Adam matches 32-bit Adam in
#: Dettmers et al. 2022's benchmarks; the prior charges it a little.
COMPRESS_FACTOR = {"none": 1.0, "bfloat16": 0.995, "int8": 0.99}
SGD_FALLBACK_SCORE = 0.3
#: Credit a matrix method gets over its diagonal graft on a vector (module docstring): none.
VECTOR_MATRIX_GAIN = 0.0


#: above this many terms the harmonic sum is its exact head plus the Euler–Maclaurin tail (error < 1e-24)
_HARMONIC_EXACT = 2**20


@lru_cache(maxsize=None)
def _harmonic(n: int, alpha: float) -> float:
    """Σ_{j≤n} j^(−α), in constant time for large n (dimensions up to 2^48 are valid)."""
    if n <= _HARMONIC_EXACT:
        return sum(j ** -alpha for j in range(1, n + 1))
    m = _HARMONIC_EXACT
    if alpha == 1.0:
        integral = math.log(n / m)
    else:
        integral = (n ** (1 - alpha) - m ** (1 - alpha)) / (1 - alpha)
    f = lambda x: x ** -alpha  # noqa: E731
    df = lambda x: -alpha * x ** (-alpha - 1)  # noqa: E731
    # Σ_{j=m+1}^{n} f(j) = ∫_m^n f + (f(n) − f(m))/2 + (f'(n) − f'(m))/12 − …
    return _harmonic(m, alpha) + integral + (f(n) - f(m)) / 2 + (df(n) - df(m)) / 12


def top_mass(d: int, k: int, alpha: float = SPECTRUM_DECAY) -> float:
    """m_d(k): share of the spectral mass in the top k of d eigenvalues λ_j ∝ j^(−α)."""
    if k >= d:
        return 1.0
    return _harmonic(k, alpha) / _harmonic(d, alpha)


def axis_capture(d: int, block: int, rank: int) -> float:
    """Captured share on an axis of size d cut into blocks of ≤ ``block`` with rank ``rank`` inside each."""
    if block >= d:
        return top_mass(d, rank)
    c_block = top_mass(d, block) + (1 - top_mass(d, block)) * block / d
    return c_block * top_mass(block, rank)


def score(shape: tuple[int, ...], cfg: MethodConfig, opts: OptimizerDefaults, spectrum=None) -> float:
    """The candidate's score on a tensor of ``shape`` (see module docstring).

    ``spectrum``: the tensor's measured ``TensorSpectrum`` (``planner.spectrum``); when given and its merged
    shape matches, measured shares replace the prior.
    """
    mp = cached_plan(tuple(shape), cfg.block_size, opts.merge_dims, opts.max_precond_dim, cfg.batch_dims, cfg.splits,
                     cfg.split_axis)
    if spectrum is not None and (tuple(spectrum.merged) != mp.merged or mp.batched or mp.splits):
        spectrum = None
    diag = DIAGONAL_SCORE if spectrum is None else sum(a.diag_mass for a in spectrum.axes) / len(spectrum.axes)
    mom = MOMENTUM_FACTOR[cfg.momentum] * COMPRESS_FACTOR[cfg.compress]
    method = METHOD_MODULES[cfg.method]
    if cfg.method == "muon":  # issue 19 part A: a matrix keeps MATRIX_CAPTURE of full-matrix preconditioning
        from ..methods.muon import MATRIX_CAPTURE, matrix_view

        if matrix_view(tuple(shape), cfg.batch_dims) is None:
            return diag * mom
        return (diag + (1 - diag) * MATRIX_CAPTURE) * mom
    if not method.MATRIX:
        return method.SCORE_FACTOR * diag * mom
    graft = GRAFT_FACTOR[cfg.graft]
    if mp.fallback is None and mp.order == 1 and spectrum is None and not mp.batched:
        base = (SGD_FALLBACK_SCORE if cfg.graft == "sgd" else DIAGONAL_SCORE * graft) * mom
        full = method.SCORE_FACTOR * graft * mom
        return base + VECTOR_MATRIX_GAIN * max(0.0, full - base)
    if mp.fallback is not None:
        return (SGD_FALLBACK_SCORE * (diag / DIAGONAL_SCORE) if cfg.graft in ("sgd", "none") else diag * graft) * mom
    caps = []
    for i, d in enumerate(mp.matrix_dims):
        block = max(g[i] for g, _ in mp.groups)  # the largest block on this axis (segments cut it too)
        if mp.splits and mp.splits[i]:
            d = max(mp.splits[i])  # fused segments are independent matrices
        rank = min(method.kept_rank(cfg, block), block)
        caps.append(axis_capture(d, block, rank) if spectrum is None else spectrum.axes[i].capture(block, rank))
    if spectrum is None:
        s = DIAGONAL_SCORE + (1 - DIAGONAL_SCORE) * sum(caps) / len(caps)
    else:
        s = sum(caps) / len(caps)
    return s * method.SCORE_FACTOR * graft * mom
