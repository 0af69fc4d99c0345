"""Hypothesis profiles: `ci` (default, fast) and `thorough` (HYPOTHESIS_PROFILE=thorough)."""
import os

from hypothesis import HealthCheck, settings

settings.register_profile("ci", max_examples=25, deadline=None, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("thorough", max_examples=500, deadline=None, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


import pytest  # noqa: E402


@pytest.fixture(scope="session")
def served_lm(tmp_path_factory):
    """A tiny stateful LM export and its many-streams export (tests of serving: test_pool, test_serve_triton).
    Odd sizes on purpose: segment_len 3, GQA (3 query heads on 1 kv head), the delta rule, RoPE, local_only."""
    from infini_attention.export import export
    from infini_attention.export.ragged_graph import write_ragged
    from infini_attention.reference import InfiniConfig, LMConfig, model_init_params

    config = LMConfig(vocab_size=13, n_layers=2, d_ff=10, attn=InfiniConfig(
        d_model=6, n_heads=3, n_kv_heads=1, d_key=4, d_value=3, segment_len=3, update="delta", rope_theta=10.0,
        first_segment="local_only"))
    params = model_init_params(config, 7)
    root = tmp_path_factory.mktemp("served")
    export(config, params, root / "lm.onnx")
    write_ragged(root / "lm.onnx", root / "lm.ragged.onnx")
    return config, params, root / "lm.onnx", root / "lm.ragged.onnx"


@pytest.fixture(scope="session")
def tiny_exports(tmp_path_factory):
    """The ``tiny`` preset's LM and layer with seed-0 weights, exported once for the whole run (an export is 10-30 s
    of torch.export). Returns ``into(d)``: copies them to ``d / "lm.onnx"``, ``d / "layer.onnx"`` (a module's own
    directory, which its tests may write into) and returns ``d``."""
    import shutil

    from infini_attention.export import export, preset_config, preset_params

    source = tmp_path_factory.mktemp("tiny")
    for kind in ("lm", "layer"):
        config = preset_config("tiny", kind)
        export(config, preset_params(config, 0), source / f"{kind}.onnx")

    def into(d):
        for kind in ("lm", "layer"):
            shutil.copy(source / f"{kind}.onnx", d / f"{kind}.onnx")
        return d
    return into
