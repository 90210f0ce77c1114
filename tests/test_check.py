"""`sketchplan check`: regressions, reports, bad input; `plan --update`; the pytest helper."""

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from sketchplan.cli import main
from sketchplan.planner.check import CheckReport
from sketchplan.planner.plan import Plan
from sketchplan.testing import assert_plan_holds

MLP = "examples.models:mlp"


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, " ".join(out.split()), err


@pytest.fixture
def plan_file(tmp_path, capsys):
    path = tmp_path / "plan.yaml"
    assert main(["plan", "--model", MLP, "--memory-budget", "64MiB", "--out", str(path)]) == 0
    capsys.readouterr()
    return path


def test_unchanged_model_passes(plan_file, capsys):
    code, out, _ = run(capsys, "check", str(plan_file), "--model", MLP)
    assert code == 0 and "PASS" in out


def test_widened_layer_fails_naming_tensor_and_delta(plan_file, capsys):
    code, out, _ = run(capsys, "check", str(plan_file), "--model", "examples.models:mlp_wide")
    assert code == 1 and "REGRESSION" in out
    assert "2.weight reshaped 256×256 → 512×256" in out
    assert "4.weight reshaped 10×256 → 10×512" in out


def test_removed_and_added_tensors_reported(plan_file, tmp_path, capsys):
    j = tmp_path / "r.json"
    code, out, _ = run(capsys, "check", str(plan_file), "--model", "examples.models:mlp_reshuffled", "--json", str(j))
    assert code == 1
    report = CheckReport.model_validate(json.loads(j.read_text()))
    status = {t.name: t.status for t in report.tensors}
    assert status["4.weight"] == "removed" and status["head.weight"] == "added"
    removed = next(t for t in report.tensors if t.name == "4.weight")
    assert removed.delta == -removed.old_bytes < 0


def test_lowered_budget_fails(plan_file, capsys):
    code, out, _ = run(capsys, "check", str(plan_file), "--budget", "1MiB")
    assert code == 1 and "budget FAIL" in out


def test_tolerance_applies_to_growth(plan_file, tmp_path, capsys):
    import yaml

    data = yaml.safe_load(plan_file.read_text())
    target = next(t for t in data["tensors"] if t["state_bytes"] > 100_000)
    target["state_bytes"] = int(target["state_bytes"] * 0.99)  # pretend the plan predicted 1% less
    data["totals"]["state_bytes"] = sum(t["state_bytes"] for t in data["tensors"])
    plan_file.write_text(yaml.safe_dump(data))
    code, out, _ = run(capsys, "check", str(plan_file))
    assert code == 1 and target["name"] in out
    code, _, _ = run(capsys, "check", str(plan_file), "--tolerance", "2")
    assert code == 0


def test_reports_json_round_trip_and_junit(plan_file, tmp_path, capsys):
    j, x = tmp_path / "r.json", tmp_path / "r.xml"
    code, _, _ = run(capsys, "check", str(plan_file), "--model", "examples.models:mlp_wide", "--json", str(j),
                     "--junit", str(x))
    data = json.loads(j.read_text())
    report = CheckReport.model_validate(data)
    assert json.loads(report.model_dump_json()) == data and report.exit_code == code == 1
    root = ET.parse(x).getroot()
    cases = root.findall(".//testcase")
    assert [c.get("name") for c in cases] == [c.name for c in report.checks]
    failed = {c.get("name") for c in cases if c.find("failure") is not None}
    assert failed == {c.name for c in report.checks if not c.ok} and "structure" in failed


def test_documented_schema_is_current():
    path = Path(__file__).parent.parent / "docs" / "check-report.schema.json"
    assert json.loads(path.read_text()) == CheckReport.model_json_schema()


@pytest.mark.parametrize("mutate,needle", [
    (lambda p: p.write_text("schema_version: 1\ntensors: [oops\n"), "not valid YAML"),
    (lambda p: p.write_text("hello: 1\n"), "field"),
    (lambda p: p.unlink(), "does not exist"),
])
def test_malformed_plan_exit_2(plan_file, capsys, mutate, needle):
    mutate(plan_file)
    code, _, err = run(capsys, "check", str(plan_file))
    assert code == 2 and needle in err and len(err.strip().splitlines()) == 1


def test_wrong_model_exit_2(plan_file, capsys):
    code, _, err = run(capsys, "check", str(plan_file), "--model", "examples.models:nope")
    assert code == 2 and "no callable" in err


def test_plan_update_accepts_growth(plan_file, capsys):
    code, _, _ = run(capsys, "plan", "--update", str(plan_file), "--model", "examples.models:mlp_wide")
    assert code == 0
    code, out, _ = run(capsys, "check", str(plan_file), "--model", "examples.models:mlp_wide")
    assert code == 0


def test_pytest_helper(plan_file):
    from examples.models import mlp, mlp_wide

    assert assert_plan_holds(str(plan_file), mlp()).ok
    with pytest.raises(AssertionError, match="2.weight"):
        assert_plan_holds(str(plan_file), mlp_wide())


def test_measure_materialised_custom_model_zero_difference(tmp_path, capsys):
    path = tmp_path / "conv.yaml"
    assert main(["plan", "--model", "examples.models:convnet", "--memory-budget", "32MiB", "--out", str(path),
                 "--methods", "adam,shampoo,blocked_shampoo,sketchy,extreme_tensoring,kradagrad"]) == 0
    capsys.readouterr()
    j = tmp_path / "r.json"
    code, out, _ = run(capsys, "check", str(path), "--measure", "--json", str(j))
    report = CheckReport.model_validate(json.loads(j.read_text()))
    assert code == 0 and report.measured.mode == "materialised"
    assert {t.name for t in report.measured.tensors} == {e.name for e in Plan.load(path).tensors}
    assert all(t.measured_bytes == t.predicted_bytes for t in report.measured.tensors)
    assert report.measured.measured_state_bytes == report.old_state_bytes
    peak = next(c for c in report.checks if c.name == "measured-peak")
    m = report.measured  # MemTracker's step peak on CPU, under the prediction (which also bounds eigh's scratch
    assert peak.ok and 0 < m.peak_allocated_bytes <= m.predicted_peak_bytes  # and float64 retries, not hit here)


