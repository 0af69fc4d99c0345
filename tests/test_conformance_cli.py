"""`infini`: exit codes (0 conforms, 1 does not, 2 usage, 3 nothing checked), reports (table, JSON, JUnit),
the provider entry points, and the pytest plugin (`pytest --pyargs infini_attention.conformance --infini-impl=...`)."""
import json
import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest

from infini_attention.conformance import cli
from infini_attention.reference.cli import main

REF = "infini_attention.conformance.adapters.reference:make"
GATE_SWAPPED = "infini_attention.conformance.mutants:gate_swapped"


def test_conforming_impl_exits_0_with_a_summary_table(capsys):
    assert main(["conformance", "--impl", REF, "--dtype", "float64", "--max-examples", "4", "--seed", "3"]) == 0
    out = capsys.readouterr()
    assert "property" in out.out and "SPEC.md" in out.out and "worst error / tolerance" in out.out
    assert "CONFORMS under profile gate_on=memory,first_segment=gated at float64" in out.out
    assert "[ 1/15] output_contract" in out.err  # progress


def test_failing_impl_exits_1_with_reports(tmp_path, capsys):
    js, xml = tmp_path / "r.json", tmp_path / "r.xml"
    code = main(["conformance", "--impl", GATE_SWAPPED, "--max-examples", "10", "--only", "gate_limits,causality",
                 "--json", str(js), "--junit", str(xml), "-q"])
    assert code == 1
    out = capsys.readouterr().out
    assert "DOES NOT CONFORM" in out and "smallest failing case" in out and "reproduce with:" in out
    report = json.loads(js.read_text())
    assert report["exit_code"] == 1 and report["profile"] == {"gate_on": "memory", "first_segment": "gated"}
    by = {r["property"]: r for r in report["results"]}
    assert by["gate_limits"]["verdict"] == "FAIL" and by["causality"]["verdict"] == "pass"
    assert by["gate_limits"]["spec"] == "§8.1, §8.2" and "Session(" in by["gate_limits"]["repro"]
    suite = ET.parse(xml).getroot()
    assert suite.get("tests") == "2" and suite.get("failures") == "1"


def test_declared_profile_is_checked_and_reported(capsys):
    code = main(["conformance", "--impl", GATE_SWAPPED, "--profile", "gate_on=local", "--max-examples", "8",
                 "--only", "gate_limits", "-q"])
    out = capsys.readouterr().out
    assert code == 0 and "profile gate_on=local,first_segment=gated" in out


@pytest.mark.parametrize("argv, message", [
    (["conformance", "--impl", "nope_module_xyz:make"], "cannot import module"),
    (["conformance", "--impl", REF, "--profile", "gate_on=sideways"], "--profile: cannot read"),
    (["conformance", "--impl", REF, "--only", "outputz"], "unknown properties ['outputz']"),
    (["conformance", "--impl", REF, "--max-examples", "0"], "--max-examples"),
])
def test_usage_errors_exit_2_with_what_to_fix(argv, message, capsys):
    assert main(argv) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["conformance", "--impl", REF, "--frobnicate"], ["conformance"],
                                  ["check", "--dtype", "float8"], []])
def test_argparse_errors_exit_2(argv):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2


def test_check_runs_the_torch_impl(capsys):
    assert main(["check", "--max-examples", "3", "--only", "outputs,gradients", "-q"]) == 0
    out = capsys.readouterr().out
    assert "adapters.torch_impl:make" in out and "gradients" in out


def test_export_subcommands_plug_in(monkeypatch):
    import types

    calls = []
    fake = types.ModuleType("infini_attention.export.cli")

    def register(sub):
        p = sub.add_parser("fakecmd")
        p.set_defaults(func=lambda args: calls.append("ran") or 0)
    fake.register = register
    monkeypatch.setitem(sys.modules, "infini_attention.export.cli", fake)
    assert main(["fakecmd"]) == 0 and calls == ["ran"]


def test_selftest_table_format():
    from infini_attention.conformance.selftest import Catch, format_table

    rows = [Catch("a", "m", "outputs", ["state", "outputs"], []), Catch("b", "m", "causality", [], [])]
    text = format_table(rows, True)
    assert "caught 1 of 2" in text and "outputs, state" in text and "control (no mistake) passes" in text


