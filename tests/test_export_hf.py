"""MLX -> Hugging Face export: transformers (torch, CPU) loads it and gives MLX's logits."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from export_fixtures import (
    MESSAGES,
    TEXT,
    build,
    listing,
    mlx_logits,
    mlx_weights,
    quantize,
    with_model_type,
)

from apeagent.errors import UserError
from finetune_mlx.export_hf import export_hf

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
safetensors_torch = pytest.importorskip("safetensors.torch")

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("export_hf")
    tied = build(root / "tied")
    return {
        "tied": tied,
        "untied": build(root / "untied", untie=True, pad_vocab=5, seed=3),
        "q4": quantize(tied, root / "q4"),
    }


def hf_logits(hf_dir: Path, ids: list[int]) -> np.ndarray:
    model = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].float().numpy()


def max_rel_err(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


@pytest.mark.parametrize("variant", ["tied", "untied"])
def test_float32_export_matches_mlx_logits(models, tmp_path, variant):
    src = models[variant]
    out = export_hf(src, tmp_path / "hf", dtype="float32")
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
            "generation_config.json"} <= set(listing(out))

    tok = transformers.AutoTokenizer.from_pretrained(out)
    ids = tok(TEXT)["input_ids"]
    want, mlx_tok = mlx_logits(src, ids)
    assert ids == mlx_tok.encode(TEXT)
    assert tok.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True) == \
        mlx_tok.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True)
    assert np.abs(want).max() > 1.0  # random weights: logits far from zero, a real comparison
    got = hf_logits(out, ids)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, atol=2e-4 * np.abs(want).max(), rtol=0)

    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["Qwen2ForCausalLM"]
    assert config["tie_word_embeddings"] is (variant == "tied")
    gen = transformers.GenerationConfig.from_pretrained(out)
    assert gen.eos_token_id == config["eos_token_id"]


@pytest.mark.parametrize("dtype,torch_dtype", [("float16", "float16"), ("bf16", "bfloat16")])
def test_half_exports_are_the_rounded_weights(models, tmp_path, dtype, torch_dtype):
    src = models["tied"]
    out = export_hf(src, tmp_path / "hf", dtype=dtype)
    tensors = safetensors_torch.load_file(out / "model.safetensors")
    want = mlx_weights(src)
    assert set(tensors) == set(want)
    for name, w in want.items():
        t = tensors[name]
        assert t.dtype == getattr(torch, torch_dtype), name
        expect = torch.from_numpy(w).to(t.dtype)
        assert torch.equal(t, expect), name
    config = json.loads((out / "config.json").read_text())
    assert config["torch_dtype"] == config["dtype"] == torch_dtype
    model = transformers.AutoModelForCausalLM.from_pretrained(out)
    assert model.dtype == getattr(torch, torch_dtype)

    ids = transformers.AutoTokenizer.from_pretrained(out)(TEXT)["input_ids"]
    want_logits, _ = mlx_logits(src, ids)
    assert max_rel_err(hf_logits(out, ids), want_logits) < 3e-2


def test_quantized_model_is_dequantized(models, tmp_path):
    src = models["q4"]
    assert "quantization" in json.loads((src / "config.json").read_text())
    out = export_hf(src, tmp_path / "hf", dtype="float32")
    config = json.loads((out / "config.json").read_text())
    assert "quantization" not in config and "quantization_config" not in config
    assert json.loads((out / "export_info.json").read_text())["dequantized"] is True

    tensors = safetensors_torch.load_file(out / "model.safetensors")
    want = mlx_weights(src)
    assert set(tensors) == set(want)  # no .scales / .biases left
    for name, w in want.items():
        np.testing.assert_array_equal(tensors[name].numpy(), w, err_msg=name)

    ids = transformers.AutoTokenizer.from_pretrained(out)(TEXT)["input_ids"]
    want_logits, _ = mlx_logits(src, ids)  # MLX's own quantized matmuls
    assert max_rel_err(hf_logits(out, ids), want_logits) < 2e-3


def test_sharded_export_loads(models, tmp_path, monkeypatch):
    import finetune_mlx.export_hf as export_hf_module

    # The real 3B model is sharded (6.2 GB in float16 > 5 GB); shrink the limit to get there.
    monkeypatch.setattr(export_hf_module, "MAX_SHARD_BYTES", 60_000)
    src = models["untied"]
    out = export_hf(src, tmp_path / "hf", dtype="float32")
    shards = [p for p in listing(out) if p.endswith(".safetensors")]
    assert len(shards) > 2 and "model.safetensors" not in shards
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) == set(shards)
    assert set(index["weight_map"]) == set(mlx_weights(src))
    ids = transformers.AutoTokenizer.from_pretrained(out)(TEXT)["input_ids"]
    want, _ = mlx_logits(src, ids)
    np.testing.assert_allclose(hf_logits(out, ids), want, atol=2e-4 * np.abs(want).max(), rtol=0)


def test_replaces_an_old_export(models, tmp_path):
    out = tmp_path / "hf"
    out.mkdir()
    (out / "stale.txt").write_text("old")
    export_hf(models["tied"], out, dtype="f16")
    assert "stale.txt" not in listing(out)
    assert not [p for p in listing(tmp_path) if p.startswith(".")]


def test_bad_input_names_the_problem_and_writes_nothing(models, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(UserError, match="model directory not found: .*nope"):
        export_hf(tmp_path / "nope", out)
    other = with_model_type(models["tied"], tmp_path / "phi3", "phi3")
    with pytest.raises(UserError, match=r"config\.json: model_type 'phi3' is not supported"):
        export_hf(other, out)
    with pytest.raises(UserError, match="unknown dtype 'int8'"):
        export_hf(models["tied"], out, dtype="int8")
    with pytest.raises(UserError, match="must not be the model directory"):
        export_hf(models["tied"], models["tied"])
    assert not out.exists()
    assert listing(tmp_path) == ["phi3"]

    old = tmp_path / "old"
    old.mkdir()
    (old / "keep.txt").write_text("x")
    with pytest.raises(UserError):
        export_hf(other, old)
    assert listing(old) == ["keep.txt"]


def test_script_exit_codes(models, tmp_path):
    script = REPO / "scripts" / "convert_mlx_to_hf.py"
    bad = subprocess.run([sys.executable, str(script), "--model", str(tmp_path / "nope"),
                          "--out", str(tmp_path / "hf")], capture_output=True, text=True)
    assert bad.returncode == 2
    assert "error: model directory not found" in bad.stderr
    ok = subprocess.run([sys.executable, str(script), "--model", str(models["tied"]),
                         "--out", str(tmp_path / "hf"), "--dtype", "bf16"],
                        capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["dtype"] == "bfloat16"
