"""export-gguf of a llama-architecture model: SmolLM2-135M-Instruct imported from its packaged
GGUF, written back as f16 and Q8_0 and run in llama.cpp.

The packaged GGUF (made by llama.cpp's own converter) is the reference for the metadata; MLX is
the reference for the numbers: llama.cpp's last-position logits on a chat prompt must follow
MLX's, which they do only when the q/k projections carry llama.cpp's RoPE permutation.
Greedy answers on more prompts are a check of the report (slower), not of this file.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from distill.prompt import MarketState, chat_ids, messages
from finetune_mlx.export_gguf import export_gguf
from finetune_mlx.import_gguf import import_gguf, packaged_smollm2

pytest.importorskip("llama_cpp")

# keys the converter writes from the file's provenance, not from the model
PROVENANCE = ("general.", "tokenizer.ggml.add_space_prefix")  # the last: sentencepiece only


@pytest.fixture(scope="module")
def smol(tmp_path_factory) -> Path:
    return import_gguf(packaged_smollm2(), tmp_path_factory.mktemp("smol") / "base")


@pytest.fixture(scope="module")
def exported(smol, tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("gguf")
    return {
        "f16": export_gguf(smol, out / "f16" / "smol.gguf"),
        "q8_0": export_gguf(smol, out / "q8_0" / "smol.gguf", quant="q8_0"),
    }


def _prompt(tokenizer) -> list[int]:
    state = MarketState(price=3120.55, change_pct=1.2, change_ticks=120, volume_eth=42.1,
                        volume_usdc=131000.0, volatility_pct=0.8, swap_count=17,
                        eth_balance=1.5, usdc_balance=4200.0, window_minutes=60)
    return chat_ids(tokenizer, messages(state, system=False))


def _metadata(path: Path) -> dict[str, str]:
    from finetune_mlx.gguf_check import open_llama

    llm = open_llama(path, 256)
    meta = dict(llm.metadata)
    llm.close()
    return {k: v for k, v in meta.items() if not k.startswith(PROVENANCE)}


def test_metadata_is_what_llama_cpp_converter_wrote(exported):
    """llama.* hyper-parameters (rope dimension count, rope base 100000, GQA heads), the smollm
    pre-tokenizer, bos/eos/pad/unk ids, add_bos false, the template with its default system."""
    want = _metadata(packaged_smollm2())
    assert want["tokenizer.ggml.pre"] == "smollm" and want["llama.rope.dimension_count"] == "64"
    assert _metadata(exported["f16"]) == want
    assert _metadata(exported["q8_0"]) == want


def test_llama_cpp_tokenizes_the_chat_prompt_as_mlx(smol, exported):
    from mlx_lm.tokenizer_utils import load

    from finetune_mlx.gguf_check import open_llama

    tokenizer = load(smol)
    ids = _prompt(tokenizer)
    text = tokenizer.decode(ids)
    llm = open_llama(exported["f16"], 256)
    got = llm.tokenize(text.encode(), add_bos=False, special=True)
    llm.close()
    assert got == ids


@pytest.mark.parametrize("kind, min_corr", [("f16", 0.9999), ("q8_0", 0.99)])
def test_llama_cpp_logits_follow_mlx(smol, exported, kind, min_corr):
    import mlx.core as mx
    from mlx_lm import load

    from finetune_mlx.gguf_check import open_llama

    model, tokenizer = load(str(smol))
    ids = _prompt(tokenizer)
    ours = np.array(model(mx.array([ids]))[0, -1].astype(mx.float32))
    llm = open_llama(exported[kind], 512, logits_all=True)
    llm.eval(ids)
    theirs = np.array(llm.scores[len(ids) - 1], dtype=np.float32)
    llm.close()
    assert int(ours.argmax()) == int(theirs.argmax())
    assert np.corrcoef(ours, theirs)[0, 1] > min_corr
    info = json.loads((exported[kind].parent / "export_info.json").read_text())
    assert info["matrix_types"] == {"F16" if kind == "f16" else "Q8_0": 211}


def test_export_hf_llama_gives_mlx_logits_in_transformers(smol, tmp_path):
    import mlx.core as mx
    import torch
    from mlx_lm import load
    from transformers import AutoModelForCausalLM

    from finetune_mlx.export_hf import export_hf

    out = export_hf(smol, tmp_path / "hf", dtype="float32")
    assert json.loads((out / "config.json").read_text())["architectures"] == ["LlamaForCausalLM"]
    model, tokenizer = load(str(smol))
    ids = _prompt(tokenizer)
    ours = np.array(model(mx.array([ids]))[0].astype(mx.float32))
    hf = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32)
    with torch.no_grad():
        theirs = hf(torch.tensor([ids])).logits[0].numpy()
    assert np.abs(ours - theirs).max() < 1e-2


def test_llama_with_an_unknown_pre_tokenizer_is_refused(tmp_path):
    """A llama dir whose tokenizer llama.cpp's converter would not recognise (here the tiny
    qwen2 student's own BPE relabelled llama): no guessed pre-tokenizer, no file."""
    from export_fixtures import build, with_model_type

    from apeagent.errors import UserError

    llama = with_model_type(build(tmp_path / "tiny"), tmp_path / "llama", "llama")
    out = tmp_path / "out" / "model.gguf"
    with pytest.raises(UserError, match=r"tokenizer\.json: BPE pre-tokenizer not recognised"):
        export_gguf(llama, out)
    assert not out.parent.exists() or not any(out.parent.iterdir())