def test_measure_fails_when_the_measured_peak_is_above_the_prediction(tmp_path, capsys):
    path = tmp_path / "mlp.yaml"
    assert main(["plan", "--model", "examples.models:mlp", "--out", str(path), "--methods", "adam"]) == 0
    plan = Plan.load(path)
    plan.totals.peak_bytes = plan.totals.params_bytes  # a prediction that forgot gradients, state and transients
    path.write_text(plan.to_yaml())
    capsys.readouterr()
    code, out, _ = run(capsys, "check", str(path), "--measure")
    assert code == 1 and "the prediction is too low" in out


def test_measure_sampled_when_model_is_a_shapes_file(tmp_path):
    from sketchplan.planner import make_plan
    from sketchplan.verify import check
    from sketchplan.planner.sources import load_spec

    f = tmp_path / "shapes.yaml"
    f.write_text("params:\n  - {name: a.weight, shape: [96, 64]}\n  - {name: b.weight, shape: [96, 64]}\n"
                 "  - {name: c.weight, shape: [3, 8, 5, 5]}\n  - {name: c.bias, shape: [3]}\n")
    spec = load_spec(str(f))
    plan = make_plan(spec, "2MiB", source=str(f))
    report = check(plan, spec, measure=True)
    m = report.measured
    assert report.ok and m.mode == "sampled" and "not a torch module" in m.note
    distinct = {(tuple(e.shape), e.dtype, e.config()) for e in plan.tensors}
    assert len(m.tensors) == len(distinct) >= 3  # one tensor per distinct (shape, dtype, configuration)
    assert all(t.measured_bytes == t.predicted_bytes for t in m.tensors)


def _shift_bytes(plan_file, changes):
    """Rewrite the plan as if it had predicted other bytes: {tensor index: factor} (totals kept consistent)."""
    import yaml

    data = yaml.safe_load(plan_file.read_text())
    big = sorted((t for t in data["tensors"] if t["state_bytes"] > 100_000), key=lambda t: -t["state_bytes"])
    names = []
    for i, factor in changes.items():
        big[i]["state_bytes"] = round(big[i]["state_bytes"] * factor)
        names.append(big[i]["name"])
    data["totals"]["state_bytes"] = sum(t["state_bytes"] for t in data["tensors"])
    plan_file.write_text(yaml.safe_dump(data))
    return names


@pytest.mark.parametrize("growth_pct,tolerance,fails", [(1.5, 1, True), (0.5, 1, False), (3.0, 2.5, True),
                                                        (2.0, 2.5, False)])
def test_tolerance_is_a_percentage_of_each_tensor(plan_file, capsys, growth_pct, tolerance, fails):
    """Today's bytes are (1 + g/100)× the plan's for one tensor: growth above --tolerance percent fails."""
    (name,) = _shift_bytes(plan_file, {0: 1 / (1 + growth_pct / 100)})
    code, out, _ = run(capsys, "check", str(plan_file), "--tolerance", str(tolerance))
    assert code == (1 if fails else 0)
    if fails:
        assert name in out and "state-bytes FAIL" in out


def test_per_tensor_growth_fails_even_when_the_total_does_not_grow(plan_file, capsys):
    """One tensor grew 10% while another shrank by as many bytes: the total is unchanged, the check fails."""
    import yaml

    data = yaml.safe_load(plan_file.read_text())
    a, b = sorted((t for t in data["tensors"] if t["state_bytes"] > 100_000), key=lambda t: -t["state_bytes"])[:2]
    delta = b["state_bytes"] // 10
    b["state_bytes"] -= delta  # today b is 1/0.9 ≈ 11% larger than "planned"
    a["state_bytes"] += delta  # and a smaller by the same bytes
    plan_file.write_text(yaml.safe_dump(data))
    code, out, _ = run(capsys, "check", str(plan_file), "--tolerance", "5")
    assert code == 1 and b["name"] in out
    assert "state-bytes FAIL" in out


def test_plan_loader_never_executes_yaml_tags(plan_file, tmp_path, capsys):
    """A python-object tag whose execution would be visible (it creates a directory): refused, not run."""
    marker = tmp_path / "executed"
    text = plan_file.read_text().replace("version: ", f"version: !!python/object/apply:os.mkdir [{str(marker)!r}]\n"
                                         "_was: ", 1)
    plan_file.write_text(text)
    code, _, err = run(capsys, "check", str(plan_file))
    assert code == 2 and "Traceback" not in err
    assert not marker.exists()
    with pytest.raises(Exception):
        Plan.load(plan_file)
    assert not marker.exists()


def test_plan_entry_with_a_method_missing_its_option_is_refused(plan_file, capsys):
    import yaml

    data = yaml.safe_load(plan_file.read_text())
    entry = next(t for t in data["tensors"] if t.get("method"))
    entry.update(method="sketchy", rank=None, block_size=None)  # Sketchy without its rank
    plan_file.write_text(yaml.safe_dump(data))
    code, _, err = run(capsys, "check", str(plan_file))
    assert code == 2 and entry["name"] in err and "Traceback" not in err
