"""MLX -> GGUF export: read back with gguf's reader (metadata, tokenizer, every tensor) and
with transformers' independent GGUF loader (logits and tokenization against MLX)."""

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
from finetune_mlx.export_gguf import QUANTS, dataset_system_prompt, export_gguf

gguf = pytest.importorskip("gguf")
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

REPO = Path(__file__).resolve().parents[1]
F32, F16, BF16 = 0, 1, 30  # GGMLQuantizationType values, written out to not trust the package
CONTROL, NORMAL, UNUSED = 3, 1, 5

# llama.cpp's qwen2 tensor names (src/llama-arch.cpp), written out independently of gguf-py.
LAYER_NAMES = {
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.q_proj.bias": "attn_q.bias",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.k_proj.bias": "attn_k.bias",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.v_proj.bias": "attn_v.bias",
    "self_attn.o_proj.weight": "attn_output.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}


def gguf_name(hf_name: str) -> str:
    top = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
           "lm_head.weight": "output.weight"}
    if hf_name in top:
        return top[hf_name]
    _, _, layer, rest = hf_name.split(".", 3)
    return f"blk.{layer}.{LAYER_NAMES[rest]}"


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("export_gguf")
    tied = build(root / "tied")
    return {
        "tied": tied,
        "untied": build(root / "untied", untie=True, pad_vocab=5, seed=3),
        "q4": quantize(tied, root / "q4"),
    }


def field(reader, key):
    return reader.fields[key].contents()


def check_file(path: Path, src: Path, ftype: int, mat_type: int):
    """Every metadata key, the tokenizer and every tensor of ``path`` against ``src``."""
    reader = gguf.GGUFReader(path)
    config = json.loads((src / "config.json").read_text())
    tj = json.loads((src / "tokenizer.json").read_text())
    tc = json.loads((src / "tokenizer_config.json").read_text())
    # transformers 5 (mlx_lm.save, hence fused and quantized dirs) moves the template out
    template = tc.get("chat_template") or (src / "chat_template.jinja").read_text()

    expect = {
        "general.architecture": "qwen2",
        "general.file_type": ftype,
        "qwen2.context_length": config["max_position_embeddings"],
        "qwen2.embedding_length": config["hidden_size"],
        "qwen2.block_count": config["num_hidden_layers"],
        "qwen2.feed_forward_length": config["intermediate_size"],
        "qwen2.attention.head_count": config["num_attention_heads"],
        "qwen2.attention.head_count_kv": config["num_key_value_heads"],
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": "qwen2",
        "tokenizer.ggml.add_bos_token": False,
        "tokenizer.chat_template": template,
    }
    for key, value in expect.items():
        assert field(reader, key) == value, key
    assert field(reader, "qwen2.rope.freq_base") == pytest.approx(config["rope_theta"])
    assert field(reader, "qwen2.attention.layer_norm_rms_epsilon") == pytest.approx(config["rms_norm_eps"])

    # tokenizer: tokens in id order, padded to the embedding rows; types; merges; special ids
    n_vocab = config["vocab_size"]
    by_id = {i: t for t, i in tj["model"]["vocab"].items()}
    by_id.update({a["id"]: a["content"] for a in tj["added_tokens"]})
    tokens = field(reader, "tokenizer.ggml.tokens")
    types = field(reader, "tokenizer.ggml.token_type")
    assert len(tokens) == len(types) == n_vocab
    for i in range(n_vocab):
        assert tokens[i] == by_id.get(i, f"[PAD{i}]")
        special = by_id.get(i) in ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
        assert types[i] == (CONTROL if special else NORMAL if i in by_id else UNUSED), i
    assert field(reader, "tokenizer.ggml.merges") == [" ".join(m) for m in tj["model"]["merges"]]
    ids = {t: i for i, t in by_id.items()}
    assert field(reader, "tokenizer.ggml.eos_token_id") == ids["<|im_end|>"]
    assert field(reader, "tokenizer.ggml.padding_token_id") == ids["<|endoftext|>"]
    assert field(reader, "tokenizer.ggml.bos_token_id") == ids["<|endoftext|>"]

    # tensors: exactly the model's, llama.cpp names, reversed (ggml) dims, f32 1-D, values
    want = mlx_weights(src)
    got = {t.name: t for t in reader.tensors}
    assert sorted(got) == sorted(gguf_name(n) for n in want)
    assert ("output.weight" in got) is (not config["tie_word_embeddings"])
    for hf_name, w in want.items():
        t = got[gguf_name(hf_name)]
        assert list(t.shape) == list(reversed(w.shape)), hf_name  # ggml order: ne0 = columns
        if w.ndim == 1:
            assert t.tensor_type == F32, hf_name
            np.testing.assert_array_equal(t.data, w, err_msg=hf_name)
            continue
        assert t.tensor_type == mat_type, hf_name
        if mat_type == F32:
            np.testing.assert_array_equal(t.data, w, err_msg=hf_name)
        elif mat_type == F16:
            np.testing.assert_array_equal(t.data, w.astype(np.float16), err_msg=hf_name)
        else:
            bits = torch.from_numpy(w).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
            np.testing.assert_array_equal(t.data.view(np.uint16).reshape(w.shape), bits, err_msg=hf_name)
    return reader


