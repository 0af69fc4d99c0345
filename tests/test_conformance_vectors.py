"""Golden vectors (SPEC.md §14.2): the committed files match the reference, are small and documented,
and `infini vectors check` grades outputs written by another program."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from infini_attention.conformance import golden, grade
from infini_attention.conformance.cli import main

VECTORS = golden.default_dir()
REFERENCE = "infini_attention.conformance.adapters.reference:make"


def test_committed_vectors_match_the_reference(tmp_path):
    """Fails when the reference (or the case list) changed without `infini vectors write conformance/vectors`."""
    golden.write_vectors(tmp_path)
    committed = json.loads((VECTORS / "manifest.json").read_text())
    assert json.loads((tmp_path / "manifest.json").read_text()) == committed
    for entry in committed["cases"]:
        old = json.loads((VECTORS / entry["file"]).read_text())
        new = json.loads((tmp_path / entry["file"]).read_text())
        kind = old["kind"]
        inputs = {"layer": ("x",), "lm": ("tokens",), "reject": ("x", "argument", "initial_state")}[kind]
        same = ("config", "params", "split", "why", "pins", "spec_version") + inputs
        for key in same + (("tolerance",) if kind != "reject" else ()):
            assert old[key] == new[key], f"{entry['id']}: {key} drifted; regenerate the vectors"
        if kind == "reject":
            continue
        np.testing.assert_allclose(golden.unarr(old["expected"]["y"]), golden.unarr(new["expected"]["y"]),
                                   rtol=1e-12, atol=1e-13, err_msg=f"{entry['id']}: expected y drifted")
        for s_old, s_new in zip(old["expected"]["states"], new["expected"]["states"]):
            for l_old, l_new in zip(s_old.get("layers", [s_old]), s_new.get("layers", [s_new])):
                assert l_old["segments"] == l_new["segments"], f"{entry['id']}: segments drifted"
                for name in ("M", "z", "k", "v"):
                    np.testing.assert_allclose(golden.unarr(l_old[name]), golden.unarr(l_new[name]), rtol=1e-12,
                                               atol=1e-13, err_msg=f"{entry['id']}: state {name} drifted")


def test_vectors_are_small_documented_and_cover_the_rules():
    size = sum(p.stat().st_size for p in VECTORS.rglob("*") if p.is_file())
    assert size < 400_000
    assert (VECTORS / "FORMAT.md").is_file()
    manifest = json.loads((VECTORS / "manifest.json").read_text())
    pinned = {p for case in manifest["cases"] for p in case["pins"]}
    assert {"§3.2", "§4.3", "§5.1", "§7.1", "§7.2", "§8.2", "§10", "§11"} <= pinned
    assert {"§9", "§12"} <= pinned and {c["kind"] for c in manifest["cases"]} == {"layer", "lm", "reject"}
    assert all(case["why"] for case in manifest["cases"])


def test_reference_outputs_pass_and_wrong_ones_fail(tmp_path, capsys):
    out = tmp_path / "out"
    golden.produce_outputs(VECTORS, out, REFERENCE)
    assert main(["vectors", "check", str(VECTORS), "--outputs", str(out)]) == 0
    n = len(golden.CASES)
    assert f"{n} of {n} cases pass" in capsys.readouterr().out
    victim = out / "delta_rule.json"
    data = json.loads(victim.read_text())
    data["y"]["data"][3] += 1e-3
    victim.write_text(json.dumps(data))
    (out / "gqa.json").unlink()
    report = tmp_path / "r.json"
    assert main(["vectors", "check", str(VECTORS), "--outputs", str(out), "--json", str(report)]) == 1
    rows = {r["case"]: r for r in json.loads(report.read_text())["cases"]}
    assert not rows["delta_rule"]["ok"] and "MISMATCH" in rows["delta_rule"]["message"]
    assert not rows["gqa"]["ok"] and rows["gqa"]["message"] == "no output file"
    assert rows["linear_basic"]["ok"]


def test_states_are_graded_when_given(tmp_path):
    case = golden.load_case(VECTORS, {"file": "cases/partial_segment_pending.json"})
    out = json.loads(json.dumps({"y": case["expected"]["y"],
                                 "states": [{"M": s["M"], "z": s["z"]} for s in case["expected"]["states"]]}))
    assert golden.grade_case(case, out, "float64")[0]
    out["states"][-1]["z"]["data"][0] += 1.0
    ok, _, message = golden.grade_case(case, out, "float64")
    assert not ok and "z" in message


def test_float32_outputs_pass_at_float32_tolerance(tmp_path):
    out = tmp_path / "out32"
    golden.produce_outputs(VECTORS, out, "infini_attention.conformance.adapters.torch_impl:make", "float32")
    assert main(["vectors", "check", str(VECTORS), "--outputs", str(out), "--dtype", "float32"]) == 0
    assert main(["vectors", "check", str(VECTORS), "--outputs", str(out)]) == 1  # not at float64's


def test_an_outputs_directory_is_an_impl(tmp_path):
    out = tmp_path / "out"
    golden.produce_outputs(VECTORS, out, REFERENCE)
    assert main(["conformance", "--impl", str(out), "--dtype", "float64"]) == 0


def test_bad_vectors_directory_is_a_usage_error(tmp_path, capsys):
    assert main(["vectors", "check", str(tmp_path), "--outputs", str(tmp_path)]) == 2
    assert "no manifest.json" in capsys.readouterr().err


@pytest.mark.parametrize("bad", [{"y": [1, 2]}, {"y": {"shape": [2], "data": [1]}}, {}])
def test_malformed_outputs_fail_with_a_message(bad):
    case = golden.load_case(VECTORS, {"file": "cases/linear_basic.json"})
    ok, _, message = golden.grade_case(case, bad, "float64")
    assert not ok and message


def test_format_doc_names_every_case_key():
    text = (VECTORS / "FORMAT.md").read_text()
    for path in Path(VECTORS / "cases").glob("*.json"):
        case = json.loads(path.read_text())
        for key in case:
            assert f"`{key}`" in text, (path.name, key)


def _case(name):
    return golden.load_case(VECTORS, {"file": f"cases/{name}.json"})


def _perfect(case):
    return json.loads(json.dumps({"y": case["expected"]["y"], "states": [
        {"layers": [{"M": lay["M"], "z": lay["z"]} for lay in s["layers"]]} if "layers" in s else
        {"M": s["M"], "z": s["z"], "segments": s["segments"]} for s in case["expected"]["states"]]}))


def test_the_new_cases_pin_what_no_vector_pinned():
    z = _case("z_past_float16")
    assert max(max(s["z"]["data"]) for s in z["expected"]["states"]) > 65504  # float16's largest
    assert [s["segments"] for s in _case("segments_counter")["expected"]["states"]] == [0, 0, 1, 2, 3]
    lm = _case("lm_two_layers")
    assert lm["kind"] == "lm" and len(lm["expected"]["states"][0]["layers"]) == 2
    assert golden.unarr(lm["expected"]["y"]).shape == (2, 10, 11)
    for name in ("local_only_split", "local_only_delta_gate_local", "rope_segment_len_1"):
        assert golden.grade_case(_case(name), _perfect(_case(name)), "float64")[0]
    reject = _case("reject_state_pending")
    assert reject["argument"] == "state.k" and "state.k" in reject["reference_error"] and "expected" not in reject


def test_grader_lists_every_failing_array_with_call_and_index():
    case = _case("random_split_empty_calls")
    out = _perfect(case)
    out["y"]["data"][-1] += 1e-3  # the last token: call 5
    out["states"][1]["z"]["data"][2] += 1.0
    failures = grade.grade_failures(case, out, "float64")
    messages = [f["message"] for f in failures]
    assert len(messages) == 2 and messages[0].startswith("y: MISMATCH") and "first failing call: 5" in messages[0]
    assert "(token 9, call 5)" in messages[0] and "worst element at index [1, 9, 3]" in messages[0]
    assert messages[1].startswith("states[1].z: MISMATCH") and "worst element at index [0, 0, 2]" in messages[1]


def test_grader_says_non_finite_and_checks_segments():
    case = _case("linear_basic")
    out = _perfect(case)
    out["y"]["data"][5] = float("nan")
    assert "y: non-finite (1 NaN/Inf entries, first at index [0, 1, 1])" in grade.grade_case(case, out, "float64")[2]
    out = _perfect(case)
    out["states"][0]["segments"] = 2
    assert "states[0].segments: expected 3, got 2" in grade.grade_case(case, out, "float64")[2]


def test_grader_is_strict_about_the_format():
    case = _case("linear_basic")
    out = _perfect(case)
    out["extra"] = 1
    assert "got ['extra', 'states', 'y']" in grade.grade_case(case, out, "float64")[2]
    out = _perfect(case)
    out["y"]["dtype"] = "float64"
    assert "y: expected an object with exactly the keys 'shape' and 'data'" in grade.grade_case(case, out, "float64")[2]
    reject = _case("reject_x_nan")
    assert "expected a refusal" in grade.grade_case(reject, {"rejected": False}, "float64")[2]
    assert "should name the argument 'x'" not in grade.grade_case(reject, {"rejected": True, "error": "x: NaN"},
                                                                   "float64")[2]
    assert "should name the argument 'wk'" in grade.grade_case(_case("reject_missing_param"),
                                                               {"rejected": True, "error": "bad"}, "float64")[2]
    assert "got ['states', 'y']" in grade.grade_case(reject, _perfect(case), "float64")[2]


def test_grader_suggests_the_dtype_of_float32_rounding(tmp_path, capsys):
    out = tmp_path / "out32"
    golden.produce_outputs(VECTORS, out, REFERENCE, "float32")  # float32-rounded inputs, float64 math
    for p in out.glob("*.json"):  # and outputs rounded to float32
        data = json.loads(p.read_text())
        if "y" in data:
            data["y"]["data"] = [float(np.float32(v)) for v in data["y"]["data"]]
            p.write_text(json.dumps(data))
    assert main(["vectors", "check", str(VECTORS), "--outputs", str(out)]) == 1
    assert "grade with --dtype float32" in capsys.readouterr().out


def test_grader_exits_quietly_on_a_closed_pipe(tmp_path):
    out = tmp_path / "out"
    golden.produce_outputs(VECTORS, out, REFERENCE)
    code = ("import os, sys; r, w = os.pipe(); os.close(r); os.dup2(w, 1)\n"
            "from infini_attention.reference.cli import main\n"
            f"sys.exit(main(['vectors', 'check', {str(VECTORS)!r}, '--outputs', {str(out)!r}]))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 141 and "Traceback" not in proc.stderr and not proc.stderr.strip(), proc.stderr
