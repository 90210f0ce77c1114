"""Issue 19 part A: Adafactor, Lion, Muon and compressed (bfloat16 / 8-bit blockwise) state.

- predicted state bytes equal the allocated bytes, per tensor, in torch and optax, on tiny Llama, T5 and
  Mixtral-style transformers and a ResNet (built from configurations, nothing downloaded);
- Muon's Newton–Schulz output has its singular values in the published band (random matrices);
- Adafactor equals ``torch.optim.Adafactor`` (1e-6), Lion an independent float64 implementation of the paper's
  update and ``optax.lion``, Muon a float64 implementation of torch.optim.Muon's algorithm;
- the 8-bit code is bitsandbytes' dynamic map and encoding picks the nearest code (brute force in float64);
- the CLI accepts the methods and ``--compress``; an unknown method lists the known ones.
"""

from __future__ import annotations

import math

import pytest
import torch

from plans import DEFAULTS, Zoo, make_plan, resume_through_checkpoint, zoo_loss
from sketchplan.build import build_optimizer
from sketchplan.methods import METHOD_MODULES, MethodConfig, OptimizerDefaults, state_layout, total_bytes
from sketchplan.methods.compression import BLOCK, dynamic_code
from sketchplan.optimizers.torch import Adafactor, Lion, Muon

tiny = pytest.importorskip("tiny_models")

NEW = {
    "adafactor": MethodConfig(method="adafactor", momentum="none"),
    "adafactor_mom": MethodConfig(method="adafactor", momentum="bfloat16"),
    "lion": MethodConfig(method="lion"),
    "lion_int8": MethodConfig(method="lion", momentum="int8"),
    "muon": MethodConfig(method="muon"),
    "muon_int8": MethodConfig(method="muon", momentum="int8", compress="int8"),
    "adam_8bit": MethodConfig(method="adam", momentum="int8", compress="int8"),
    "adam_bf16v": MethodConfig(method="adam", compress="bfloat16"),
    "shampoo_8bit": MethodConfig(method="shampoo", momentum="int8", compress="int8"),
    "sketchy_bf16": MethodConfig(method="sketchy", rank=4, graft="rmsprop", momentum="int8", compress="bfloat16"),
}
MODELS = ["llama", "t5", "mixtral", "resnet"]


def _grads(model, seed):
    g = torch.Generator().manual_seed(seed)
    for p in model.parameters():
        p.grad = torch.randn(p.shape, generator=g) * 1e-2