def transformers_from_gguf(path: Path):
    """transformers' own GGUF reader (GGUF -> HF names and config), no accelerate needed."""
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    meta = load_gguf_checkpoint(str(path))
    model = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**meta["config"])).eval()
    tensors = load_gguf_checkpoint(str(path), return_tensors=True, model_to_load=model)["tensors"]
    missing, unexpected = model.load_state_dict(
        {k: torch.as_tensor(np.asarray(v, dtype=np.float32)) for k, v in tensors.items()}, strict=False)
    assert not unexpected
    assert set(missing) <= {"lm_head.weight"}  # tied to the embedding
    tok = transformers.AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    return model, tok


@pytest.mark.parametrize("variant", ["tied", "untied"])
def test_f16_file_metadata_tokenizer_and_every_tensor(models, tmp_path, variant):
    src = models[variant]
    path = export_gguf(src, tmp_path / "model.gguf")
    assert path == tmp_path / "model.gguf"
    assert listing(tmp_path) == ["Modelfile", "export_info.json", "model.gguf"]
    reader = check_file(path, src, ftype=1, mat_type=F16)
    info = json.loads((tmp_path / "export_info.json").read_text())
    assert info["bytes"] == path.stat().st_size and info["file_type"] == "MOSTLY_F16"
    assert info["quant"] is None and info["fallbacks"] == []
    assert set(info["matrix_types"]) == {"F16"}
    assert field(reader, "general.name") == variant


@pytest.mark.parametrize("outtype,ftype,mat_type", [("f32", 0, F32), ("bf16", 32, BF16)])
def test_other_outtypes(models, tmp_path, outtype, ftype, mat_type):
    check_file(export_gguf(models["tied"], tmp_path / "m.gguf", outtype), models["tied"], ftype, mat_type)


def test_quantized_model_is_dequantized(models, tmp_path):
    src = models["q4"]
    check_file(export_gguf(src, tmp_path / "model.gguf", "f32"), src, ftype=0, mat_type=F32)


@pytest.mark.parametrize("variant,outtype,tol", [("untied", "f32", 2e-4), ("tied", "f16", 3e-2),
                                                  ("q4", "f32", 2e-3)])
def test_transformers_reads_the_same_model(models, tmp_path, variant, outtype, tol):
    src = models[variant]
    path = export_gguf(src, tmp_path / "model.gguf", outtype)
    model, tok = transformers_from_gguf(path)
    ids = tok(TEXT)["input_ids"]
    want, mlx_tok = mlx_logits(src, ids)
    assert ids == mlx_tok.encode(TEXT)  # GGUF vocab + merges + qwen2 pre-tokenizer = the original
    assert tok.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True) == \
        mlx_tok.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True)
    with torch.no_grad():
        got = model(torch.tensor([ids])).logits[0].numpy()
    assert got.shape[-1] == json.loads((src / "config.json").read_text())["vocab_size"]
    assert np.abs(got - want).max() / np.abs(want).max() < tol


def test_modelfile(models, tmp_path):
    out = tmp_path / "dir"
    out.mkdir()
    path = export_gguf(models["tied"], out, system="You answer in canary words.", num_ctx=1024)
    assert path == out / "model.gguf"
    text = (out / "Modelfile").read_text()
    lines = text.splitlines()
    assert lines[1] == "FROM ./model.gguf"
    template = text.split('TEMPLATE """', 1)[1].split('"""', 1)[0]
    for part in ("<|im_start|>{{ .Role }}\n{{ .Content }}", "<|im_end|>\n", "<|im_start|>assistant\n",
                 "range $i, $_ := .Messages"):
        assert part in template
    assert 'SYSTEM """You answer in canary words."""' in lines
    for stop in ("<|im_end|>", "<|im_start|>", "<|endoftext|>"):
        assert f'PARAMETER stop "{stop}"' in lines
    assert "PARAMETER temperature 0" in lines and "PARAMETER num_ctx 1024" in lines
    default = export_gguf(models["tied"], tmp_path / "m.gguf")
    assert "PARAMETER num_ctx 512" in (default.parent / "Modelfile").read_text()  # min(ctx, 4096)


