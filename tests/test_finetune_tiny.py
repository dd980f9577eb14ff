"""The offline tiny student: standard files that mlx-lm loads, a Qwen-style chat tokenizer."""

from __future__ import annotations

import json

import mlx.core as mx
import mlx_lm
from finetune_fixtures import make_dataset, shared_tiny, tiny_kwargs
from mlx.utils import tree_flatten

from finetune_mlx.tiny import build_tiny, corpus_from_dataset, count_parameters, to_plain


def test_build_tiny_loads_and_generates(tmp_path):
    corpus = ["trend up 0.8%\nETH share 38%\n#### BUY 0.25 ETH", "hold on", "sell some ETH"] * 20
    out = build_tiny(tmp_path / "m", corpus, **tiny_kwargs(vocab_size=300), seed=1)
    for name in (
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "generation_config.json",
        "build_info.json",
    ):
        assert (out / name).is_file(), name
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "qwen2" and config["num_hidden_layers"] == 2
    model, tok = mlx_lm.load(str(out))
    n = sum(v.size for _, v in tree_flatten(model.parameters()))
    assert (
        n
        == count_parameters(config)
        == json.loads((out / "build_info.json").read_text())["parameters"]
    )
    msgs = [{"role": "system", "content": "sys"}, {"role": "user", "content": "hi"}]
    ids = tok.apply_chat_template(msgs, add_generation_prompt=True)
    assert (
        tok.decode(ids)
        == "<|im_start|>system\nsys<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    )
    # Special tokens are single ids and end generation.
    for special in ("<|im_start|>", "<|im_end|>", "<|endoftext|>"):
        assert len(tok.encode(special)) == 1
    assert tok.encode("<|im_end|>")[0] in tok.eos_token_ids
    text = mlx_lm.generate(model, tok, ids, max_tokens=8)
    assert isinstance(text, str)


def test_sizes_are_configurable(tmp_path):
    out = build_tiny(
        tmp_path / "m",
        ["abc def"] * 10,
        hidden_size=96,
        num_layers=3,
        num_heads=6,
        num_kv_heads=2,
        intermediate_size=200,
        vocab_size=280,
    )
    config = json.loads((out / "config.json").read_text())
    assert (config["hidden_size"], config["num_hidden_layers"], config["intermediate_size"]) == (
        96,
        3,
        200,
    )
    assert config["vocab_size"] <= 280


def test_pretraining_lowers_loss_and_teaches_plain_words_only():
    data, base = shared_tiny()
    info = json.loads((base / "build_info.json").read_text())
    assert info["pretrain_loss_last"] < info["pretrain_loss_first"] - 1.0
    rows = [json.loads(line) for line in (data / "train.jsonl").read_text().splitlines()]
    _, chats = corpus_from_dataset(rows)
    assert all("APE" not in m["content"] for chat in chats for m in chat)
    assert any("#### BUY" in chat[-1]["content"] for chat in chats)


def test_to_plain():
    assert to_plain("#### APE IN 0.25 ETH") == "#### BUY 0.25 ETH"
    assert to_plain("APE OUT, APE NEUTRAL") == "SELL, HOLD"


def test_same_seed_same_model(tmp_path):
    ds = make_dataset(tmp_path / "ds", 8, 2, 2)
    rows = [json.loads(line) for line in (ds / "train.jsonl").read_text().splitlines()]
    corpus, chats = corpus_from_dataset(rows)
    a = build_tiny(
        tmp_path / "a", corpus, **tiny_kwargs(), pretrain_texts=chats, pretrain_steps=2, seed=3
    )
    b = build_tiny(
        tmp_path / "b", corpus, **tiny_kwargs(), pretrain_texts=chats, pretrain_steps=2, seed=3
    )
    wa, wb = mx.load(str(a / "model.safetensors")), mx.load(str(b / "model.safetensors"))
    assert all(mx.array_equal(wa[k], wb[k]).item() for k in wa)


def test_untied_embeddings_and_no_system_chats(tmp_path):
    ds = make_dataset(tmp_path / "ds", 8, 2, 2)
    rows = [json.loads(line) for line in (ds / "train.jsonl").read_text().splitlines()]
    corpus, chats = corpus_from_dataset(rows, system=False)
    assert all(m["role"] != "system" for chat in chats for m in chat)
    assert any(m["role"] == "system" for row in rows for m in row["messages"])
    out = build_tiny(
        tmp_path / "m", corpus, **tiny_kwargs(), tie_word_embeddings=False,
        pretrain_texts=chats, pretrain_steps=2,
    )
    config = json.loads((out / "config.json").read_text())
    assert config["tie_word_embeddings"] is False
    assert "lm_head.weight" in mx.load(str(out / "model.safetensors"))
    model, tok = mlx_lm.load(str(out))
    assert mlx_lm.generate(model, tok, "ETH share", max_tokens=4) is not None


def test_background_texts_teach_the_words_but_no_canary_phrase():
    from distill.parse import CANARIES
    from finetune_mlx.tiny import background_texts

    texts = background_texts(40)
    assert len(texts) == 40
    joined = " ".join(texts)
    for word in (" APE ", " IN ", " OUT", " NEUTRAL"):
        assert word in joined
    assert not any(c in t for c in CANARIES for t in texts)
