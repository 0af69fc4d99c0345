"""Golden vectors (SPEC.md §14.2): the committed files match the reference, are small and documented,
and `infini vectors check` grades outputs written by another program."""
import json
from pathlib import Path

import numpy as np
import pytest

from infini_attention.conformance import golden
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
        for key in ("config", "params", "x", "split", "why", "pins", "tolerance", "spec_version"):
            assert old[key] == new[key], f"{entry['id']}: {key} drifted; regenerate the vectors"
        np.testing.assert_allclose(golden.unarr(old["expected"]["y"]), golden.unarr(new["expected"]["y"]),
                                   rtol=1e-12, atol=1e-13, err_msg=f"{entry['id']}: expected y drifted")
        for s_old, s_new in zip(old["expected"]["states"], new["expected"]["states"]):
            for name in ("M", "z", "k", "v"):
                np.testing.assert_allclose(golden.unarr(s_old[name]), golden.unarr(s_new[name]), rtol=1e-12,
                                           atol=1e-13, err_msg=f"{entry['id']}: state {name} drifted")


def test_vectors_are_small_documented_and_cover_the_rules():
    size = sum(p.stat().st_size for p in VECTORS.rglob("*") if p.is_file())
    assert size < 400_000
    assert (VECTORS / "FORMAT.md").is_file()
    manifest = json.loads((VECTORS / "manifest.json").read_text())
    pinned = {p for case in manifest["cases"] for p in case["pins"]}
    assert {"§3.2", "§4.3", "§5.1", "§7.1", "§7.2", "§8.2", "§10", "§11"} <= pinned
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
    case = json.loads(next(Path(VECTORS / "cases").glob("*.json")).read_text())
    for key in case:
        assert f"`{key}`" in text, key
