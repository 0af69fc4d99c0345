"""Golden vectors (SPEC.md §14.2): cases written from the reference, and grading of another program's outputs.

The format is plain JSON, documented for non-Python readers in ``vectors/FORMAT.md``. Each case
pins one rule of the spec (the manifest says which and why). ``write_vectors`` regenerates them
deterministically; ``check_outputs`` grades a directory of outputs with the tolerance table.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from .. import reference as R
from ..reference import InfiniConfig
from .contract import UsageError
from .strategies import params_from_seed, x_from_seed
from ..reference.tolerances import OUTPUT_TOLERANCES, STATE_TOLERANCES, compare, tolerance_for

FORMAT_VERSION = 1
_BASE = dict(d_model=4, n_heads=2, n_kv_heads=2, d_key=3, d_value=2, segment_len=4)


def _case(id, why, pins, T, split=None, B=2, beta=None, seed=0, **config):
    return dict(id=id, why=why, pins=pins, T=T, split=split or [T], B=B, beta=beta, seed=seed,
                config={**_BASE, **config})


CASES = [
    _case("linear_basic", "three segments, linear rule, gated first segment (memory read exactly 0)",
          ["§4", "§6", "§7.1", "§8.1"], 12),
    _case("delta_rule", "the delta rule subtracts what the memory already returns", ["§7.2"], 12, update="delta"),
    _case("rope_half", "RoPE on local attention only, half pairing, positions = offsets in the segment",
          ["§5.1"], 10, d_key=4, rope_theta=10000.0, rope_style="half"),
    _case("rope_interleaved", "RoPE interleaved pairing (2j, 2j+1), small theta so every pair rotates",
          ["§5.1"], 10, d_key=4, rope_theta=10.0, rope_style="interleaved"),
    _case("gqa", "query head h uses key/value head h // G, for attention and memory", ["§3.2"], 8,
          n_heads=4, n_kv_heads=2, d_key=2, d_value=3),
    _case("multi_query", "one key/value head shared by every query head", ["§3.2"], 8, n_heads=3, n_kv_heads=1),
    _case("gate_on_local", "convention gate_on=local: sigmoid(beta) weights the local branch", ["§8.2"], 8,
          gate_on="local"),
    _case("first_segment_local_only", "convention first_segment=local_only: plain local attention first",
          ["§8.2"], 8, first_segment="local_only"),
    _case("partial_segment_pending", "a final partial segment is not written; its keys/values stay pending",
          ["§4.2", "§4.3", "§7"], 6),
    _case("token_by_token", "calls of one token give the one-call result (with RoPE offsets)", ["§4.3"], 9,
          split=[1] * 9, d_key=4, rope_theta=100.0),
    _case("random_split_empty_calls", "calls cut mid-segment, and calls of zero tokens, change nothing",
          ["§4.3", "§10"], 10, split=[0, 3, 0, 5, 2]),
    _case("segment_len_1", "N = 1: every token is its own segment, A_dot = v", ["§10"], 5, segment_len=1),
    _case("scale_eps_dims", "a configured scale and eps, dk != dv", ["§2", "§5.2", "§6"], 8, d_key=5,
          d_value=3, scale=0.2, eps=1e-3),
    _case("gate_limits", "beta = +-30: one head purely memory, one purely local", ["§8.1", "§10"], 8,
          beta=[30.0, -30.0]),
    _case("delta_rope_gqa_chunked", "delta + RoPE + GQA with a chunked prefill and decode steps",
          ["§3.2", "§4.3", "§5.1", "§7.2"], 16, split=[3, 5, 1, 1, 6], update="delta", n_heads=4,
          n_kv_heads=2, d_key=4, rope_theta=10000.0),
    _case("long_stream", "200 segments in one call: no drift as M and z accumulate", ["§11"], 400, B=1,
          d_model=2, n_heads=1, n_kv_heads=1, d_key=2, d_value=2, segment_len=2, rope_theta=10000.0),
]


def arr(a) -> dict:
    a = np.asarray(a, dtype=np.float64)
    return {"shape": list(a.shape), "data": [float(v) for v in a.reshape(-1)]}


def unarr(d, what: str = "array") -> np.ndarray:
    try:
        return np.asarray(d["data"], dtype=np.float64).reshape(d["shape"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{what}: expected {{'shape': [...], 'data': [...]}} with prod(shape) numbers ({exc})")


def build_case(spec: dict) -> dict:
    """One case file's content, computed by the reference."""
    config = InfiniConfig(**spec["config"])
    params = params_from_seed(config, 1000 + spec["seed"])
    if spec["beta"] is not None:
        params["beta"] = np.asarray(spec["beta"], dtype=np.float64)
    x = x_from_seed(config, spec["B"], spec["T"], 2000 + spec["seed"])
    states, ys, state, start = [], [], None, 0
    for size in spec["split"]:
        y, state = R.forward(config, params, x[:, start:start + size], state)
        ys.append(y)
        states.append({"M": arr(state.M), "z": arr(state.z), "k": arr(state.k), "v": arr(state.v),
                       "segments": int(state.segments)})
        start += size
    tol = {name: {dt: {"atol": t.atol, "rtol": t.rtol} for dt, t in table.items()}
           for name, table in (("output", OUTPUT_TOLERANCES), ("state", STATE_TOLERANCES))}
    return {"format_version": FORMAT_VERSION, "spec_version": R.SPEC_VERSION, "id": spec["id"],
            "why": spec["why"], "pins": spec["pins"], "config": config.to_dict(),
            "params": {k: arr(v) for k, v in params.items()}, "x": arr(x), "split": list(spec["split"]),
            "expected": {"y": arr(np.concatenate(ys, axis=1)), "states": states}, "tolerance": tol}


