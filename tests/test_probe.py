"""The spectrum probe (FD sketches of gradient Kronecker factors) and spectrum-informed planning."""

import torch
import torch.nn as nn

from sketchplan.planner import make_plan
from sketchplan.planner.analysis import ParamSpec, ModelSpec
from sketchplan.planner.probe import probe
from sketchplan.planner.plan import Plan
from sketchplan.planner.spectrum import AxisSpectrum, SpectrumFile, TensorSpectrum


def test_probe_spectra_bound_the_true_factor_spectra():
    torch.manual_seed(0)
    d_out, d_in, steps, rank = 48, 40, 30, 12
    model = nn.Linear(d_in, d_out, bias=False)
    basis = torch.randn(d_out, d_out)
    scale = torch.logspace(0, -2, d_out)
    grads = [(basis * scale) @ torch.randn(d_out, d_in) for _ in range(steps)]  # decaying left spectrum
    spec = probe(model, lambda m, g: (m.weight * g).sum(), grads, steps=steps, rank=rank, lr=0.0)
    axes = spec.tensors["weight"].axes
    true_left = sum(g.double() @ g.double().T for g in grads)
    true_right = sum(g.double().T @ g.double() for g in grads)
    for ax, c in zip(axes, (true_left, true_right)):
        lam = torch.linalg.eigvalsh(c).flip(0)
        assert abs(ax.trace - float(torch.trace(c))) <= 1e-4 * float(torch.trace(c))  # exact trace
        est = torch.tensor(ax.eigenvalues, dtype=torch.float64)
        k = len(est)
        assert k == min(rank, c.shape[0])
        # FD: λ̂_j ≤ λ_j and λ_j − λ̂_j ≤ ρ
        assert (est <= lam[:k] * (1 + 1e-4) + 1e-6).all()
        assert (lam[:k] - est <= ax.escaped * (1 + 1e-4) + 1e-6).all()
        # shares: monotone top mass reaching 1 at full rank; nested blocks keep more
        ms = [ax.top_mass(j) for j in range(1, ax.dim + 1)]
        assert all(b >= a - 1e-12 for a, b in zip(ms, ms[1:])) and ms[-1] == 1.0
        blocks = [ax.diag_mass] + [ax.block_mass[b] for b in sorted(ax.block_mass)]
        assert all(0 <= a <= b + 1e-9 <= 1 + 1e-9 for a, b in zip(blocks, blocks[1:]))


def axis(dim, lam):
    lam = sorted(lam, reverse=True)
    return AxisSpectrum(dim=dim, eigenvalues=lam[:32], trace=sum(lam), diag_mass=0.1, block_mass={})


def test_flat_spectra_get_more_rank_than_decaying_ones(tmp_path):
    d = 256
    flat = [1.0] * d
    steep = [1.0 / (j + 1) ** 3 for j in range(d)]
    spectra = SpectrumFile(steps=1, rank=32, tensors={
        "flat.weight": TensorSpectrum(shape=[d, d], merged=[d, d], axes=[axis(d, flat), axis(d, flat)]),
        "steep.weight": TensorSpectrum(shape=[d, d], merged=[d, d], axes=[axis(d, steep), axis(d, steep)]),
    })
    path = tmp_path / "s.yaml"
    spectra.save(str(path))
    spec = ModelSpec(params=[ParamSpec("flat.weight", (d, d)), ParamSpec("steep.weight", (d, d))])
    kw = dict(methods=["sketchy"], ranks=list(range(4, 64, 4)), grafts=["sgd"], momenta=["none"])
    uniform = make_plan(spec, None, methods=["sketchy"], ranks=[32], grafts=["sgd"], momenta=["none"])
    budget = uniform.totals.peak_bytes
    plan = make_plan(spec, budget, spectrum=str(path), **kw)
    ranks = {e.name: e.rank for e in plan.tensors}
    assert ranks["flat.weight"] > ranks["steep.weight"]
    assert plan.totals.peak_bytes <= budget
    # unprobed tensors keep the prior: the same plan without the spectrum gives equal ranks
    plain = make_plan(spec, budget, **kw)
    assert len({e.rank for e in plain.tensors}) == 1


def test_probe_cli_and_plan_with_spectrum(tmp_path, capsys):
    from sketchplan.cli import main

    out = tmp_path / "spec.yaml"
    assert main(["probe", "--model", "examples.models:mlp", "--data", "examples.data:digits_batches",
                 "--steps", "20", "--rank", "16", "--out", str(out)]) == 0
    s = SpectrumFile.load(str(out))
    assert set(s.tensors) == {"0.weight", "2.weight", "4.weight"}
    with_spec, without = tmp_path / "with.yaml", tmp_path / "without.yaml"
    grid = ["--methods", "sketchy", "--ranks", "4"]  # a rank well below the dims, where spectra differ
    assert main(["plan", "--model", "examples.models:mlp", *grid, "--spectrum", str(out), "--out", str(with_spec)]) == 0
    assert main(["plan", "--model", "examples.models:mlp", *grid, "--out", str(without)]) == 0
    measured = {e.name: e.score for e in Plan.load(with_spec).tensors}
    prior = {e.name: e.score for e in Plan.load(without).tensors}
    # the probed matrices are scored from their measured spectra, the unprobed vectors keep the prior
    assert all(measured[n] != prior[n] for n in s.tensors)
    assert all(measured[n] == prior[n] for n in prior if n not in s.tensors and prior[n] is not None)
    capsys.readouterr()
    assert main(["plan", "--model", "examples.models:mlp", "--spectrum", str(tmp_path / "none.yaml")]) == 2
    assert "does not exist" in capsys.readouterr().err