def test_pytest_plugin_runs_the_properties(tmp_path):
    cmd = [sys.executable, "-m", "pytest", "--pyargs", "infini_attention.conformance", "-q", "-p", "no:cacheprovider",
           "--infini-impl", GATE_SWAPPED, "--infini-max-examples", "5", "-k", "gate_limits or causality or fresh_stream"]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "1 failed, 2 passed" in proc.stdout and "reproduce with:" in proc.stdout
    cmd = [sys.executable, "-m", "pytest", "--pyargs", "infini_attention.conformance", "-q", "-p", "no:cacheprovider"]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0 and "15 skipped" in proc.stdout, proc.stdout + proc.stderr


def test_console_script_and_providers_are_declared():
    from importlib import metadata

    scripts = {ep.name: ep.value for ep in metadata.entry_points(group="console_scripts")}
    assert scripts["infini"] == "infini_attention.reference.cli:main"
    providers = {ep.name: ep.value for ep in metadata.entry_points(group="infini_attention.commands")}
    assert providers == {"conformance": "infini_attention.conformance.cli:register",
                         "export": "infini_attention.export.cli:register",
                         "serve": "infini_attention.export.serve.cli:register"}
    assert cli.main is main and cli.TORCH_IMPL.endswith("torch_impl:make")
    from infini_attention.conformance.contract import UsageError
    from infini_attention.reference.errors import UsageError as ReferenceUsageError

    assert UsageError is ReferenceUsageError  # moved to reference, importable from contract as before


def test_nothing_checked_is_not_a_pass(capsys):
    """Every property "not supported" (here: gradients of an implementation without "grad") is no verdict
    of conformance: "NOTHING CHECKED", exit 3 (distinct from 0 conforms, 1 fails, 2 usage)."""
    code = main(["conformance", "--impl", REF, "--dtype", "float64", "--only", "gradients", "-q"])
    out = capsys.readouterr().out
    assert code == 3, out
    assert "NOTHING CHECKED under profile gate_on=memory,first_segment=gated at float64: 0 passed, 0 failed, " \
           "1 not supported" in out and "CONFORMS" not in out


def test_exit_code_table():
    from infini_attention.conformance.runner import ERROR, FAIL, PASS, UNSUPPORTED, Result, exit_code

    def r(*verdicts):
        return [Result(f"p{i}", "§1", v) for i, v in enumerate(verdicts)]
    assert exit_code(r(PASS, UNSUPPORTED)) == 0
    assert exit_code(r(UNSUPPORTED, UNSUPPORTED)) == 3
    assert exit_code(r(UNSUPPORTED, FAIL)) == 1 and exit_code(r(PASS, ERROR)) == 1


def test_conformance_help_documents_exit_status(capsys):
    with pytest.raises(SystemExit):
        main(["conformance", "--help"])
    assert "3 nothing checked" in " ".join(capsys.readouterr().out.split())


def test_inconclusive_has_its_own_verdict_and_exit_status(monkeypatch, capsys):
    """A property that ran fewer than --min-examples examples is no pass: with something passed and nothing
    failed the verdict is INCONCLUSIVE, exit 4 (3 stays "nothing checked", when nothing passed at all)."""
    from infini_attention.conformance import runner
    from infini_attention.conformance.runner import INCONCLUSIVE, PASS, Result

    fake = [Result("outputs", "§4", PASS, examples=50), Result("first_segment", "§8.2", INCONCLUSIVE, examples=4,
                                                               message="only 4 examples ran (at least 10 needed)")]
    monkeypatch.setattr(runner, "run_suite", lambda *a, **k: fake)
    assert main(["conformance", "--impl", REF, "--isolate", "none", "-q"]) == 4
    out = capsys.readouterr().out
    assert "INCONCLUSIVE under profile" in out and "1 inconclusive" in out and "at least 10 needed" in out
    monkeypatch.setattr(runner, "run_suite", lambda *a, **k: fake[1:])
    assert main(["conformance", "--impl", REF, "--isolate", "none", "-q"]) == 3
    assert "NOTHING CHECKED" in capsys.readouterr().out


def test_help_documents_inconclusive_and_the_new_options(capsys):
    with pytest.raises(SystemExit):
        main(["conformance", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "4 inconclusive" in text and "--min-examples" in text and "--call-timeout" in text and "--isolate" in text
    assert main(["conformance", "--impl", REF, "--min-examples", "0"]) == 2
    assert "--min-examples: expected an integer >= 1, got 0" in capsys.readouterr().err