def test_bad_input_names_the_problem_and_writes_nothing(models, tmp_path):
    out = tmp_path / "out" / "model.gguf"
    with pytest.raises(UserError, match="model directory not found: .*nope"):
        export_gguf(tmp_path / "nope", out)
    other = with_model_type(models["tied"], tmp_path / "phi3", "phi3")
    with pytest.raises(UserError, match=r"config\.json: model_type 'phi3' is not supported"):
        export_gguf(other, out)
    with pytest.raises(UserError, match="unknown GGUF type 'q4_0'.*--quant"):
        export_gguf(models["tied"], out, "q4_0")
    with pytest.raises(UserError, match="unknown GGUF quant 'q4_k_x'"):
        export_gguf(models["tied"], out, quant="q4_k_x")
    with pytest.raises(UserError, match=r"model\.bin: the GGUF output file must end in \.gguf"):
        export_gguf(models["tied"], tmp_path / "out" / "model.bin")
    with pytest.raises(UserError, match='must not contain """'):
        export_gguf(models["tied"], out, system='say """hi"""')
    assert listing(out.parent) == []

    broken = tmp_path / "broken"
    broken.mkdir()
    for f in models["tied"].iterdir():
        if f.name != "tokenizer.json":
            (broken / f.name).write_bytes(f.read_bytes())
    with pytest.raises(UserError, match=r"broken/tokenizer\.json: missing"):
        export_gguf(broken, out)
    assert listing(out.parent) == []


