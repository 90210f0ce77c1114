"""Issue 17: any input file under 1 MB is rejected or loaded within 200 MB of RSS (and in bounded time).

Hostile files of just under 1 MB — YAML alias and merge-key bombs, nesting 500,000 deep, half a million
values, one huge string, thousands of tensors, a config asking for 10^9 layers or 10^12-word vocabularies —
are loaded by the loader each kind goes through (plan, shapes file, ``hf:`` config, hardware profile, spectrum)
in one child process. Before each file the kernel's peak-RSS counter is reset (``/proc/self/clear_refs``), so
the growth measured is what that file cost: peak RSS after minus RSS before.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

LIMIT_MB = 200
MB = 2**20
SRC = str(Path(__file__).resolve().parents[1] / "src")

CHILD = r"""
import json, os, resource, sys, time
sys.path.insert(0, sys.argv[1])
import torch, transformers  # imported before measuring: what the files cost is measured, not the libraries
from sketchplan.errors import UserError
from sketchplan.files import YamlFile
from sketchplan.planner.plan import Plan
from sketchplan.planner.sources import build_hf_config, load_shapes_file
from sketchplan.planner.analysis import analyze
from sketchplan.profiles.schema import HardwareProfile
from sketchplan.planner.spectrum import SpectrumFile
from sketchplan.planner.analysis import check_spec

def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) * 1024
    return 0

def load(kind, path):
    if kind == "plan":
        Plan.load(path).to_yaml()
    elif kind == "shapes":
        check_spec(load_shapes_file(path), path)
    elif kind == "hf":
        spec = analyze(build_hf_config(path))
        check_spec(spec, path)
    elif kind == "profile":
        HardwareProfile.load(path)
    elif kind == "spectrum":
        SpectrumFile.load(path)

results = []
for kind, path in json.loads(sys.argv[2]):
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak RSS (VmHWM) to the current RSS
    before = status("VmRSS:")
    t = time.perf_counter()
    try:
        load(kind, path)
        outcome = "loaded"
    except UserError as exc:
        outcome = "rejected: " + str(exc)[:160]
    results.append({"file": os.path.basename(path), "kind": kind, "outcome": outcome,
                    "growth": status("VmHWM:") - before, "seconds": time.perf_counter() - t})
