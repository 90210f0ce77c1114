"""Model analysis: tied weights once, frozen params without state, buffers apart, every --model source."""

import json

import pytest
import torch
import torch.nn as nn

from sketchplan.errors import UserError
from sketchplan.planner import analyze, make_plan
from sketchplan.planner.sources import PRESETS, load_model, load_spec


def test_gpt2_tied_embedding_counted_once():
    spec = load_spec("gpt2")
    names = [p.name for p in spec.params]
    assert "transformer.wte.weight" in names and "lm_head.weight" not in names
    wte = next(p for p in spec.params if p.name == "transformer.wte.weight")
    assert wte.tied == ("lm_head.weight",)
    # GPT-2 small has 124,439,808 distinct parameters (the published 124M)
    assert spec.n_params == 124_439_808
    plan = make_plan(spec, None, source="gpt2")
    assert sum(1 for e in plan.tensors if e.name == "lm_head.weight") == 0
    assert plan.totals.params_bytes == 4 * 124_439_808


def test_frozen_layers_get_no_state_but_count_as_params():
    from examples.models import frozen_backbone

    with torch.device("meta"):
        model = frozen_backbone()
    spec = analyze(model)
    frozen = [p for p in spec.params if not p.trainable]
    assert {p.name for p in frozen} == {"0.weight", "0.bias"}
    plan = make_plan(model, None, methods=["adam"])
    for e in plan.tensors:
        if e.name.startswith("0."):
            assert e.method is None and e.state_bytes == 0
        else:
            assert e.method == "adam" and e.state_bytes > 0
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert plan.totals.params_bytes == 4 * total
    assert plan.totals.grads_bytes == 4 * trainable


def test_buffers_reported_apart_and_module_names():
    from examples.models import convnet

    with torch.device("meta"):
        spec = analyze(convnet())
    assert {b.name for b in spec.buffers} >= {"1.running_mean", "1.running_var", "1.num_batches_tracked"}
    assert all(not p.name.endswith("running_mean") for p in spec.params)
    conv = next(p for p in spec.params if p.name == "0.weight")
    assert conv.shape == (64, 3, 7, 7) and conv.module == "0"


def test_fingerprint_changes_with_shape():
    a = analyze(nn.Linear(4, 3, device="meta"))
    b = analyze(nn.Linear(4, 5, device="meta"))
    assert a.fingerprint != b.fingerprint
    assert a.fingerprint == analyze(nn.Linear(4, 3, device="meta")).fingerprint


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_builds_on_meta(name):
    spec = load_spec(name)
    assert spec.n_params > 1_000_000
    assert all(p.numel > 0 for p in spec.params)


def test_published_sizes():
    assert abs(load_spec("llama-7b").n_params - 6_738_415_616) == 0
    assert 68.9e9 < load_spec("llama-70b").n_params < 69.1e9
    assert 1.55e9 < load_spec("gpt2-xl").n_params < 1.56e9


def test_shapes_file(tmp_path):
    f = tmp_path / "shapes.yaml"
    f.write_text("params:\n  - {name: enc.weight, shape: [512, 256]}\n"
                 "  - {name: enc.bias, shape: [512], dtype: bfloat16, trainable: false}\n")
    spec = load_spec(str(f))
    assert [(p.name, p.shape, p.dtype, p.trainable) for p in spec.params] == [
        ("enc.weight", (512, 256), "float32", True), ("enc.bias", (512,), "bfloat16", False)]
    j = tmp_path / "shapes.json"
    j.write_text(json.dumps({"params": [{"name": "w", "shape": [3, 4]}]}))
    assert load_spec(str(j)).params[0].shape == (3, 4)


@pytest.mark.parametrize("text", ["params: 3", "params:\n  - {name: w}\n", "params:\n  - {name: w, shape: [a]}\n",
                                  "params:\n  - {name: w, shape: [2], color: red}\n", "{{{", "",
                                  "params:\n  - {name: w, shape: [2], dtype: float99}\n"])
def test_malformed_shapes_file(tmp_path, text):
    f = tmp_path / "bad.yaml"
    f.write_text(text)
    with pytest.raises(UserError) as exc:
        load_spec(str(f))
    assert "bad.yaml" in str(exc.value)


def test_hf_config_file(tmp_path):
    from transformers import GPT2Config

    cfg = GPT2Config(n_layer=2, n_embd=64, n_head=2, vocab_size=100)
    cfg.architectures = ["GPT2LMHeadModel"]
    path = tmp_path / "config.json"
    cfg.to_json_file(str(path))
    spec = load_spec(f"hf:{path}")
    assert spec.params[0].name == "transformer.wte.weight" and spec.params[0].shape == (100, 64)


def test_factory_errors():
    with pytest.raises(UserError, match="cannot import"):
        load_model("no_such_pkg.models:mlp")
    with pytest.raises(UserError, match="no callable"):
        load_model("examples.models:nope")
    with pytest.raises(UserError, match="not a torch.nn.Module"):
        load_model("examples.models:not_a_module")
    with pytest.raises(UserError, match="unknown model"):
        load_model("gpt5")
    m = load_model("examples.models:mlp")
    assert all(p.device.type == "meta" for p in m.parameters())


def test_jax_pytree_factory_names_are_key_paths():
    pytest.importorskip("jax")
    spec = load_spec("examples.jax_models:jax_mlp")
    names = {p.name: p.shape for p in spec.params}
    assert names["params/Dense_0/kernel"] == (64, 256) and names["params/Dense_2/bias"] == (10,)
    assert spec.n_params == 64 * 256 + 256 + 256 * 256 + 256 + 256 * 10 + 10
    plan = make_plan(spec, "1GiB", source="examples.jax_models:jax_mlp")
    assert plan.totals.peak_bytes <= 2**30 and {e.name for e in plan.tensors} == set(names)
