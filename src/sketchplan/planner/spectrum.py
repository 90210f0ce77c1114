"""Measured gradient spectra (``sketchplan probe``) and how they score candidates (``plan --spectrum``).

For every probed matrix parameter and every axis i of its merged shape, the probe keeps a Frequent-Directions
sketch (docs/algorithms.md, Frequent Directions, β2 = 1) of the Kronecker factor C_i = Σ_t G_(i) G_(i)ᵀ and records:

- ``eigenvalues``: the sketch's leading eigenvalues λ_1 ≥ … ≥ λ_r (r = the probe's rank);
- ``trace``: tr C_i = Σ_t ‖G_t‖_F², exact;
- ``escaped``: the FD escaped mass ρ (every true eigenvalue is within ρ of the sketch's);
- ``diag_mass``: ‖diag(Ĉ_i)‖_F² / ‖Ĉ_i‖_F², the share of the factor a diagonal method sees;
- ``block_mass[B]``: ‖blockdiag_B(Ĉ_i)‖_F² / ‖Ĉ_i‖_F² for block sizes B = 32, 64, … < d, the share that
  blocks of B keep.

Scoring (replacing the prior of ``quality.py`` for probed tensors), per axis of size d:
- Sketchy, rank k: top-k mass m(k) = Σ_{j≤k} λ_j / tr C (the paper's regret bound pays for the escaped tail
  Σ_{j>k} λ_j); beyond the probe's rank the unseen mass tr C − Σ_{j≤r} λ_j is spread evenly over the d − r
  remaining directions;
- blocked Shampoo, block B: block_mass(B) (interpolated in log B between recorded sizes);
- Sketchy inside blocks of B: block_mass(B) · m(k·⌈d/B⌉);
- Shampoo: 1; a diagonal method (Adam, a graft fallback): diag_mass.
A tensor's score is the mean over its axes, scaled by the graft and momentum factors of ``quality.py``.
"""

from __future__ import annotations

import math
from typing import ClassVar

from pydantic import Field

from ..files import StrictModel as _S
from ..files import YamlFile
from typing import Annotated
from pydantic import model_validator
from ..validate import MAX_DIM, MAX_INT

#: a measured non-negative quantity; bounded so that sums of a sketch's values stay finite
_Mass = Annotated[float, Field(ge=0, le=1e300)]
_Share = Annotated[float, Field(ge=0, le=1)]

SPECTRUM_SCHEMA_VERSION = 1


class AxisSpectrum(_S):
    dim: int = Field(ge=1, le=MAX_DIM)
    eigenvalues: list[_Mass] = Field(max_length=2**16)
    trace: _Mass
    escaped: _Mass = 0.0
    diag_mass: _Share
    block_mass: dict[Annotated[int, Field(ge=1, le=MAX_DIM)], _Share] = Field(default_factory=dict)

    def top_mass(self, k: int) -> float:
        """m(k): share of tr C in the top k eigenvalues (see module docstring)."""
        if self.trace <= 0:
            return 1.0
        lam = self.eigenvalues
        r = len(lam)
        if k >= self.dim:
            return 1.0
        if k <= r:
            return min(1.0, sum(lam[:k]) / self.trace)
        seen = sum(lam)
        unseen = max(0.0, self.trace - seen)
        return min(1.0, (seen + unseen * (k - r) / max(1, self.dim - r)) / self.trace)

    def block_share(self, block: int) -> float:
        if block >= self.dim:
            return 1.0
        if not self.block_mass:
            return self.diag_mass
        sizes = sorted(self.block_mass)
        pts = [(1, self.diag_mass)] + [(b, self.block_mass[b]) for b in sizes] + [(self.dim, 1.0)]
        for (b0, m0), (b1, m1) in zip(pts, pts[1:]):
            if b0 <= block <= b1:
                if b1 == b0:
                    return m1
                t = (math.log(block) - math.log(b0)) / (math.log(b1) - math.log(b0))
                return m0 + t * (m1 - m0)
        return 1.0

    def capture(self, block: int, rank: int) -> float:
        """Share of this axis's factor a candidate keeps (module docstring)."""
        if block >= self.dim:
            return self.top_mass(rank)
        return self.block_share(block) * self.top_mass(min(self.dim, rank * math.ceil(self.dim / block)))


class TensorSpectrum(_S):
    shape: list[Annotated[int, Field(ge=0, le=MAX_DIM)]]
    merged: list[Annotated[int, Field(ge=1, le=MAX_DIM)]]
    axes: list[AxisSpectrum]

    @model_validator(mode="after")
    def _axes_match(self) -> "TensorSpectrum":
        if [a.dim for a in self.axes] != list(self.merged):
            raise ValueError("'axes' must hold one spectrum per merged dimension, with 'dim' equal to it")
        return self


class SpectrumFile(YamlFile):
    kind: ClassVar[str] = "spectrum file"
    how_to_make: ClassVar[str] = "write one with `sketchplan probe --out {path}`"
    how_to_fix: ClassVar[str] = "write it again with `sketchplan probe`"

    schema_version: int = Field(default=SPECTRUM_SCHEMA_VERSION, ge=1, le=SPECTRUM_SCHEMA_VERSION)
    source: str = ""
    steps: int = Field(ge=1, le=MAX_INT)
    rank: int = Field(ge=1, le=MAX_INT)
    tensors: dict[str, TensorSpectrum]
