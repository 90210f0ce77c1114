"""Issue 17: bad input, tried as a hostile user would, across `plan`, `show`, `check`, `profile` and `probe`.

The cases are generated from tables — output-target classes × every output flag of every subcommand, number
classes × numeric flags, file classes × the subcommands that read them — and each one must:

- exit with code 2 and print exactly one line, ``error: …``, with no traceback;
- name the offending flag, file or field (the case's needles);
- change no pre-existing file (regular files byte-compared, links, modes and types compared) and create none;
- leave no temporary file behind.

Everything runs in-process (``sketchplan.cli.main``); nothing is measured or planned for real, because every
check happens before the work.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest
import yaml

from sketchplan.cli import main

ROOT = hasattr(os, "geteuid") and os.geteuid() == 0
CHATTR = shutil.which("chattr")


# ---------------------------------------------------------------- the files every case may read


MODULE = "b17_models"  # a module written into the base directory (outputs must never overwrite it)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    from sketchplan.planner import make_plan
    from sketchplan.planner.sources import load_spec
    from sketchplan.profiles.registry import shipped_profiles

    b = tmp_path_factory.mktemp("inputs")
    (b / f"{MODULE}.py").write_text(
        "import torch, torch.nn as nn\n"
        "def mlp():\n    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))\n"
        "def data():\n    return [(torch.randn(4, 8), torch.randint(0, 4, (4,)))]\n")
    sys.path.insert(0, str(b))
    shapes = b / "shapes.yaml"
    shapes.write_text(yaml.safe_dump({"params": [{"name": "enc.weight", "shape": [64, 32]},
                                                 {"name": "enc.bias", "shape": [64]},
                                                 {"name": "head.weight", "shape": [10, 64]}]}))
    plan = make_plan(load_spec(str(shapes)), "64MiB", source=str(shapes))
    plan.save(b / "plan.yaml")
    good = yaml.safe_load((b / "plan.yaml").read_text())
    _write_bad_plans(b, good)
    _write_bad_shapes(b)
    _write_bad_configs(b)
    profile = shipped_profiles()[0].model_dump(mode="json")
    _write_bad_profiles(b, profile)
    _write_bad_spectra(b)
    yield b
    sys.path.remove(str(b))


def _mutate(data: dict, path: str, value) -> dict:
    out = json.loads(json.dumps(data))
    keys = path.split(".")
    cur = out
    for k in keys[:-1]:
        cur = cur[int(k)] if isinstance(cur, list) else cur[k]
    last = keys[-1]
    if isinstance(cur, list):
        cur[int(last)] = value
    else:
        cur[last] = value
    return out


def _dump(path: Path, data) -> None:
    path.write_text(yaml.safe_dump(data, sort_keys=False))


BOMB = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{c}: &{c} [{', '.join(['*' + p] * 10)}]\n" for p, c in zip("abcdefgh", "bcdefghi")) + "params: *i\n"

PLAN_FILES = {  # name → (how it is written, the needle its message must contain)
    "plan_trunc.yaml": ("truncated", "plan_trunc.yaml"),
    "plan_binary.yaml": ("binary", "not text"),
    "plan_bomb.yaml": (BOMB, "alias"),
    "plan_deep.yaml": ("[" * 200 + "]" * 200, "nests deeper"),
    "plan_recursive.yaml": ("a: &a [1, *a]\n", "alias"),
    "plan_python.yaml": ("!!python/object/apply:os.system ['echo hacked']\n", "not valid YAML"),
    "plan_list.yaml": ("- a\n- b\n", "expected a mapping"),
    "plan_empty.yaml": ("", "does not hold a plan"),
    "plan_digits.yaml": ("x: " + "7" * 5000 + "\n", "not valid YAML"),
    "plan_inf_lr.yaml": (("defaults.lr", ".inf"), "defaults.lr"),
    "plan_nan_score.yaml": (("totals.score", ".nan"), "totals.score"),
    "plan_score_2.yaml": (("totals.score", 2.0), "totals.score"),
    "plan_neg_bytes.yaml": (("tensors.0.state_bytes", -5), "tensors.0.state_bytes"),
    "plan_huge_int.yaml": (("totals.state_bytes", 10**40), "totals.state_bytes"),
    "plan_neg_dim.yaml": (("tensors.0.shape.0", -1), "tensors.0.shape.0"),
    "plan_dtype.yaml": (("tensors.0.dtype", "float99"), "tensors.0.dtype"),
    "plan_world.yaml": (("settings.world_size", 0), "settings.world_size"),
    "plan_budget.yaml": (("budget.memory_bytes", -1), "budget.memory_bytes"),
    "plan_time.yaml": (("budget.time_budget_ms", ".nan"), "budget.time_budget_ms"),
    "plan_rank.yaml": (("grid.ranks.0", 0), "grid.ranks.0"),
    "plan_field.yaml": (("tensors.0.colour", "blue"), "unknown field"),
    "plan_type.yaml": (("totals.peak_bytes", "lots"), "totals.peak_bytes"),
}


def _write_bad_plans(b: Path, good: dict) -> None:
    text = (b / "plan.yaml").read_text()
    for name, (how, _) in PLAN_FILES.items():
        p = b / name
        if how == "truncated":
            p.write_text(text[: len(text) * 2 // 5])
        elif how == "binary":
            p.write_bytes(bytes(range(256)) * 4)
        elif isinstance(how, tuple):
            path, value = how
            if isinstance(value, str) and value.startswith("."):
                p.write_text(yaml.safe_dump(_mutate(good, path, "@@"), sort_keys=False).replace("'@@'", value))
            else:
                _dump(p, _mutate(good, path, value))
        else:
            p.write_text(how)
    with open(b / "plan_huge.yaml", "wb") as f:  # 65 MiB, sparse: refused by size before reading it all
        f.truncate(65 * 2**20)
    os.mkfifo(b / "plan_fifo.yaml")
    (b / "plan_dir.yaml").mkdir()


SHAPES = {  # name → (content, needle); content is YAML/JSON text or a params list
    "s_huge.yaml": ([{"name": "w", "shape": [10**12, 10**12]}], "elements"),
    "s_2p63.yaml": ([{"name": "w", "shape": [2**63]}], "every dimension"),
    "s_neg.yaml": ([{"name": "w", "shape": [4, -1]}], "non-negative"),
    "s_float.yaml": ([{"name": "w", "shape": [4.5]}], "non-negative integers"),
    "s_bool.yaml": ([{"name": "w", "shape": [True]}], "non-negative integers"),
    "s_noname.yaml": ([{"shape": [4]}], "needs 'name'"),
    "s_dup.yaml": ([{"name": "w", "shape": [4]}, {"name": "w", "shape": [5]}], "appears twice"),
    "s_dtype.yaml": ([{"name": "w", "shape": [4], "dtype": "float99"}], "unknown dtype"),
    "s_field.yaml": ([{"name": "w", "shape": [4], "colour": "blue"}], "unknown field"),
    "s_trainable.yaml": ([{"name": "w", "shape": [4], "trainable": "yes"}], "'trainable'"),
    "s_dims.yaml": ([{"name": "w", "shape": [1] * 65}], "at most 64"),
    "s_empty.yaml": ([], "'params:' list"),
    "s_notlist.yaml": ("params: 5\n", "'params:' list"),
    "s_bomb.yaml": (BOMB, "alias"),
    "s_deep.yaml": ("params: " + "[" * 100 + "]" * 100 + "\n", "nests deeper"),
    "s_syntax.yaml": ("params: [\n", "not valid YAML"),
    "s_binary.yaml": (b"\xff\xfe\x00params", "not text"),
    "s_nan.json": ('{"params": [{"name": "w", "shape": [NaN]}]}', "NaN"),
    "s_inf.json": ('{"params": [{"name": "w", "shape": [Infinity]}]}', "Infinity"),
    "s_1e400.json": ('{"params": [{"name": "w", "shape": [1e400]}]}', "too large"),
    "s_deep.json": ('{"params": ' + "[" * 5000 + "]" * 5000 + "}", "nests deeper"),
    "s_syntax.json": ('{"params": [', "not valid JSON"),
}
SHAPES_PLAN_ONLY = {  # valid files whose models have nothing to plan (check would report a regression: exit 1)
    "s_frozen.yaml": ([{"name": "w", "shape": [4, 4], "trainable": False}], "frozen"),
    "s_complex.yaml": ([{"name": "w", "shape": [4, 4], "dtype": "complex64"}], "excluded"),
}


def _write_bad_shapes(b: Path) -> None:
    for name, (content, _) in {**SHAPES, **SHAPES_PLAN_ONLY}.items():
        p = b / name
        if isinstance(content, list):
            p.write_text(yaml.safe_dump({"params": content}))
        elif isinstance(content, bytes):
            p.write_bytes(content)
        else:
            p.write_text(content)


CONFIGS = {  # hf: config.json files → needle
    "c_negative.json": ({"model_type": "bert", "hidden_size": -8}, "transformers cannot"),
    "c_fraction.json": ({"model_type": "bert", "hidden_size": 7.5, "num_attention_heads": 1}, "transformers cannot"),
    "c_text.json": ({"model_type": "bert", "hidden_size": "big"}, "transformers cannot"),
    "c_heads.json": ({"model_type": "bert", "hidden_size": 100, "num_attention_heads": 7}, "transformers cannot"),
    "c_tokenizer.json": ({"model_type": "bert", "architectures": ["BertTokenizer"]}, "not a transformers model"),
    "c_archs.json": ({"model_type": "bert", "architectures": 5}, "'architectures'"),
    "c_unknown.json": ({"model_type": "no_such_model"}, "is not one of the"),
    "c_notype.json": ({"hidden_size": 8}, "no 'model_type'"),
    "c_syntax.json": ("{", "not valid JSON"),
    "c_nan.json": ('{"model_type": "bert", "hidden_size": NaN}', "NaN"),
}


def _write_bad_configs(b: Path) -> None:
    for name, (content, _) in CONFIGS.items():
        small = {"num_hidden_layers": 1, "intermediate_size": 16, "vocab_size": 50}
        text = content if isinstance(content, str) else json.dumps({**small, **content})
        (b / name).write_text(text)


PROFILES = {
    "hw_flops.yaml": (("roofline.peak_flops", 0), "roofline.peak_flops"),
    "hw_bw.yaml": (("roofline.bandwidth", ".inf"), "roofline.bandwidth"),
    "hw_seconds.yaml": (("tables.0.points.0.seconds", -1.0), "tables.0.points.0.seconds"),
    "hw_dims.yaml": (("tables.0.points.0.dims", []), "tables.0.points.0.dims"),
    "hw_cores.yaml": (("device.cores", 0), "device.cores"),
    "hw_field.yaml": (("roofline.colour", 1), "unknown field"),
}


def _write_bad_profiles(b: Path, good: dict) -> None:
    for name, ((path, value), _) in PROFILES.items():
        if isinstance(value, str) and value.startswith("."):
            (b / name).write_text(yaml.safe_dump(_mutate(good, path, "@@"), sort_keys=False).replace("'@@'", value))
        else:
            _dump(b / name, _mutate(good, path, value))


def _spectrum(**axis) -> dict:
    ax = {"dim": 64, "eigenvalues": [3.0, 1.0], "trace": 5.0, "escaped": 0.1, "diag_mass": 0.5, **axis}
    ax2 = {**ax, "dim": 32}
    return {"steps": 10, "rank": 2, "tensors": {"enc.weight": {"shape": [64, 32], "merged": [64, 32],
                                                              "axes": [ax, ax2]}}}


SPECTRA = {
    "sp_axes.yaml": ({**_spectrum(), "tensors": {"enc.weight": {"shape": [64, 32], "merged": [64, 32], "axes": []}}},
                     "axes"),
    "sp_diag.yaml": (_spectrum(diag_mass=2.0), "diag_mass"),
    "sp_eig.yaml": (_spectrum(eigenvalues=[-1.0]), "eigenvalues"),
    "sp_steps.yaml": ({**_spectrum(), "steps": 0}, "steps"),
}


def _write_bad_spectra(b: Path) -> None:
    for name, (data, _) in SPECTRA.items():
        _dump(b / name, data)


# ---------------------------------------------------------------- cases


@dataclass
class Case:
    id: str
    argv: list[str]  # {B}: the base directory of input files, {W}: this case's own directory, {X}: the target
    needles: list[str]
    target: Callable[[Path, Path], str] | None = None  # makes the obstacle in {W}, returns {X}
    root_only: bool = False
    chattr: bool = False
    extra: dict = field(default_factory=dict)


# --- output targets: every output flag of every subcommand × every class of bad target

def _file(w: Path, name: str, mode: int | None = None) -> Path:
    p = w / name
    p.write_text("old content\n")
    if mode is not None:
        p.chmod(mode)
    return p


def _immutable(p: Path) -> None:
    subprocess.run([CHATTR, "+i", str(p)], check=True)


def t_empty(b, w):
    return ""


def t_dir(b, w):
    (w / "d").mkdir()
    return str(w / "d")


def t_missing_parent(b, w):
    return str(w / "nope" / "o.out")


def t_parent_is_file(b, w):
    _file(w, "f")
    return str(w / "f" / "o.out")


def t_trailing_slash(b, w):
    return str(w / "new") + "/"


def t_read_only(b, w):
    return str(_file(w, "ro.out", 0o444))


def t_immutable(b, w):
    p = _file(w, "imm.out")
    _immutable(p)
    return str(p)


def t_unwritable_dir(b, w):
    d = w / "locked"
    d.mkdir()
    if ROOT:
        _immutable(d)
    else:
        d.chmod(0o555)
    return str(d / "o.out")


def t_long_name(b, w):
    return str(w / ("n" * 300 + ".out"))


def t_fifo(b, w):
    os.mkfifo(w / "fifo")
    return str(w / "fifo")


def t_device(b, w):
    os.mknod(w / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    return str(w / "null")


def t_link_loop(b, w):
    os.symlink("l2", w / "l1")
    os.symlink("l1", w / "l2")
    return str(w / "l1")


def t_link_to_dir(b, w):
    (w / "d2").mkdir()
    os.symlink(w / "d2", w / "ld")
    return str(w / "ld")


def t_link_to_read_only(b, w):
    _file(w, "target.out", 0o444)
    os.symlink(w / "target.out", w / "lro")
    return str(w / "lro")


def t_dangling_into_missing_dir(b, w):
    os.symlink(w / "missing" / "t.out", w / "dl")
    return str(w / "dl")


TARGETS = [  # (class, make the target, needle, root only, needs chattr)
    ("empty", t_empty, "empty", False, False),
    ("directory", t_dir, "is a directory", False, False),
    ("missing-dir", t_missing_parent, "does not exist", False, False),
    ("parent-is-file", t_parent_is_file, "not a directory", False, False),
    ("trailing-slash", t_trailing_slash, "names a directory", False, False),
    ("read-only", t_read_only, "read-only", False, False),
    ("immutable", t_immutable, "read-only", True, True),
    ("unwritable-dir", t_unwritable_dir, "not writable", False, ROOT),
    ("name-too-long", t_long_name, "longer than the file system allows", False, False),
    ("fifo", t_fifo, "FIFO", False, False),
    ("device", t_device, "character device", True, False),
    ("link-loop", t_link_loop, "link loop", False, False),
    ("link-to-dir", t_link_to_dir, "is a directory", False, False),
    ("link-to-read-only", t_link_to_read_only, "read-only", False, False),
    ("dangling-link", t_dangling_into_missing_dir, "does not exist", False, False),
]

OUTPUT_FLAGS = [  # (subcommand label, argv with {X} for the output, the flag, an input it must not overwrite)
    ("plan", ["plan", "--model", "{B}/shapes.yaml", "--memory-budget", "64MiB", "--out", "{X}"], "--out",
     "{B}/shapes.yaml"),
    ("plan-update", ["plan", "--update", "{B}/plan.yaml", "--out", "{X}"], "--out", "{B}/shapes.yaml"),
    ("check-json", ["check", "{B}/plan.yaml", "--json", "{X}"], "--json", "{B}/plan.yaml"),
    ("check-junit", ["check", "{B}/plan.yaml", "--junit", "{X}"], "--junit", "{B}/shapes.yaml"),
    ("show-plot", ["show", "{B}/plan.yaml", "--plot", "{X}"], "--plot", "{B}/plan.yaml"),
    ("probe", ["probe", "--model", f"{MODULE}:mlp", "--data", f"{MODULE}:data", "--steps", "1", "--out", "{X}"],
     "--out", f"{{B}}/{MODULE}.py"),
    ("profile", ["profile", "--quick", "--out", "{X}"], "--out", None),
]

CASES: list[Case] = []
for cmd, argv, flag, an_input in OUTPUT_FLAGS:
    for cls, make, needle, root_only, chattr in TARGETS:
        CASES.append(Case(f"out-{cmd}-{cls}", argv, [flag, needle], make, root_only, chattr))
    if an_input:
        CASES.append(Case(f"out-{cmd}-is-an-input", argv, [flag, "this command reads"],
                          lambda b, w, i=an_input: i.replace("{B}", str(b))))
CASES += [
    Case("out-check-json-equals-junit", ["check", "{B}/plan.yaml", "--json", "{W}/r", "--junit", "{W}/r"],
         ["--json", "--junit", "same file"]),
    Case("out-update-read-only-plan", ["plan", "--update", "{X}"], ["--update", "read-only"],
         lambda b, w: (shutil.copy(b / "plan.yaml", w / "p.yaml"), (w / "p.yaml").chmod(0o444), str(w / "p.yaml"))[2]),
    Case("out-plot-unsupported-extension", ["show", "{B}/plan.yaml", "--plot", "{X}"], ["--plot", "cannot write .xyz"],
         lambda b, w: str(_file(w, "existing.xyz"))),
]

# --- numbers: every numeric flag × the classes of bad numbers

PLAN = ["plan", "--model", "{B}/shapes.yaml"]
NUMBERS = [  # (argv prefix, flag, bad values)
    (PLAN, "--memory-budget", ["nan", "inf", "1e400", "-1GiB", "lots", "1e30GiB", "12 parsecs"]),
    (PLAN, "--reserve", ["1e400", "-1", "nan", "x"]),
    (PLAN, "--time-budget-ms", ["nan", "inf", "0", "-5", "abc", "1e400"]),
    (PLAN, "--world-size", ["0", "-1", "1e20", "abc", "1.5", "2000000"]),
    (PLAN, "--lr", ["-1", "nan", "inf", "0", "abc", "-inf"]),
    (PLAN, "--weight-decay", ["-1", "nan", "inf"]),
    (PLAN, "--merge-dims", ["0", "-1", "1.5", "1e12"]),
    (PLAN, "--max-precond-dim", ["-1", "0", "nan"]),
    (PLAN, "--precondition-frequency", ["0", "nan", "-3"]),
    (PLAN, "--ranks", ["0", "-1,16", "abc", "1e400", str(2**40), ",".join(map(str, range(1, 70)))]),
    (PLAN, "--block-sizes", ["0", "-5", "x", "256,-1"]),
    (["check", "{B}/plan.yaml"], "--tolerance", ["-1", "nan", "inf", "abc"]),
    (["check", "{B}/plan.yaml"], "--budget", ["nan", "1e400", "-1", "lots"]),
    (["probe", "--model", f"{MODULE}:mlp", "--data", f"{MODULE}:data", "--out", "{W}/s.yaml"], "--steps",
     ["0", "-1", "1e9", "abc"]),
    (["probe", "--model", f"{MODULE}:mlp", "--data", f"{MODULE}:data", "--out", "{W}/s.yaml"], "--rank",
     ["0", "-2", "1e9"]),
    (["probe", "--model", f"{MODULE}:mlp", "--data", f"{MODULE}:data", "--out", "{W}/s.yaml"], "--lr",
     ["-1", "nan", "inf"]),
    (["profile", "--out", "{W}/p.yaml"], "--threads", ["0", "-1", "1e9", "x"]),
]
for prefix, flag, values in NUMBERS:
    for v in values:
        CASES.append(Case(f"num-{prefix[0]}{flag}={v[:12]}", prefix + [f"{flag}={v}"], [flag]))

# --- other flags

CASES += [
    Case("flag-param-dtype", PLAN + ["--param-dtype", "complex64"], ["--param-dtype"]),
    Case("flag-grad-dtype", PLAN + ["--grad-dtype", "int8"], ["--grad-dtype"]),
    Case("flag-state-dtype", PLAN + ["--state-dtype", "float8"], ["--state-dtype"]),
    Case("flag-method", PLAN + ["--methods", "adam,lamb"], ["unknown method 'lamb'"]),
    Case("flag-graft", PLAN + ["--grafts", "lamb"], ["unknown graft 'lamb'"]),
    Case("flag-momentum", PLAN + ["--momenta", "float16"], ["unknown momentum 'float16'"]),
    Case("flag-unknown", PLAN + ["--colour", "blue"], ["--colour"]),
    Case("flag-explain", PLAN + ["--explain", "enc.weights"], ["enc.weights"]),
    Case("flag-hardware-name", PLAN + ["--hardware", "a100-imaginary"], ["--hardware"]),
    Case("flag-check-device-meta", ["check", "{B}/plan.yaml", "--measure", "--device", "meta"], ["--device"]),
    Case("flag-check-device-bad", ["check", "{B}/plan.yaml", "--measure", "--device", "gpu0"], ["--device"]),
    Case("flag-profile-device", ["profile", "--device", "meta", "--out", "{W}/p.yaml"], ["device 'meta'"]),
    Case("flag-profile-framework", ["profile", "--framework", "tensorflow"], ["--framework"]),
    Case("flag-probe-missing-data", ["probe", "--model", f"{MODULE}:mlp", "--out", "{W}/s.yaml"], ["--data"]),
    Case("model-preset", ["plan", "--model", "gpt5"], ["unknown model 'gpt5'"]),
    Case("model-no-module", ["plan", "--model", "nopkg.nomod:f"], ["nopkg.nomod"]),
    Case("model-no-params", ["plan", "--model", "bad_models:no_params"], ["bad_models:no_params", "no parameters"]),
    Case("model-all-frozen", ["plan", "--model", "bad_models:all_frozen"], ["bad_models:all_frozen", "frozen"]),
    Case("model-complex-only", ["plan", "--model", "bad_models:complex_only"], ["excluded"]),
    Case("model-raises", ["plan", "--model", "bad_models:raises"], ["bad_models:raises"]),
    Case("model-none", ["plan", "--model", "bad_models:returns_none"], ["bad_models:returns_none"]),
    Case("probe-empty-data", ["probe", "--model", f"{MODULE}:mlp", "--data", "bad_models:empty_data", "--out",
                              "{W}/s.yaml", "--steps", "2"], ["--data", "no batch"]),
    Case("probe-nan-data", ["probe", "--model", "examples.models:mlp", "--data", "bad_models:nan_data", "--out",
                            "{W}/s.yaml", "--steps", "2"], ["finite"]),
    Case("probe-wrong-shape", ["probe", "--model", f"{MODULE}:mlp", "--data", "bad_models:wrong_shape_data",
                               "--out", "{W}/s.yaml", "--steps", "1"], ["--loss"]),
    Case("probe-not-iterable", ["probe", "--model", f"{MODULE}:mlp", "--data", "bad_models:not_iterable_data",
                                "--out", "{W}/s.yaml"], ["--data"]),
    Case("probe-bad-loss", ["probe", "--model", f"{MODULE}:mlp", "--data", f"{MODULE}:data", "--loss",
                            "bad_models:bad_loss", "--out", "{W}/s.yaml", "--steps", "1"], ["--loss"]),
]

# --- files: every class of bad file × every subcommand that reads it

for name, (_, needle) in PLAN_FILES.items():
    for label, argv in (("show", ["show", f"{{B}}/{name}"]), ("check", ["check", f"{{B}}/{name}"]),
                        ("update", ["plan", "--update", f"{{B}}/{name}", "--out", "{W}/new.yaml"])):
        CASES.append(Case(f"plan-{label}-{name}", argv, [name, needle]))
for name, needle in (("plan_huge.yaml", "larger than 64 MiB"), ("plan_fifo.yaml", "not a regular file"),
                     ("plan_dir.yaml", "is a directory"), ("plan_missing.yaml", "does not exist")):
    for label, argv in (("show", ["show", f"{{B}}/{name}"]), ("check", ["check", f"{{B}}/{name}"]),
                        ("update", ["plan", "--update", f"{{B}}/{name}", "--out", "{W}/new.yaml"])):
        CASES.append(Case(f"plan-{label}-{name}", argv, [name, needle]))
for name, (_, needle) in SHAPES.items():
    CASES.append(Case(f"shapes-plan-{name}", ["plan", "--model", f"{{B}}/{name}", "--out", "{W}/p.yaml"],
                      [name, needle]))
    CASES.append(Case(f"shapes-check-{name}", ["check", "{B}/plan.yaml", "--model", f"{{B}}/{name}",
                                                "--json", "{W}/r.json"], [name, needle]))
for name, (_, needle) in SHAPES_PLAN_ONLY.items():
    CASES.append(Case(f"shapes-plan-{name}", ["plan", "--model", f"{{B}}/{name}", "--out", "{W}/p.yaml"],
                      [name, needle]))
for name, (_, needle) in CONFIGS.items():
    CASES.append(Case(f"hf-{name}", ["plan", "--model", f"hf:{{B}}/{name}", "--out", "{W}/p.yaml"], [name, needle]))
for name, (_, needle) in PROFILES.items():
    CASES.append(Case(f"hardware-{name}", PLAN + ["--hardware", f"{{B}}/{name}", "--out", "{W}/p.yaml"],
                      [name, needle]))
for name, (_, needle) in SPECTRA.items():
    CASES.append(Case(f"spectrum-{name}", PLAN + ["--spectrum", f"{{B}}/{name}", "--out", "{W}/p.yaml"],
                      [name, needle]))


# ---------------------------------------------------------------- the checks


def snapshot(*dirs: Path) -> dict[str, tuple]:
    """Every entry under ``dirs``: type, mode, and bytes (regular files up to 1 MiB; larger ones by size, mtime
    and inode), link target. FIFOs and devices are never opened."""
    out = {}
    for d in dirs:
        for root, dnames, fnames in os.walk(d):
            for name in dnames + fnames:
                p = os.path.join(root, name)
                st = os.lstat(p)
                if stat.S_ISLNK(st.st_mode):
                    out[p] = ("link", os.readlink(p))
                elif stat.S_ISREG(st.st_mode):
                    body = Path(p).read_bytes() if st.st_size <= 2**20 else (st.st_size, st.st_mtime_ns, st.st_ino)
                    out[p] = ("file", stat.S_IMODE(st.st_mode), body)
                else:
                    out[p] = ("other", st.st_mode, st.st_ino)
    return out


def temporaries(*dirs: Path) -> list[str]:
    found = []
    for d in dirs:
        for root, dnames, fnames in os.walk(d):
            found += [os.path.join(root, n) for n in fnames if ".sketchplan-" in n or n.endswith(".tmp")]
    return found


@pytest.fixture
def workspace(tmp_path):
    yield tmp_path
    if CHATTR and ROOT:  # undo immutable flags so that pytest can remove the directory
        for root, dnames, fnames in os.walk(tmp_path):
            for n in dnames + fnames:
                p = os.path.join(root, n)
                if not os.path.islink(p):
                    subprocess.run([CHATTR, "-i", p], capture_output=True)
    for root, dnames, _ in os.walk(tmp_path):
        for n in dnames:
            os.chmod(os.path.join(root, n), 0o755)


def test_there_are_at_least_200_cases():
    assert len(CASES) >= 200, len(CASES)
    assert len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, base: Path, workspace: Path, capsys):
    if case.root_only and not ROOT:
        pytest.skip("needs root (device nodes, immutable files)")
    if case.chattr and not CHATTR:
        pytest.skip("needs chattr")
    w = workspace
    x = case.target(base, w) if case.target else ""

    def fill(s: str) -> str:
        return s.replace("{B}", str(base)).replace("{W}", str(w)).replace("{X}", x)

    argv = [fill(a) for a in case.argv]
    before = snapshot(base, w)
    capsys.readouterr()
    code = main(argv)
    out, err = capsys.readouterr()
    text = " ".join(err.split())
    assert code == 2, f"exit {code}: {text or out[-500:]}"
    assert "Traceback" not in err + out
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: "), err
    for needle in case.needles:
        assert fill(needle) in text, f"{fill(needle)!r} not in: {text}"
    assert snapshot(base, w) == before, "a pre-existing file changed or a new file appeared"
    assert not temporaries(base, w)