def test_script(models, tmp_path):
    script = REPO / "scripts" / "convert_mlx_to_gguf.py"
    bad = subprocess.run([sys.executable, str(script), "--model", str(models["tied"]),
                          "--out", str(tmp_path / "m.gguf"), "--outtype", "q8"],
                         capture_output=True, text=True)
    assert bad.returncode == 2
    assert "error: unknown GGUF type 'q8'" in bad.stderr
    bad = subprocess.run([sys.executable, str(script), "--model", str(models["tied"]),
                          "--out", str(tmp_path / "m.gguf"), "--quant", "q7"],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and not (tmp_path / "m.gguf").exists()
    assert [ln for ln in bad.stderr.splitlines() if ln.startswith("error:")] == [
        "error: unknown GGUF quant 'q7': use one of " + ", ".join(QUANTS)]
    data = tmp_path / "dataset"
    data.mkdir()
    row = {"messages": MESSAGES + [{"role": "assistant", "content": "up\n#### APE IN 0.1 ETH"}]}
    (data / "train.jsonl").write_text(json.dumps(row) + "\n")
    out = tmp_path / "gguf"
    ok = subprocess.run([sys.executable, str(script), "--model", str(models["tied"]),
                         "--out", str(out / "m.gguf"), "--name", "ape-student",
                         "--system-from", str(data)], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert field(gguf.GGUFReader(out / "m.gguf"), "general.name") == "ape-student"
    assert listing(out) == ["Modelfile", "export_info.json", "m.gguf"]
    assert f'SYSTEM """{MESSAGES[0]["content"]}"""' in (out / "Modelfile").read_text()


def test_dataset_system_prompt(tmp_path):
    rows = tmp_path / "rows.jsonl"
    rows.write_text(json.dumps({"messages": MESSAGES}) + "\n")
    assert dataset_system_prompt(rows) == MESSAGES[0]["content"]
    rows.write_text(json.dumps({"messages": MESSAGES[1:]}) + "\n")
    assert dataset_system_prompt(rows) is None
    rows.write_text("{oops\n")
    with pytest.raises(UserError, match=r"rows\.jsonl:1: not a chat-format JSON row"):
        dataset_system_prompt(rows)
    with pytest.raises(UserError, match=r"dataset file not found: .*train\.jsonl"):
        dataset_system_prompt(tmp_path)


Q8_0, Q4_0 = 8, 2  # GGMLQuantizationType values


# Each block of 32 values has one f16 scale d (Q8_0: max|x|/127; Q4_0: max|x|/8, levels -8..7):
# a value is off by at most d/2 (Q4_0: d, at +8 clamped to 7), plus the f16 rounding of d.
@pytest.mark.parametrize("quant,qtype,ftype,tol", [("q8_0", Q8_0, 7, 1 / 254 + 1e-3),
                                                   ("q4_0", Q4_0, 2, 1 / 8 + 1e-3)])
def test_gguf_quants_hold_every_matrix_quantised(models, tmp_path, quant, qtype, ftype, tol):
    """Q8_0 / Q4_0 written by the gguf package: every matrix in the type, each value within
    its block's rounding of MLX's (dequantized by gguf's reader), norms and biases f32."""
    src = models["untied"]
    path = export_gguf(src, tmp_path / "model.gguf", quant=quant)
    reader = gguf.GGUFReader(path)
    assert field(reader, "general.file_type") == ftype
    want = mlx_weights(src)
    got = {t.name: t for t in reader.tensors}
    assert sorted(got) == sorted(gguf_name(n) for n in want)
    for hf_name, w in want.items():
        t = got[gguf_name(hf_name)]
        if w.ndim == 1:
            assert t.tensor_type == F32
            np.testing.assert_array_equal(t.data, w)
            continue
        assert t.tensor_type == qtype, hf_name
        values = gguf.quants.dequantize(t.data, gguf.GGMLQuantizationType(qtype)).reshape(w.shape)
        blocks, err = w.reshape(-1, 32), np.abs(values - w).reshape(-1, 32)
        assert (err <= tol * np.abs(blocks).max(axis=1, keepdims=True) + 1e-7).all(), hf_name
        assert err.max() > 0, hf_name  # really quantised
    info = json.loads((tmp_path / "export_info.json").read_text())
    assert info["quant"] == quant and info["quantizer"] == "gguf" and info["fallbacks"] == []
    assert info["bytes"] == path.stat().st_size
    assert info["summary"].startswith(f"{quant.upper()}: 16 matrices ({quant.upper()} 16)")
    # the Modelfile does not depend on the quant: same template, stops, greedy decoding
    f16 = export_gguf(src, tmp_path / "f16" / "model.gguf")
    assert (f16.parent / "Modelfile").read_text() == (tmp_path / "Modelfile").read_text()


def test_q8_0_read_by_transformers_gives_mlx_logits(models, tmp_path):
    src = models["tied"]
    model, tok = transformers_from_gguf(export_gguf(src, tmp_path / "model.gguf", quant="q8_0"))
    ids = tok(TEXT)["input_ids"]
    want, _ = mlx_logits(src, ids)
    with torch.no_grad():
        got = model(torch.tensor([ids])).logits[0].numpy()
    assert np.abs(got - want).max() / np.abs(want).max() < 3e-2


def test_rows_that_do_not_fit_the_block_stay_in_outtype(tmp_path):
    """Hidden size 48 is no multiple of Q8_0's 32-value block: those matrices stay f16 (as
    convert_hf_to_gguf.py does) and the report names each; ffn_down's rows of 192 fit."""
    from finetune_mlx.tiny import build_tiny

    src = build_tiny(tmp_path / "m48", ["APE IN 0.1 ETH", "APE OUT", "hold"] * 5, hidden_size=48,
                     num_layers=1, num_heads=4, num_kv_heads=2, vocab_size=300)
    path = export_gguf(src, tmp_path / "out" / "model.gguf", quant="q8_0")
    types = {t.name: t.tensor_type for t in gguf.GGUFReader(path).tensors if len(t.shape) > 1}
    assert types.pop("blk.0.ffn_down.weight") == Q8_0
    assert set(types.values()) == {F16}
    info = json.loads((path.parent / "export_info.json").read_text())
    assert sorted(f["tensor"] for f in info["fallbacks"]) == sorted(types)
    assert {(f["ncols"], f["block"], f["wanted"], f["used"]) for f in info["fallbacks"]} == {
        (48, 32, "Q8_0", "F16")}
    assert "fell back (Q8_0->F16): rows of 48 columns" in info["summary"]


def test_k_quant_without_llama_cpp_is_refused_up_front(models, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # as if the gguf extra were absent
    with pytest.raises(UserError, match=r"--quant q4_k_m needs llama\.cpp's quantizer: pip install"):
        export_gguf(models["tied"], tmp_path / "out" / "model.gguf", quant="q4_k_m")
    assert not (tmp_path / "out").exists()
    export_gguf(models["tied"], tmp_path / "out" / "model.gguf", quant="q8_0")  # needs no llama.cpp
