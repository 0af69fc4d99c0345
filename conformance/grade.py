"""Grading another program's outputs against the golden vectors (``infini vectors check``; FORMAT.md).

Strict about the format: an output is a JSON object with exactly the keys FORMAT.md lists for its case's
kind, arrays are ``{"shape", "data"}`` objects; anything else fails the case with a message naming the
key. Every failing array is listed with its first failing call and its worst element; NaN/Inf is called
"non-finite"; when every error would pass a looser dtype's tolerance, the report suggests ``--dtype``.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from .. import reference as R
from ..reference.tolerances import compare
from .contract import DTYPES, UsageError
from .golden import GRADER_OUTPUT, GRADER_STATE, arr, load_case, load_manifest, unarr

KEYS = {"layer": {"y", "states"}, "lm": {"y", "states"}, "reject": {"rejected", "error"}}
STATE_KEYS = {"M", "z", "k", "v", "segments"}


class Bad(ValueError):
    """The output does not follow FORMAT.md."""


def _calls(split) -> list[tuple[int, int]]:
    bounds = np.cumsum([0] + list(split))
    return list(zip(bounds[:-1], bounds[1:]))


def _grade_array(name: str, got, want, table: dict, dtype: str, calls=None) -> dict | None:
    """None when ``got`` passes; else {message, looser dtypes it passes at}."""
    if got.shape != want.shape:
        return {"message": f"{name}: expected shape {list(want.shape)}, got {list(got.shape)}", "passes_at": []}
    bad = ~np.isfinite(got)
    if bad.any():
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        return {"message": f"{name}: non-finite ({int(bad.sum())} NaN/Inf entries, first at index {list(first)})",
                "passes_at": []}
    result = compare(name, got, want, table[dtype])
    if result.ok:
        return None
    worst = tuple(int(i) for i in np.unravel_index(np.argmax(np.abs(got - want)), got.shape))
    where = f"worst element at index {list(worst)}: got {got[worst]:.17g}, expected {want[worst]:.17g}"
    if calls is not None and got.ndim == 3:  # y (B, T, D): the first call whose tokens fail
        first = next((i for i, (a, b) in enumerate(calls) if b > a and
                      not compare(name, got[:, a:b], want[:, a:b], table[dtype]).ok), None)
        t = worst[1]
        call = next(i for i, (a, b) in enumerate(calls) if a <= t < b)
        where += f" (token {t}, call {call + 1}); first failing call: {first + 1 if first is not None else '-'}"
    passes = [d for d in DTYPES if compare(name, got, want, table[d]).ok]
    return {"message": f"{result.message()}; {where}", "passes_at": passes}


def _state_arrays(got: dict, want: dict, where: str) -> list[tuple]:
    if not isinstance(got, dict) or set(got) - STATE_KEYS:
        raise Bad(f"{where}: expected an object with keys from {sorted(STATE_KEYS)}, got "
                  f"{sorted(got) if isinstance(got, dict) else type(got).__name__}")
    out = [(f"{where}.{n}", unarr(got[n], f"{where}.{n}"), unarr(want[n]), GRADER_STATE) for n in ("M", "z") if n in got]
    if "segments" in got and got["segments"] != want["segments"]:
        raise Bad(f"{where}.segments: expected {want['segments']}, got {got['segments']!r}")
    return out


def grade_case(case: dict, output, dtype: str) -> tuple[bool, float, str]:
    """(ok, worst score, message) for one program output against one case; the message lists every failure."""
    failures = grade_failures(case, output, dtype)
    if not failures:
        return True, 0.0, "ok"
    return False, float("inf"), "; ".join(f["message"] for f in failures)


def grade_failures(case: dict, output, dtype: str) -> list[dict]:
    kind = case.get("kind", "layer")
    if output is None:
        return [{"message": "no output file", "passes_at": []}]
    if not isinstance(output, dict) or set(output) - KEYS[kind] or not output:
        got = sorted(output) if isinstance(output, dict) else type(output).__name__
        return [{"message": f"expected a JSON object with keys from {sorted(KEYS[kind])} for a {kind} case "
                            f"(FORMAT.md), got {got}", "passes_at": []}]
    if kind == "reject":
        if output.get("rejected") is not True or not isinstance(output.get("error", ""), str):
            return [{"message": f"expected a refusal {{'rejected': true, 'error': ...}} (SPEC.md §12: "
                                f"{case['why']}), got {sorted(output)}", "passes_at": []}]
        arg = case["argument"].split(".")[-1]
        if arg not in output.get("error", arg):
            return [{"message": f"the error should name the argument {case['argument']!r} (SPEC.md §12), got "
                                f"{output['error']!r}", "passes_at": []}]
        return []
    try:
        if "y" not in output:
            raise Bad("y: missing (the outputs of all calls, concatenated)")
        checks = [("y", unarr(output["y"], "y"), unarr(case["expected"]["y"]), GRADER_OUTPUT)]
        states = output.get("states")
        if states is not None:
            want = case["expected"]["states"]
            if not isinstance(states, list) or len(states) != len(want):
                raise Bad(f"states: expected one per call ({len(want)}), got "
                          f"{len(states) if isinstance(states, list) else type(states).__name__}")
            for i, (g, w) in enumerate(zip(states, want)):
                if kind == "lm":
                    if not isinstance(g, dict) or set(g) != {"layers"} or len(g["layers"]) != len(w["layers"]):
                        raise Bad(f"states[{i}]: expected {{'layers': [one state per layer]}} "
                                  f"({len(w['layers'])} layers)")
                    for j, (gl, wl) in enumerate(zip(g["layers"], w["layers"])):
                        checks += _state_arrays(gl, wl, f"states[{i}].layers[{j}]")
                else:
                    checks += _state_arrays(g, w, f"states[{i}]")
    except ValueError as exc:
        return [{"message": str(exc), "passes_at": []}]
    calls = _calls(case["split"])
    found = [_grade_array(name, g, w, table, dtype, calls if name == "y" else None) for name, g, w, table in checks]
    return [f for f in found if f is not None]


def _looser(failures: list[dict], dtype: str) -> str | None:
    """The tightest dtype whose tolerance every failing array passes, if looser than ``dtype``."""
    common = [d for d in DTYPES if all(d in f["passes_at"] for f in failures)]
    order = {d: i for i, d in enumerate(DTYPES)}  # float64, float32, bfloat16, float16
    common = [d for d in common if d != dtype and order[d] > order.get(dtype, 0)]
    return min(common, key=lambda d: order[d]) if common else None


def check_outputs(directory, outputs, dtype: str = "float64") -> list[dict]:
    manifest = load_manifest(directory)
    if not os.path.isdir(outputs):
        raise UsageError(f"--outputs: expected a directory of <case id>.json files, got {str(outputs)!r}")
    rows = []
    for entry in manifest["cases"]:
        out_path = Path(outputs) / f"{entry['id']}.json"
        output, failures = None, None
        if out_path.is_file():
            try:
                output = json.loads(out_path.read_text())
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                failures = [{"message": f"{out_path}: not JSON ({exc})", "passes_at": []}]
        if failures is None:
            failures = grade_failures(load_case(directory, entry), output, dtype)
        rows.append({"case": entry["id"], "pins": entry["pins"], "ok": not failures,
                     "failures": [f["message"] for f in failures], "message": "; ".join(f["message"] for f in failures),
                     "hint_dtype": _looser(failures, dtype) if failures else None})
    return rows


def check_command(directory, outputs, dtype: str, json_path: str | None) -> int:
    rows = check_outputs(directory, outputs, dtype)
    width = max(len(r["case"]) for r in rows)
    print(f"golden vectors {directory} vs outputs {outputs} ({dtype} tolerances)")
    for r in rows:
        print(f"  {r['case']:<{width}}  {' '.join(r['pins']):<22} {'pass' if r['ok'] else 'FAIL'}")
        for message in r["failures"]:
            print(f"      {message}")
    n_ok = sum(r["ok"] for r in rows)
    print(f"{n_ok} of {len(rows)} cases pass")
    hints = {r["hint_dtype"] for r in rows if not r["ok"]}
    if len(hints) == 1 and None not in hints and all(r["hint_dtype"] for r in rows if not r["ok"]):
        dt = hints.pop()
        print(f"hint: every failing array is within the {dt} tolerance: the errors look like {dt} rounding; if "
              f"the program computes in {dt}, grade with --dtype {dt}")
    if json_path:
        with open(json_path, "w") as f:
            json.dump({"vectors": str(directory), "outputs": str(outputs), "dtype": dtype, "cases": rows}, f, indent=1)
    return 0 if n_ok == len(rows) else 1


def produce_outputs(directory, outputs, impl_spec: str, dtype: str = "float64") -> None:
    """Run a Python implementation over the vectors and write outputs in the documented format (an LM case
    runs the implementation's layers inside the §9 model, the rest computed in NumPy)."""
    from .contract import load_impl
    from .harness import run_impl

    impl = load_impl(impl_spec)
    Path(outputs).mkdir(parents=True, exist_ok=True)
    want_state = "canonical_state" in impl.capabilities
    for entry in load_manifest(directory)["cases"]:
        case = load_case(directory, entry)
        kind = case.get("kind", "layer")
        params = {k: unarr(v) for k, v in case["params"].items()}
        try:
            if kind == "lm":
                out = _lm_outputs(impl, case, params, dtype, want_state)
            else:
                config = R.InfiniConfig.from_dict(case["config"])
                x = unarr(case["x"])
                if kind == "reject":
                    state = case.get("initial_state")
                    if state is not None:  # a Python implementation's state is its own: the reference checks it
                        R.forward(config, params, x, R.InfiniState(**{k: v if k == "segments" else unarr(v)
                                                                      for k, v in state.items()}))
                run = run_impl(impl, config, params, x, case["split"], dtype, want_state=want_state,
                               finite=kind != "reject")  # NaN returned for a bad input is no refusal
                out = {"y": arr(run.y)}
                if run.states:
                    out["states"] = [{"M": arr(M), "z": arr(z)} for M, z in run.states]
        except Exception as exc:  # noqa: BLE001 - a refusal is the expected outcome of a reject case
            if kind != "reject":
                raise
            out = {"rejected": True, "error": str(exc).splitlines()[0]}
        (Path(outputs) / f"{entry['id']}.json").write_text(json.dumps(out) + "\n")


def _lm_outputs(impl, case, params, dtype, want_state) -> dict:
    from .harness import run_impl

    cfg = R.LMConfig.from_dict(case["config"])
    tokens = unarr(case["tokens"]).astype(np.int64)
    E, eps = R.equations, cfg.norm_eps
    x = params["embed"][tokens]
    per_layer = []
    for i in range(cfg.n_layers):
        attn = {n: params[f"layers.{i}.attn.{n}"] for n in R.ATTN_PARAMS}
        run = run_impl(impl, cfg.attn, attn, E.rms_norm(x, params[f"layers.{i}.attn_norm"], eps), case["split"], dtype,
                       want_state=want_state)
        h = x + run.y
        x = h + E.swiglu(E.rms_norm(h, params[f"layers.{i}.mlp_norm"], eps), params[f"layers.{i}.mlp.w_gate"],
                         params[f"layers.{i}.mlp.w_up"], params[f"layers.{i}.mlp.w_down"])
        per_layer.append(run.states)
    out = {"y": arr(E.rms_norm(x, params["final_norm"], eps) @ params["lm_head"])}
    if want_state:
        out["states"] = [{"layers": [{"M": arr(s[c][0]), "z": arr(s[c][1])} for s in per_layer]}
                         for c in range(len(case["split"]))]
    return out
