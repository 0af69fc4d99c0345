"""The diagnosis (issue 12, point 2): root causes, ranked, with evidence and the SPEC.md section, in the text,
JSON and JUnit reports; each mutant alone is named and nothing else; mistakes combined are named together."""
import json
import xml.etree.ElementTree as ET

import pytest

from infini_attention.conformance import diagnosis_rate
from infini_attention.conformance.contract import load_impl
from infini_attention.conformance.deviations import DEVIATIONS
from infini_attention.conformance.diagnosis import diagnose
from infini_attention.conformance.mutants import MASKING, MUTANTS, OBSERVABLE_AT
from infini_attention.conformance.properties import Settings
from infini_attention.reference.cli import main

MUT = "infini_attention.conformance.mutants:"


def likely(name, dtype="float32"):
    d = diagnose(load_impl(MUT + name), Settings(dtype=OBSERVABLE_AT.get(name, dtype)))
    return [c.id for c in d.likely()], d


def test_every_deviation_class_has_a_mutant_and_a_section():
    assert set(DEVIATIONS) == set(MUTANTS)
    assert {"z_init_nonzero", "shared_gate", "memory_in_instance", "rope_stream_positions",
            "head_no_transpose"} <= set(DEVIATIONS)
    assert all(d.spec.startswith("§") and d.fix for d in DEVIATIONS.values())


@pytest.mark.parametrize("mutant", list(MUTANTS))
def test_each_mutant_alone_is_the_only_likely_cause(mutant):
    names, d = likely(mutant)
    assert names == [mutant], d.text()


def test_the_control_has_no_likely_cause():
    names, d = likely("control")
    assert names == [], d.text()


@pytest.mark.parametrize("combo", [
    "head_interleave+gqa_modulo", "gate_swapped+local_only_undeclared", "no_eps+delta_ignored+scale_d_model",
    "head_no_transpose+causal_off_by_one", "rope_on_memory+rope_call_positions+memory_detached",
    "z_init_nonzero+sigma_no_plus_one+bf16_state", "shared_gate+gate_swapped+update_before_read",
    "write_partial+memory_in_instance+memory_shared_across_batch+head_interleave",
])
def test_combined_mistakes_are_named_together(combo):
    names, d = likely(combo)
    assert set(combo.split("+")) <= set(names), d.text()
    assert len(names) <= len(combo.split("+")) + 1, d.text()


def test_rates_script_covers_pairs_without_masking(capsys):
    pairs = diagnosis_rate.combinations(2, None, 0)
    assert not any(pair <= set(c) for c in pairs for pair in MASKING)
    assert len(pairs) == len(MUTANTS) * (len(MUTANTS) - 1) // 2 - len(MASKING)
    assert diagnosis_rate.main(["--sizes", "2", "--pairs", "2", "--max-examples", "2"]) == 0
    out = capsys.readouterr().out
    assert "size 2: 2/2 = 100.0%" in out and "command: python -m infini_attention.conformance.diagnosis_rate" in out


def test_reports_show_the_diagnosis(tmp_path, capsys):
    js, xml = tmp_path / "r.json", tmp_path / "r.xml"
    code = main(["conformance", "--impl", MUT + "gate_swapped+z_not_accumulated", "--max-examples", "6", "-q",
                 "--only", "gate_limits,update_rule,outputs", "--json", str(js), "--junit", str(xml)])
    out = capsys.readouterr().out
    assert code == 1
    text = out.split("diagnosis (likely root causes, most likely first):")[1]
    assert "gate_swapped (§8.1, §8.2" in text and "z_not_accumulated (§7.1" in text and "evidence:" in text
    report = json.loads(js.read_text())
    causes = {c["cause"]: c for c in report["diagnosis"]["likely"]}
    assert {"gate_swapped", "z_not_accumulated"} <= set(causes)
    assert causes["gate_swapped"]["spec"] == "§8.1, §8.2" and causes["gate_swapped"]["evidence"]
    props = {p.get("name"): p.get("value") for p in ET.parse(xml).getroot().iter("property")}
    assert {props["diagnosis.1"].split()[0], props["diagnosis.2"].split()[0]} == {"gate_swapped", "z_not_accumulated"}
    assert "diagnosis (likely root causes" in ET.parse(xml).getroot().find("system-out").text
