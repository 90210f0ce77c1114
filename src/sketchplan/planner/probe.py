"""``probe``: run a few real training steps and measure each matrix parameter's Kronecker-factor spectra.

The training itself uses AdamW (the trajectory most models start on); after every backward pass each
parameter whose merged shape (docs/algorithms.md, Shapes) has order ≥ 2 feeds its gradient to one Frequent-Directions
sketch per axis (rank ``rank``, β2 = 1, the same FD kernel Sketchy uses), so the probe needs only
d·rank floats per axis, not d². What it records is described in ``planner.spectrum``.
"""

from __future__ import annotations

import itertools
import math
from typing import Callable, Iterable

from ..methods.blocking import merged_shape
from .spectrum import AxisSpectrum, SpectrumFile, TensorSpectrum

BLOCK_SIZES = tuple(2**i for i in range(5, 14))  # 32 … 8192


class _AxisSketch:
    def __init__(self, d: int, rank: int, device, dtype):
        import torch

        k = min(rank, d)
        self.u = torch.zeros(1, d, k, device=device, dtype=dtype)
        self.sig2 = torch.zeros(1, k, device=device, dtype=dtype)
        self.rho = torch.zeros(1, device=device, dtype=dtype)
        self.trace = 0.0

    def update(self, x) -> None:
        from ..kernels.torch.frequent_directions import fd_update

        self.u, self.sig2, self.rho = fd_update(self.u, self.sig2, self.rho, x.unsqueeze(0), 1.0)

    def summary(self, dim: int) -> AxisSpectrum:
        import torch

        u, s2 = self.u[0].double(), self.sig2[0].double()
        order = torch.argsort(s2, descending=True)
        u, s2 = u[:, order], s2[order]
        frob = float((s2 * s2).sum())
        scaled = u * s2.sqrt()
        diag = (scaled * scaled).sum(1)
        diag_mass = min(1.0, float((diag * diag).sum()) / frob) if frob > 0 else 1.0
        blocks = {}
        for b in BLOCK_SIZES:
            if b >= dim:
                break
            total = 0.0
            for start in range(0, dim, b):
                m = scaled[start:start + b].T @ scaled[start:start + b]
                total += float((m * m).sum())
            blocks[b] = min(1.0, total / frob) if frob > 0 else 1.0  # ≤ 1 up to rounding
        return AxisSpectrum(dim=dim, eigenvalues=[max(0.0, float(v)) for v in s2], trace=self.trace,
                            escaped=max(0.0, float(self.rho[0])), diag_mass=diag_mass, block_mass=blocks)


def _unfold(g, axis: int):
    """G_(axis): the tensor's mode-``axis`` unfolding, d_axis × (numel / d_axis)."""
    return g.movedim(axis, 0).reshape(g.shape[axis], -1)


def probe(model, loss_fn: Callable, batches: Iterable, steps: int = 100, rank: int = 256, lr: float = 1e-3,
          merge_dims: int = 1024, source: str = "", progress: bool = False) -> SpectrumFile:
    """Train ``model`` for ``steps`` AdamW steps on ``batches`` (cycled) and return the measured spectra.

    ``loss_fn(model, batch) -> scalar loss``. Parameters are sketched in float32 on their own device.
    Raises ``UserError`` for bad arguments, data that yields no batch, a loss function that fails or returns a
    non-scalar, and a run in which no matrix gradient was ever finite (nothing would be measured).
    """
    import torch

    from ..errors import UserError
    from ..validate import number

    steps = number(steps, "steps", lo=1, integer=True)
    rank = number(rank, "rank", lo=1, integer=True)
    lr = number(lr, "lr", lo=0, example="1e-3")

    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    sketches: dict[str, tuple[tuple[int, ...], list[_AxisSketch]]] = {}
    for n, p in params:
        merged = merged_shape(tuple(p.shape), merge_dims)
        if len(merged) >= 2:
            sketches[n] = (merged, [_AxisSketch(d, rank, p.device, torch.float32) for d in merged])
    opt = torch.optim.AdamW([p for _, p in params], lr=lr)
    try:
        it = itertools.cycle(batches) if not callable(batches) else iter(batches())
    except TypeError:
        raise UserError(f"the probe's data (--data) is a {type(batches).__name__}, not an iterable of batches; "
                        "return a list or generator of batches.") from None
    finite = 0  # gradients sketched
    bar = None
    if progress:
        from rich.progress import Progress

        bar = Progress(transient=True)
        bar.start()
        task = bar.add_task("probing gradient spectra", total=steps)
    try:
        for _ in range(steps):
            opt.zero_grad(set_to_none=True)
            try:
                batch = next(it)
            except StopIteration:
                raise UserError("the probe's data (--data) yielded no batch; return a non-empty list or generator of "
                                "batches.") from None
            try:
                loss = loss_fn(model, batch)
                if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
                    raise TypeError(f"it returned {type(loss).__name__}, not a scalar tensor")
                loss.backward()
            except UserError:
                raise
            except Exception as exc:  # the user's loss function or model
                msg = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
                raise UserError(f"the probe's loss function (--loss) failed ({type(exc).__name__}: {msg[:200]}); check "
                                "--loss, --data and the model.") from None
            with torch.no_grad():
                for n, p in params:
                    if n not in sketches or p.grad is None:
                        continue
                    merged, axes = sketches[n]
                    g = p.grad.detach().float().reshape(merged)
                    if not bool(torch.isfinite(g).all()):
                        continue
                    sq = float((g.double() * g.double()).sum())
                    if not math.isfinite(sq) or sq > 1e300:
                        continue  # too large to sum: treated like a non-finite gradient
                    finite += 1
                    for i, sk in enumerate(axes):
                        sk.trace += sq
                        sk.update(_unfold(g, i))
            opt.step()
            if bar is not None:
                bar.advance(task)
    finally:
        if bar is not None:
            bar.stop()
    if sketches and not finite:
        raise UserError(f"no gradient was finite in {steps} probe steps (NaN or Inf in the data, the loss or the "
                        "model), so no spectrum was measured; check the data and lower --lr.")
    tensors = {n: TensorSpectrum(shape=[int(d) for d in dict(params)[n].shape], merged=list(merged),
                                 axes=[sk.summary(d) for sk, d in zip(axes, merged)])
               for n, (merged, axes) in sketches.items()}
    return SpectrumFile(source=source, steps=steps, rank=rank, tensors=tensors)


def spectral_capture(spectrum: TensorSpectrum, block: int | None, rank: int | None) -> float:
    """Mean share over axes a (block, rank) choice keeps (None: unblocked; rank None: full)."""
    caps = []
    for a in spectrum.axes:
        b = a.dim if block is None else min(block, a.dim)
        k = b if rank is None else min(rank, b)
        caps.append(a.capture(b, k))
    return sum(caps) / len(caps) if caps else math.nan