@pytest.mark.parametrize("model_name", MODELS)
@pytest.mark.parametrize("name", list(NEW))
def test_torch_state_bytes_equal_plan(model_name, name):
    torch.manual_seed(0)
    model = tiny.MODELS[model_name]()
    plan = make_plan(model, NEW[name], OptimizerDefaults(max_precond_dim=300))
    opt = build_optimizer(plan, model)
    for s in range(2):
        _grads(model, s)
        opt.step()
    seen = set()
    for pname, p in model.named_parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        e = plan.entry(pname)
        tensors = {k: v for k, v in opt.state[p].items() if torch.is_tensor(v)}
        expected = state_layout(tuple(p.shape), e.config(), plan.defaults)
        assert [(t.name, t.shape, t.dtype) for t in expected] == [
            (k, tuple(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in tensors.items()], pname
        assert sum(v.numel() * v.element_size() for v in tensors.values()) == e.state_bytes, pname
        assert all(torch.isfinite(v.float()).all() for v in tensors.values())


def _hand_bytes(shape, name):
    """Expected bytes derived by hand from each method's paper/implementation (not from the layouts)."""
    n = math.prod(shape)
    q8 = n + 4 * -(-n // BLOCK)          # uint8 codes + a float32 absmax per block of 256
    if name == "lion":
        return 4 * n + 4
    if name == "adam_8bit":
        return 2 * q8 + 4
    if name == "adam_bf16v":
        return 4 * n + 2 * n + 4
    if name == "adafactor":
        if len(shape) >= 2:
            return 4 * (math.prod(shape[:-1]) + math.prod(shape[:-2]) * shape[-1]) + 4
        return 4 * n + 4
    raise KeyError(name)


@pytest.mark.parametrize("name", ["lion", "adam_8bit", "adam_bf16v", "adafactor"])
def test_bytes_by_hand(name):
    torch.manual_seed(1)
    for _ in range(20):
        shape = tuple(int(d) for d in torch.randint(1, 700, (int(torch.randint(1, 4, ()).item()),)))
        assert total_bytes(state_layout(shape, NEW[name], OptimizerDefaults())) == _hand_bytes(shape, name), shape


def test_muon_layout_by_hand():
    opts = OptimizerDefaults()
    assert total_bytes(state_layout((96, 64), NEW["muon"], opts)) == 96 * 64 * 4 + 4       # one momentum
    assert total_bytes(state_layout((64,), NEW["muon"], opts)) == 64 * 8 + 4                 # AdamW: m and v
    q8 = 96 * 64 + 4 * (96 * 64 // 256)
    assert total_bytes(state_layout((96, 64), NEW["muon_int8"], opts)) == q8 + 4


# ---- optax: the same bytes per tensor ----

def test_optax_state_bytes_equal_plan():
    jax = pytest.importorskip("jax")
    pytest.importorskip("optax")
    import jax.numpy as jnp

    from sketchplan import build_optax
    from sketchplan.optimizers.jax import tensor_state
    from sketchplan.planner import uniform_plan

    for model_name in MODELS:
        model = tiny.MODELS[model_name]()
        params = {n: jax.ShapeDtypeStruct(tuple(p.shape), jnp.float32) for n, p in model.named_parameters()}
        for name in ("adafactor", "lion", "muon_int8", "adam_8bit", "sketchy_bf16"):
            plan = uniform_plan(params, NEW[name], OptimizerDefaults(max_precond_dim=300))
            state = jax.eval_shape(build_optax(plan, params).init, params)
            assert sum(math.prod(a.shape) * jnp.dtype(a.dtype).itemsize for a in jax.tree.leaves(state)) \
                == plan.totals.state_bytes + 4  # + the step count
            for e in plan.tensors:
                arrays = tensor_state(state[0], params, e.name, e.config(), plan.defaults)
                got = sum(math.prod(a.shape) * jnp.dtype(a.dtype).itemsize for a in arrays.values())
                assert got == e.state_bytes, (model_name, name, e.name)
                assert sorted(arrays) == sorted(t.name for t in state_layout(tuple(e.shape), e.config(),
                                                                             plan.defaults))


# ---- numerics ----

def test_newton_schulz_singular_values_in_band():
    from sketchplan.kernels.torch.newton_schulz import newton_schulz
    from sketchplan.methods.muon import NS_BAND

    g = torch.Generator().manual_seed(7)
    for m, n in [(64, 256), (256, 64), (100, 100), (33, 129), (512, 128)]:
        k = min(m, n)
        u = torch.linalg.qr(torch.randn(3, m, k, generator=g, dtype=torch.float64))[0]
        v = torch.linalg.qr(torch.randn(3, n, k, generator=g, dtype=torch.float64))[0]
        # singular values log-uniform over 1.5 decades; after the Frobenius normalisation every one is ≥ 1.1e-3,
        # the smallest the quintic map f(x) = ax + bx³ + cx⁵ applied 5 times sends above 0.5
        s = 10 ** (-1.5 * torch.rand(3, k, generator=g, dtype=torch.float64))
        assert (s / s.norm(dim=-1, keepdim=True)).min() > 1.1e-3
        x = (u * s[:, None, :]) @ v.mT
        out = newton_schulz(x.float(), 5).double()
        assert out.shape == x.shape
        sv = torch.linalg.svdvals(out)
        assert sv.min() > NS_BAND[0] and sv.max() < NS_BAND[1], (m, n, sv.min(), sv.max())
        # same singular vectors: Uᵀ O V is diagonal
        core = u.mT @ out @ v
        off = core - torch.diag_embed(torch.diagonal(core, dim1=-2, dim2=-1))
        assert off.abs().max() < 1e-3


def test_adafactor_matches_torch():
    g = torch.Generator().manual_seed(3)
    shapes = [(17, 9), (4, 6, 5), (31,), (), (2, 3, 4, 5)]
    ps = [torch.nn.Parameter(torch.randn(s, generator=g)) for s in shapes]
    ref = [torch.nn.Parameter(p.detach().clone()) for p in ps]
    ours = Adafactor(ps, lr=1e-2, weight_decay=0.1)
    theirs = torch.optim.Adafactor(ref, lr=1e-2, weight_decay=0.1, foreach=False)
    for _ in range(12):
        for a, b in zip(ps, ref):
            a.grad = torch.randn(a.shape, generator=g)
            b.grad = a.grad.clone()
        ours.step()
        theirs.step()
    for a, b in zip(ps, ref):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
        for k in ("row_var", "col_var", "variance"):
            if k in theirs.state[b]:
                torch.testing.assert_close(ours.state[a][k], theirs.state[b][k], rtol=1e-6, atol=1e-7)


def test_lion_matches_float64_reference():
    g = torch.Generator().manual_seed(4)
    p = torch.nn.Parameter(torch.randn(13, 7, generator=g))
    p64, m64 = p.detach().double().clone(), torch.zeros(13, 7, dtype=torch.float64)
    lr, wd, b1, b2, ratio = 3e-3, 0.05, 0.9, 0.99, 0.3
    opt = Lion([p], lr=lr, betas=(b1, b2), lion_lr_ratio=ratio, weight_decay=wd)
    for _ in range(10):
        grad = torch.randn(13, 7, generator=g, dtype=torch.float64)
        p.grad = grad.float()
        opt.step()
        # Chen et al. 2023, Program 1: update = sign(β1 m + (1−β1) g); m = β2 m + (1−β2) g; decoupled decay
        c = b1 * m64 + (1 - b1) * grad.float().double()
        p64 = p64 * (1 - lr * wd) - lr * ratio * torch.sign(c)
        m64 = b2 * m64 + (1 - b2) * grad.float().double()
    torch.testing.assert_close(p.detach().double(), p64, rtol=0, atol=1e-6)
    torch.testing.assert_close(opt.state[p]["momentum"].double(), m64, rtol=0, atol=1e-6)


def test_muon_matches_float64_reference():
    g = torch.Generator().manual_seed(5)
    p = torch.nn.Parameter(torch.randn(24, 40, generator=g))
    p64, buf = p.detach().double().clone(), torch.zeros(24, 40, dtype=torch.float64)
    lr, mu = 1e-2, 0.95
    opt = Muon([p], lr=lr, muon_momentum=mu)
    a, b, c = 3.4445, -4.7750, 2.0315
    for _ in range(4):
        grad = torch.randn(24, 40, generator=g, dtype=torch.float64)
        p.grad = grad.float()
        opt.step()
        gg = grad.float().double()
        buf = buf + (1 - mu) * (gg - buf)               # torch.optim.Muon: buf.lerp_(grad, 1 − μ)
        u = gg + mu * (buf - gg)                        # Nesterov: grad.lerp(buf, μ)
        x = u / (u.norm() + 1e-7)
        for _ in range(5):
            A = x @ x.T
            x = a * x + (b * A + c * A @ A) @ x
        p64 = p64 - lr * 0.2 * math.sqrt(40) * x
    torch.testing.assert_close(p.detach().double(), p64, rtol=0, atol=2e-5)


class _Small(torch.nn.Module):
    """No tied tensors (a pytree cannot tie): a matrix, a tall matrix, a conv kernel, a 3-D stack, a vector."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(11)
        for name, shape in (("wide", (12, 40)), ("tall", (40, 12)), ("conv", (5, 3, 3, 3)), ("stack", (4, 6, 5)),
                            ("bias", (13,))):
            self.register_parameter(name, torch.nn.Parameter(torch.randn(shape, generator=g)))


def test_jax_steps_match_torch():
    jax = pytest.importorskip("jax")
    pytest.importorskip("optax")
    import jax.numpy as jnp
    import numpy as np

    from sketchplan import build_optax
    from sketchplan.planner import uniform_plan

    opts = OptimizerDefaults(lr=1e-2, weight_decay=0.01, max_precond_dim=64)
    for name in ("adafactor_mom", "lion_int8", "muon", "adam_8bit"):
        model = _Small()
        opt = build_optimizer(uniform_plan(model, NEW[name], opts), model)
        params = {n: jnp.asarray(p.detach().numpy()) for n, p in model.named_parameters()}
        tx = build_optax(uniform_plan(params, NEW[name], opts), params)
        state = tx.init(params)
        update = jax.jit(tx.update)
        g = torch.Generator().manual_seed(12)
        for _ in range(3):
            for p in model.parameters():
                p.grad = torch.randn(p.shape, generator=g)
            grads = {n: jnp.asarray(p.grad.numpy()) for n, p in model.named_parameters()}
            opt.step()
            updates, state = update(grads, state, params)
            params = {n: params[n] + updates[n] for n in params}
        for n, p in model.named_parameters():
            if n == "bias" and NEW[name].method in ("shampoo", "sketchy"):
                continue  # full-matrix Shampoo on a vector: torch and JAX differ by 2e-3 without compression too
            np.testing.assert_allclose(np.asarray(params[n]), p.detach().numpy(), rtol=0, atol=1e-5,
                                       err_msg=f"{name} {n}")
    assert jax is not None


def test_optax_lion_agrees():
    pytest.importorskip("jax")
    optax = pytest.importorskip("optax")
    import jax.numpy as jnp
    import numpy as np

    from sketchplan.optimizers.jax import lion

    rng = np.random.default_rng(0)
    params = {"w": jnp.asarray(rng.standard_normal((9, 5)), jnp.float32)}
    ours = lion(1e-2, weight_decay=0.0)
    theirs = optax.lion(1e-2 * 0.3, b1=0.9, b2=0.99, weight_decay=0.0)
    so, st = ours.init(params), theirs.init(params)
    for _ in range(6):
        g = {"w": jnp.asarray(rng.standard_normal((9, 5)), jnp.float32)}
        uo, so = ours.update(g, so, params)
        ut, st = theirs.update(g, st, params)
        np.testing.assert_allclose(np.asarray(uo["w"]), np.asarray(ut["w"]), rtol=0, atol=1e-6)


def test_dynamic_code_is_bitsandbytes_map():
    for signed in (True, False):
        code = dynamic_code(signed)
        assert len(code) == 256 and list(code) == sorted(code)
        assert 0.0 in code and max(code) == 1.0
        if signed:
            assert min(code) < -0.99 and sum(c < 0 for c in code) == 127
        else:
            assert min(code) == 0.0
    # bitsandbytes' create_dynamic_map(signed=True): the smallest non-zero magnitude is 1e-6 · 0.55
    assert min(abs(c) for c in dynamic_code(True) if c) == pytest.approx(0.55e-6)


def test_bucket_lookup_equals_searchsorted():
    """The fast nearest-code lookup is exactly searchsorted over the midpoints, on both codes, over every
    magnitude (log-uniform from 1e-9 to 1, both signs, the midpoints themselves and ±0)."""
    from sketchplan.optimizers.torch.compressed import code_tables, nearest_code

    g = torch.Generator().manual_seed(13)
    for signed in (True, False):
        _, mids = code_tables(signed, torch.device("cpu"))
        y = 10 ** (-9 * torch.rand(200_000, generator=g))
        if signed:
            y = y * torch.where(torch.rand(200_000, generator=g) < 0.5, -1.0, 1.0)
        y = torch.cat([y, mids, torch.nextafter(mids, torch.ones_like(mids)), torch.tensor([0.0, -0.0, 1.0])])
        if not signed:
            y = y.abs()
        assert torch.equal(nearest_code(y, signed), torch.searchsorted(mids, y, out_int32=True))


def test_int8_encoding_is_nearest_code():
    from sketchplan.optimizers.torch.compressed import decode, encode

    g = torch.Generator().manual_seed(9)
    for signed in (True, False):
        x = torch.randn(1000, generator=g) * torch.logspace(-4, 1, 1000)
        x = x if signed else x.abs()
        q = torch.zeros(1000, dtype=torch.uint8)
        absmax = torch.zeros(-(-1000 // BLOCK))
        encode(x, q, absmax, signed)
        code = torch.tensor(dynamic_code(signed), dtype=torch.float64)
        for b in range(absmax.numel()):
            blk = x[b * BLOCK:(b + 1) * BLOCK].double()
            assert absmax[b].item() == pytest.approx(blk.abs().max().item(), rel=1e-7)
            best = (blk[:, None] / blk.abs().max() - code[None, :]).abs().argmin(1)
            got = q[b * BLOCK:(b + 1) * BLOCK].long()
            # ties between two codes may round either way in float32: the chosen code is as near as the best
            err_got = (blk / blk.abs().max() - code[got]).abs()
            err_best = (blk / blk.abs().max() - code[best]).abs()
            assert (err_got <= err_best + 1e-6).all()
        y = decode(q, absmax, signed, torch.float32)
        assert ((y - x).abs() <= absmax.repeat_interleave(BLOCK)[:1000] * 0.08 + 1e-12).all()


def test_compressed_adam_tracks_adam():
    """8-bit Adam stays close to 32-bit Adam on the Zoo model (Dettmers et al. 2022's claim, 20 steps)."""
    torch.manual_seed(0)
    a, b = Zoo(), Zoo()
    b.load_state_dict(a.state_dict())
    oa = build_optimizer(make_plan(a, MethodConfig(method="adam"), DEFAULTS), a)
    ob = build_optimizer(make_plan(b, NEW["adam_8bit"], DEFAULTS), b)
    for s in range(20):
        for m, o in ((a, oa), (b, ob)):
            o.zero_grad()
            zoo_loss(m, s).backward()
            o.step()
    la, lb = zoo_loss(a, 99).item(), zoo_loss(b, 99).item()
    assert abs(la - lb) < 0.05 * abs(la)


# ---- planner and CLI ----

def test_methods_registered_and_grid():
    from sketchplan.planner.candidates import candidate_configs

    for m in ("adafactor", "lion", "muon"):
        assert m in METHOD_MODULES
    cfgs = candidate_configs(("adam", "muon", "lion"), (), (), ("adam",), ("float32", "int8"), ("none", "int8"))
    labels = {c.label() for c in cfgs}
    assert "adam +m8 +v:8bit" in labels and "lion +m8" in labels and "muon +v:8bit" in labels
    assert not any(c.method == "lion" and c.compress != "none" for c in cfgs)   # Lion has no second moment


def test_cli_methods_and_unknown(tmp_path, capsys):
    from sketchplan.cli import main
    from sketchplan.planner.plan import Plan

    out = tmp_path / "plan.yaml"
    rc = main(["plan", "--model", "examples.models:mlp", "--memory-budget", "64MiB", "--methods",
               "adam,muon,lion,adafactor", "--compress", "none,int8", "--momenta", "float32,int8", "--out", str(out)])
    assert rc == 0
    plan = Plan.load(str(out))
    assert plan.grid.compress == ["none", "int8"]
    labels = [w.label for w in plan.what_if]
    assert "all muon" in labels and "all lion" in labels and "all adafactor" in labels
    rc = main(["plan", "--model", "examples.models:mlp", "--memory-budget", "64MiB", "--methods", "adam,muon2"])
    err = capsys.readouterr().err
    assert rc == 2 and "muon2" in err and "muon" in err and "lion" in err and "adafactor" in err
    assert "Traceback" not in err
    rc = main(["plan", "--model", "examples.models:mlp", "--memory-budget", "64MiB", "--compress", "fp8"])
    assert rc == 2 and "compression" in capsys.readouterr().err


def test_muon_planner_keeps_embeddings_on_adam():
    from sketchplan.planner import make_plan as plan_model

    model = tiny.llama()
    plan = plan_model(model, None, methods=("adam", "muon"), hardware=None)
    by = {e.name: e.method for e in plan.tensors if e.method}
    assert by["model.embed_tokens.weight"] == "adam" and by["lm_head.weight"] == "adam"
    assert by["model.layers.0.mlp.up_proj.weight"] == "muon"
    mix = plan_model(tiny.mixtral(), None, methods=("adam", "muon"), hardware=None)
    experts = [e for e in mix.tensors if e.method == "muon" and e.batch_dims]
    assert experts, "stacked experts get Muon per expert"


# ---- step transients: the replays (methods.*.workspace_bytes, compression.workspace_extra) vs MemTracker ----

REPLAY = [NEW["adafactor"], NEW["adafactor_mom"], NEW["lion"], MethodConfig(method="lion", momentum="bfloat16"),
          MethodConfig(method="lion", momentum="none"), NEW["muon"], MethodConfig(method="muon", momentum="bfloat16"),
          NEW["muon_int8"], NEW["adam_8bit"], NEW["adam_bf16v"], NEW["shampoo_8bit"],
          MethodConfig(method="sketchy", rank=4, graft="adam", momentum="int8", compress="int8")]


@pytest.mark.parametrize("cfg", REPLAY, ids=lambda c: c.label())
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_replay_matches_memtracker(cfg, dtype, monkeypatch):
    """As tests/test_step_peak.py: every float32 eigh/SVD fails, so the float64 retry the replays assume runs;
    the shared 8-bit code and bucket tables (allocated once per device) exist before the tracked steps."""
    from replay import force_float64_retry, measured_step_transients, random_shapes

    from sketchplan.methods import workspace_of
    from sketchplan.optimizers.torch.compressed import bucket_table, code_tables

    force_float64_retry(monkeypatch)
    for signed in (True, False):
        code_tables(signed, torch.device("cpu"))
        bucket_table(signed, torch.device("cpu"))
    seed, shapes = random_shapes(vector_max=300)
    # roots refreshed every step: the second step refreshes with every tensor's state allocated (compressed groups
    # allocate tensor by tensor during the first), the high-water mark the replays predict
    opts = OptimizerDefaults(precondition_frequency=1)
    measured = measured_step_transients(shapes, cfg, dtype, opts, steps=2)
    dt = str(dtype).removeprefix("torch.")
    predicted = max(workspace_of(tuple(s), cfg, opts, dt, scratch=False) for s in shapes)
    assert measured <= predicted <= measured * 1.015 + 64, (seed, shapes, predicted, measured)


def test_multi_rank_refusals():
    from sketchplan.errors import UserError
    from sketchplan.planner import make_plan as plan_model

    model = tiny.llama()
    with pytest.raises(UserError, match="single-process"):
        plan_model(model, None, compress=("none", "int8"), world_size=2, parallelism="ddp", hardware=None)
    with pytest.raises(UserError, match="FSDP"):
        plan_model(model, None, methods=("adam", "muon"), world_size=2, parallelism="fsdp", hardware=None)
    plan = plan_model(model, None, methods=("adam", "muon", "lion"), world_size=2, parallelism="ddp", hardware=None)
    assert {e.method for e in plan.tensors if e.method} >= {"muon"}


@pytest.mark.parametrize("name", ["adafactor_mom", "lion_int8", "muon_int8", "adam_8bit", "sketchy_bf16"])
def test_state_dict_round_trip_and_nonfinite(name):
    """Resuming from a state_dict is bit-exact (uint8 codes and absmax keep their dtypes), and a NaN gradient
    leaves the (decoded, updated, re-encoded) state finite."""
    torch.manual_seed(0)
    ref = Zoo()
    model = Zoo()
    model.load_state_dict(ref.state_dict())
    plan = make_plan(ref, NEW[name], DEFAULTS)
    ro = build_optimizer(plan, ref)
    for s in range(8):
        ro.zero_grad()
        zoo_loss(ref, s).backward()
        ro.step()
    mo = build_optimizer(plan, model)
    for s in range(4):
        mo.zero_grad()
        zoo_loss(model, s).backward()
        mo.step()
    resumed, o2 = resume_through_checkpoint(model, mo, plan)
    for s in range(4, 8):
        o2.zero_grad()
        zoo_loss(resumed, s).backward()
        o2.step()
    for (n, a), b in zip(ref.named_parameters(), resumed.parameters()):
        assert torch.equal(a, b), n
    o2.zero_grad()
    zoo_loss(resumed, 9).backward()
    resumed.lin.weight.grad[0, 0] = float("nan")
    for group in o2.param_groups:  # these methods are elementwise: auto leaves the guard off
        group["nonfinite_guard"] = True
    with pytest.warns(RuntimeWarning, match="NaN or Inf"):
        o2.step()
    assert all(torch.isfinite(v.float()).all() for st in o2.state.values() for v in st.values() if torch.is_tensor(v))
    assert all(torch.isfinite(p).all() for p in resumed.parameters())


def test_newton_schulz_kernel_call_and_timing():
    """Muon's kernel call names newton_schulz on the short side first; its flops are iters·(4m²n + 2m³) (counted by
    hand: XXᵀ, A², (bA + cA²)X); a profile without its table times it by the roofline (flagged analytic)."""
    from sketchplan.kernels.calls import flops
    from sketchplan.methods import kernel_calls
    from sketchplan.profiles.cost import CostModel
    from sketchplan.profiles.registry import resolve

    calls = kernel_calls((3072, 768), NEW["muon"], OptimizerDefaults())
    ns = [c for c in calls if c.kernel == "newton_schulz"]
    assert [(c.dims, c.batch) for c in ns] == [((768, 3072, 5), 1)]
    assert flops("newton_schulz", "quintic", (768, 3072, 5)) == 5 * (2 * 768 * 768 * 3072 + 2 * 768**3
                                                                    + 2 * 768 * 768 * 3072)
    experts = kernel_calls((4, 96, 64), NEW["muon"].model_copy(update={"batch_dims": 1}), OptimizerDefaults())
    assert [(c.dims, c.batch) for c in experts if c.kernel == "newton_schulz"] == [((64, 96, 5), 4)]
    profile = resolve("cpu-amd-epyc-1t-torch")  # re-measured with Newton–Schulz (issue 20)
    est = CostModel(profile).call(ns[0])
    measured = [p.seconds for p in profile.table("newton_schulz", "quintic").points if tuple(p.dims) == (768, 3072, 5)]
    assert not est.analytic and not est.extrapolated
    assert measured and est.seconds == pytest.approx(measured[0], rel=1e-9)  # a grid point: the table's own time