print(json.dumps(results))
"""


def _bomb(levels: int = 9, width: int = 10) -> str:
    lines = ["l0: &l0 [" + ", ".join(["lol"] * width) + "]"]
    for i in range(1, levels + 1):
        lines.append(f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * width) + "]")
    return "\n".join(lines) + "\n"


def _files(d: Path) -> list[tuple[str, Path]]:
    out = []

    def put(name: str, kind: str, text: str | bytes) -> None:
        p = d / name
        p.write_bytes(text if isinstance(text, bytes) else text.encode())
        assert p.stat().st_size < MB, name
        out.append((kind, p))

    near = MB - 4096
    good_entry = {"name": "t", "shape": [64, 64], "dtype": "float32", "trainable": True, "tied": [],
                  "method": "adam", "rank": None, "block_size": None, "graft": "adam", "momentum": "float32",
                  "state_bytes": 32772, "workspace_bytes": 16384, "score": 0.5, "step_ms": None, "variant": None}
    entry_text = yaml.safe_dump([good_entry], sort_keys=False)
    n_entries = near // (len(entry_text) + 8)
    plan_head = ("schema_version: 1\ncreated_by: x\nmodel: {source: m, fingerprint: f, n_params: 1, n_trainable: 1, "
                 "n_tensors: 1}\nbudget: {}\ntotals: {params_bytes: 0, grads_bytes: 0, state_bytes: 0, "
                 "workspace_bytes: 0, peak_bytes: 0, score: 0.5}\ntensors:\n")
    for kind, ext in (("plan", "yaml"), ("shapes", "yaml")):
        put(f"{kind}_bomb.{ext}", kind, _bomb())
        put(f"{kind}_merge_bomb.{ext}", kind, "a: &a {x: 1, y: 2}\n" + "".join(
            f"b{i}: &b{i} {{<<: [{', '.join(['*a'] + [f'*b{j}' for j in range(max(0, i - 8), i)])}], k{i}: 1}}\n"
            for i in range(400)))
        put(f"{kind}_deep.{ext}", kind, "[" * (near // 2) + "]" * (near // 2))
        put(f"{kind}_wide.{ext}", kind, "params: [" + "1," * (near // 2 - 10) + "1]\n")
        put(f"{kind}_string.{ext}", kind, "params: " + "x" * near + "\n")
        put(f"{kind}_keys.{ext}", kind, "{" + ",".join(f"k{i}: {i}" for i in range(near // 16)) + "}\n")
    put("plan_entries.yaml", "plan", plan_head + "".join(
        entry_text.replace("- name: t", f"- name: t{i}") for i in range(n_entries)))
    put("shapes_tensors.yaml", "shapes", "params:\n" + "".join(
        f"- {{name: layer.{i}.w, shape: [4096, 4096]}}\n" for i in range(near // 52)))
    put("shapes_huge.yaml", "shapes", "params:\n" + "".join(
        f"- {{name: w{i}, shape: [{2**24}, {2**24}]}}\n" for i in range(near // 52)))
    put("shapes_deep.json", "shapes", '{"params": ' + "[" * (near // 2 - 20) + "]" * (near // 2 - 20) + "}")
    put("shapes_numbers.json", "shapes", '{"params": [' + ",".join(["9" * 4000] * 200) + "]}")
    small = {"intermediate_size": 64, "hidden_size": 32, "num_attention_heads": 4, "num_key_value_heads": 4,
             "vocab_size": 100}
    put("hf_layers.json", "hf", json.dumps({"model_type": "llama", **small, "num_hidden_layers": 10**9}))
    put("hf_vocab.json", "hf", json.dumps({"model_type": "llama", **small, "num_hidden_layers": 1,
                                           "vocab_size": 10**12}))
    put("hf_padded.json", "hf", json.dumps({"model_type": "llama", **small, "num_hidden_layers": 2,
                                            "padding": "x" * (near - 400)}))
    put("profile_points.yaml", "profile", "name: p\ndevice: {kind: cpu, name: c, framework: torch}\nroofline: "
        "{peak_flops: 1.0e+9, bandwidth: 1.0e+9, overhead_s: 1.0e-6}\ntables:\n- {kernel: gemm, variant: mm, "
        "points: [" + ",".join(["{dims: [8, 8, 8], seconds: 1.0e-6}"] * (near // 40)) + "]}\n")
    put("spectrum_eigs.yaml", "spectrum", "steps: 1\nrank: 1\ntensors:\n  w:\n    shape: [64, 64]\n    merged: "
        "[64, 64]\n    axes:\n    - {dim: 64, trace: 1.0, diag_mass: 0.5, eigenvalues: [" +
        ",".join(["1.0"] * (near // 5)) + "]}\n")
    return out


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc/self/clear_refs")
def test_files_under_1mb_are_rejected_or_loaded_within_200mb(tmp_path):
    pytest.importorskip("transformers")
    files = _files(tmp_path)
    res = subprocess.run([sys.executable, "-c", CHILD, SRC, json.dumps([(k, str(p)) for k, p in files])],
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    results = json.loads(res.stdout.strip().splitlines()[-1])
    assert len(results) == len(files) >= 20
    report = "\n".join(f"{r['file']:24} {r['growth'] / MB:7.1f} MB {r['seconds']:6.2f} s  {r['outcome'][:90]}"
                       for r in results)
    print(report)
    for r in results:
        assert r["growth"] <= LIMIT_MB * MB, report
        assert r["seconds"] < 60, report
    loaded = {r["file"] for r in results if r["outcome"] == "loaded"}
    assert {"plan_entries.yaml", "shapes_tensors.yaml", "profile_points.yaml"} <= loaded, report
    assert "hf_layers.json" not in loaded and "plan_bomb.yaml" not in loaded, report
