"""safetensors checkpoints: save_pretrained / from_pretrained, export.checkpoint, `infini export --checkpoint`."""
import json

import numpy as np
import pytest
import torch

from infini_attention import reference as R
from infini_attention.reference.cli import main
from infini_attention.torch_impl import InfiniAttention, InfiniTransformerLM

pytest.importorskip("safetensors", reason="safetensors checkpoints need the 'safetensors' package")
from safetensors import safe_open  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

from infini_attention.export.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402

ATTN = R.InfiniConfig(d_model=16, n_heads=4, n_kv_heads=2, d_key=8, d_value=6, segment_len=8, update="delta",
                      rope_theta=1e4)
LM = R.LMConfig(vocab_size=23, n_layers=2, d_ff=24, attn=ATTN, norm_eps=1e-5)


def _lm(dtype=torch.float32, seed=0):
    return InfiniTransformerLM.from_numpy(LM, R.lm_init_params(LM, seed), dtype=dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_lm_round_trip_is_bit_identical(tmp_path, dtype):
    model = _lm(dtype)
    model.save_pretrained(tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["config.json", "model.safetensors"]
    back = InfiniTransformerLM.from_pretrained(tmp_path / "m")
    assert back.config == LM and back.embed.dtype == dtype
    for (name, p), (name2, q) in zip(model.named_parameters(), back.named_parameters()):
        assert name == name2 and torch.equal(p, q)
    tokens = torch.arange(11)[None] % LM.vocab_size
    with torch.no_grad():
        assert torch.equal(model(tokens)[0], back(tokens)[0])


def test_files_are_what_hf_users_expect(tmp_path):
    _lm().save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["architectures"] == ["InfiniTransformerLM"] and cfg["model_type"] == "infini_attention"
    assert cfg["attn"] == ATTN.to_dict() and cfg["vocab_size"] == 23
    with safe_open(str(tmp_path / "model.safetensors"), framework="pt") as f:
        meta = f.metadata()
        assert sorted(f.keys()) == sorted(R.lm_param_shapes(LM))  # the reference names
    assert meta["format"] == "pt" and R.config_from_dict(json.loads(meta["infini_attention_config"])) == LM


def test_equal_weights_are_equal_files(tmp_path):
    # safetensors alone writes its metadata in hash-map order (safetensors issue #584): without the sorted
    # header, six saves of one model make two or more distinct files (measured before the fix).
    model = _lm()
    blobs = set()
    for i in range(6):
        model.save_pretrained(tmp_path / str(i))
        blobs.add((tmp_path / str(i) / "model.safetensors").read_bytes())
    assert len(blobs) == 1
    mode = (tmp_path / "0" / "model.safetensors").stat().st_mode & 0o777
    assert mode == 0o666 & ~_umask(), oct(mode)  # not the 0600 that mkstemp and safetensors give


def _umask():
    import os
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_layer_round_trip_and_lone_file(tmp_path):
    layer = InfiniAttention.from_numpy(ATTN, R.init_params(ATTN, 3), dtype=torch.float32)
    layer.save_pretrained(tmp_path / "layer")
    back = InfiniAttention.from_pretrained(tmp_path / "layer", dtype=torch.float64)
    assert back.config == ATTN and back.wq.dtype == torch.float64
    assert all(np.array_equal(back.numpy_params()[k], v) for k, v in layer.numpy_params().items())
    # the weights file alone describes itself (config in its metadata)
    lone = tmp_path / "lone.safetensors"
    (tmp_path / "layer" / "model.safetensors").rename(lone)
    assert InfiniAttention.from_pretrained(lone).config == ATTN
    with pytest.raises(ValueError, match=r"expected a layer checkpoint \(InfiniAttention\), got kind 'lm'"):
        _lm().save_pretrained(tmp_path / "lm")
        InfiniAttention.from_pretrained(tmp_path / "lm")


def test_save_checkpoint_writes_safetensors_and_old_formats_stay_readable(tmp_path):
    params = R.lm_init_params(LM, 1)
    for path, written in [(tmp_path / "a.safetensors", tmp_path / "a.safetensors"),
                          (tmp_path / "b.pt", tmp_path / "b.safetensors"), (tmp_path / "dir", tmp_path / "dir")]:
        assert save_checkpoint(path, LM, params) == written
        config, back = load_checkpoint(written)
        assert config == LM and all(np.array_equal(back[k], v) for k, v in params.items())
    assert not (tmp_path / "b.pt").exists()
    # the formats of earlier versions: a torch.save dict and an .npz with a __config__ entry
    torch.save({"format": "infini-attention-checkpoint/1", "config": LM.to_dict(),
                "state_dict": {k: torch.from_numpy(v) for k, v in params.items()}}, tmp_path / "old.pt")
    np.savez(tmp_path / "old.npz", __config__=np.array(json.dumps(LM.to_dict())), **params)
    for old in ("old.pt", "old.npz"):
        config, back = load_checkpoint(tmp_path / old)
        assert config == LM and all(np.array_equal(back[k], v) for k, v in params.items())


def test_infini_export_reads_a_safetensors_directory(tmp_path, capsys):
    """(A lone .safetensors file takes the same path: load_checkpoint, tested above and in the bad-input tests.)"""
    pytest.importorskip("onnxruntime")
    from infini_attention.export import InfiniSession
    from infini_attention.reference.tolerances import assert_close

    model = _lm()
    src = tmp_path / "ckpt"
    save_checkpoint(src, LM, model)
    assert main(["export", "--checkpoint", str(src), "-o", str(tmp_path / "m.onnx")]) == 0
    ids = np.arange(10)[None] % LM.vocab_size
    with torch.no_grad():
        expected, _ = model(torch.as_tensor(ids))
    assert_close("logits", InfiniSession(tmp_path / "m.onnx", provider="cpu").feed(ids), expected.numpy(), "float32")


def _tensors(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def _meta(config):
    return {"format": "pt", "infini_attention_format": "infini-attention-checkpoint/1",
            "infini_attention_config": json.dumps(config.to_dict())}


def _bad_inputs(d):
    """name -> (path to load, message it must give)."""
    t = _tensors(_lm())
    t["layers.1.attn.wk"] = torch.zeros(16, 8)
    save_file(t, str(d / "shape.safetensors"), metadata=_meta(LM))
    t = _tensors(_lm())
    del t["final_norm"]
    save_file(t, str(d / "missing.safetensors"), metadata=_meta(LM))
    _lm().save_pretrained(d / "good")
    data = (d / "good" / "model.safetensors").read_bytes()
    (d / "trunc.safetensors").write_bytes(data[: len(data) - 100])
    (d / "junk.safetensors").write_bytes(b"\x00" * 64)
    (d / "noconf").mkdir()
    (d / "noconf" / "model.safetensors").write_bytes(data)
    (d / "hfdir").mkdir()
    (d / "hfdir" / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 16}))
    (d / "hfdir" / "model.safetensors").write_bytes(data)
    (d / "mixed").mkdir()
    (d / "mixed" / "model.safetensors").write_bytes(data)
    other = R.LMConfig(vocab_size=23, n_layers=2, d_ff=24, attn=ATTN.replace(update="linear"), norm_eps=1e-5)
    (d / "mixed" / "config.json").write_text(json.dumps({**json.loads((d / "good" / "config.json").read_text()),
                                                         "attn": other.attn.to_dict()}))
    save_file(_tensors(_lm()), str(d / "nometa.safetensors"))
    return {
        "shape": ("shape.safetensors", "tensor 'layers.1.attn.wk': expected shape (16, 16), got (16, 8)"),
        "missing tensor": ("missing.safetensors", "missing ['final_norm']"),
        "truncated": ("trunc.safetensors", "expected a safetensors file, cannot read it (corrupt or truncated"),
        "junk": ("junk.safetensors", "expected a safetensors file, cannot read it (corrupt or truncated"),
        "no config.json": ("noconf", "expected a directory with config.json and model.safetensors "
                                     "(save_pretrained), missing config.json"),
        "HF directory": ("hfdir", "got model_type 'llama': for a Hugging Face model use torch_impl.hf.from_hf"),
        "config mismatch": ("mixed", "expected config.json and the model.safetensors metadata to hold one config"),
        "no config at all": ("nometa.safetensors", "expected the config in the metadata entry"),
    }


def test_bad_checkpoints_are_one_line_errors(tmp_path):
    for name, (rel, message) in _bad_inputs(tmp_path).items():
        for load in (InfiniTransformerLM.from_pretrained, load_checkpoint):
            with pytest.raises(ValueError) as info:
                load(tmp_path / rel)
            msg = str(info.value)
            assert message in msg and "\n" not in msg, (name, msg)
            assert str(tmp_path / rel) in msg, (name, msg)  # names the file


def test_cli_bad_checkpoint_exit_2_nothing_written(tmp_path, capsys):
    cases = _bad_inputs(tmp_path)
    for name in ("shape", "truncated", "no config.json"):
        rel, message = cases[name]
        out = tmp_path / f"{name}.onnx"
        assert main(["export", "--checkpoint", str(tmp_path / rel), "-o", str(out)]) == 2, name
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, (name, err)
        assert not out.exists()


def test_save_refuses_bad_tensors_and_writes_nothing(tmp_path):
    params = R.lm_init_params(LM, 0)
    params["lm_head"] = params["lm_head"].copy()
    params["lm_head"][0, 0] = np.nan
    with pytest.raises(ValueError, match="tensor 'lm_head': expected finite values, got 1 NaN/Inf"):
        save_checkpoint(tmp_path / "d", LM, params)
    with pytest.raises(ValueError, match=r"tensor 'embed': expected shape \(23, 16\), got \(22, 16\)"):
        save_checkpoint(tmp_path / "f.safetensors", LM, {**params, "embed": params["embed"][:-1]})
    assert list(tmp_path.iterdir()) == []