def write_vectors(directory) -> list[Path]:
    """(Re)generate every case and the manifest; deterministic. Returns the files written."""
    d = Path(directory)
    (d / "cases").mkdir(parents=True, exist_ok=True)
    paths, entries = [], []
    for spec in CASES:
        path = d / "cases" / f"{spec['id']}.json"
        path.write_text(json.dumps(build_case(spec), separators=(",", ":")) + "\n")
        paths.append(path)
        entries.append({"id": spec["id"], "file": f"cases/{spec['id']}.json", "why": spec["why"],
                        "pins": spec["pins"]})
    manifest = {"format_version": FORMAT_VERSION, "spec_version": R.SPEC_VERSION,
                "generator": "infini vectors write DIR (infini_attention.conformance.golden)",
                "format": "FORMAT.md", "cases": entries}
    (d / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return paths + [d / "manifest.json"]


def default_dir() -> Path:
    return Path(__file__).parent / "vectors"


def load_manifest(directory) -> dict:
    path = Path(directory) / "manifest.json"
    if not path.is_file():
        raise UsageError(f"{directory}: no manifest.json (expected a golden-vectors directory, e.g. "
                         f"{default_dir()}; create one with `infini vectors write DIR`)")
    return json.loads(path.read_text())


def load_case(directory, entry: dict) -> dict:
    return json.loads((Path(directory) / entry["file"]).read_text())


def grade_case(case: dict, output: dict | None, dtype: str) -> tuple[bool, float, str]:
    """(ok, worst score, message) for one program output against one case."""
    if output is None:
        return False, float("inf"), "no output file"
    try:
        y = unarr(output.get("y"), "y")
    except (ValueError, AttributeError) as exc:
        return False, float("inf"), str(exc)
    want = unarr(case["expected"]["y"])
    if y.shape != want.shape:
        return False, float("inf"), f"y: expected shape {list(want.shape)}, got {list(y.shape)}"
    results = [compare("y", y, want, tolerance_for(dtype, OUTPUT_TOLERANCES))]
    got_states = output.get("states")
    if got_states is not None:
        if len(got_states) != len(case["expected"]["states"]):
            return False, float("inf"), (f"states: expected one per call ({len(case['expected']['states'])}), "
                                         f"got {len(got_states)}")
        for i, (g, e) in enumerate(zip(got_states, case["expected"]["states"])):
            for name in ("M", "z"):
                if name in g:
                    try:
                        value = unarr(g[name], f"states[{i}].{name}")
                    except ValueError as exc:
                        return False, float("inf"), str(exc)
                    results.append(compare(f"states[{i}].{name}", value, unarr(e[name]),
                                           tolerance_for(dtype, STATE_TOLERANCES)))
    worst = max(results, key=lambda r: r.score)
    return all(r.ok for r in results), worst.score, worst.message()


def check_outputs(directory, outputs, dtype: str = "float64") -> list[dict]:
    manifest = load_manifest(directory)
    if not os.path.isdir(outputs):
        raise UsageError(f"--outputs: {outputs!r} is not a directory (expected one <case id>.json per case)")
    rows = []
    for entry in manifest["cases"]:
        out_path = Path(outputs) / f"{entry['id']}.json"
        output = None
        if out_path.is_file():
            try:
                output = json.loads(out_path.read_text())
            except json.JSONDecodeError as exc:
                rows.append({"case": entry["id"], "pins": entry["pins"], "ok": False, "score": "inf",
                             "message": f"{out_path}: not JSON ({exc})"})
                continue
        ok, score, message = grade_case(load_case(directory, entry), output, dtype)
        rows.append({"case": entry["id"], "pins": entry["pins"], "ok": ok,
                     "score": score if np.isfinite(score) else "inf", "message": message})
    return rows


def check_command(directory, outputs, dtype: str, json_path: str | None) -> int:
    rows = check_outputs(directory, outputs, dtype)
    width = max(len(r["case"]) for r in rows)
    print(f"golden vectors {directory} vs outputs {outputs} ({dtype} tolerances)")
    for r in rows:
        score = r["score"] if isinstance(r["score"], str) else f"{r['score']:.3g}x"
        print(f"  {r['case']:<{width}}  {' '.join(r['pins']):<22} {'pass' if r['ok'] else 'FAIL':<5} {score:>9}"
              + ("" if r["ok"] else f"  {r['message']}"))
    n_ok = sum(r["ok"] for r in rows)
    print(f"{n_ok} of {len(rows)} cases pass")
    if json_path:
        with open(json_path, "w") as f:
            json.dump({"vectors": str(directory), "outputs": str(outputs), "dtype": dtype, "cases": rows}, f, indent=1)
    return 0 if n_ok == len(rows) else 1


def produce_outputs(directory, outputs, impl_spec: str, dtype: str = "float64") -> None:
    """Run a Python implementation over the vectors and write outputs in the documented format."""
    from .contract import load_impl
    from .harness import run_impl

    impl = load_impl(impl_spec)
    Path(outputs).mkdir(parents=True, exist_ok=True)
    for entry in load_manifest(directory)["cases"]:
        case = load_case(directory, entry)
        config = InfiniConfig.from_dict(case["config"])
        params = {k: unarr(v) for k, v in case["params"].items()}
        run = run_impl(impl, config, params, unarr(case["x"]), case["split"], dtype,
                       want_state="canonical_state" in impl.capabilities)
        out = {"y": arr(run.y)}
        if run.states:
            out["states"] = [{"M": arr(M), "z": arr(z)} for M, z in run.states]
        (Path(outputs) / f"{entry['id']}.json").write_text(json.dumps(out) + "\n")
