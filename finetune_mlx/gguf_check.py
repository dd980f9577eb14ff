"""An exported GGUF in llama.cpp against the MLX model it came from: greedy answers to the same
chat prompts, and how often their canary decisions agree.

llama.cpp runs through llama-cpp-python (the ``gguf`` extra), with the chat template stored in
the GGUF (``Llama.create_chat_completion``, temperature 0: greedy), as a user of llama.cpp or
its OpenAI-compatible server gets it. The MLX side is the canary evaluation's greedy answer
(``finetune_mlx.evaluate.answer``).
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Any

from apeagent.errors import UserError


def held_out_prompts(test_file: str | Path, limit: int = 0) -> list[list[dict]]:
    """The chat prompts (system + user, without the reference answer) of a test split."""
    from distill.dataset import read_split, split_prompt

    rows = read_split(Path(test_file))
    if limit:
        rows = rows[:limit]
    return [list(split_prompt(r)[0]) for r in rows]


def mlx_answers(model_dir: str | Path, prompts: list[list[dict]], max_tokens: int) -> list[str]:
    from finetune_mlx.model_dir import answer, load

    model, tokenizer = load(model_dir)
    return [answer(model, tokenizer, p, max_tokens)["text"] for p in prompts]


def open_llama(path: str | Path, n_ctx: int, threads: int = 1, **kwargs):
    """``llama_cpp.Llama`` for ``path`` with llama.cpp's weight repacking off.

    llama-cpp-python 0.3.36 repacks Q4_0/Q4_1 weights for its AVX-512/AMX kernels; on this
    project's CI CPU (AMX_INT8) the first forward pass through repacked Q4_1 weights (the
    SmolLM2 GGUF) segfaults. Without repacking the same file runs and agrees with MLX
    (``tests/test_smollm2.py``). The library takes the switch only through its default params.
    """
    import llama_cpp
    from llama_cpp import llama as llama_module

    default = llama_cpp.llama_model_default_params

    def params():
        p = default()
        p.use_extra_bufts = False
        return p

    llama_module.llama_cpp.llama_model_default_params = params
    try:
        # n_threads_batch too: ggml's threads spin at barriers, so a second prompt thread on a
        # busy machine's shared cores can make a run tens of times slower.
        return llama_cpp.Llama(str(path), n_ctx=n_ctx, n_threads=threads, n_threads_batch=threads,
                               verbose=False, seed=0, **kwargs)
    finally:
        llama_module.llama_cpp.llama_model_default_params = default


def llama_cpp_answers(
    gguf_path: str | Path, prompts: list[list[dict]], max_tokens: int, threads: int = 1
) -> dict[str, Any]:
    """Greedy llama.cpp answers: ``{"texts", "tokens_per_second", "load_s"}``."""
    import gguf

    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        raise UserError("running a GGUF needs llama-cpp-python: pip install -e '.[gguf]'") from None
    path = Path(gguf_path)
    if not path.is_file():
        raise UserError(f"GGUF file not found: {path}")
    fields = gguf.GGUFReader(path).fields
    arch = fields["general.architecture"].contents()
    ctx = int(fields[f"{arch}.context_length"].contents())
    t0 = time.perf_counter()
    llm = open_llama(path, min(ctx, 4096), threads)
    load_s = time.perf_counter() - t0
    texts, tokens, seconds = [], 0, 0.0
    for messages in prompts:
        t0 = time.perf_counter()
        out = llm.create_chat_completion(messages, temperature=0.0, max_tokens=max_tokens)
        seconds += time.perf_counter() - t0
        texts.append(out["choices"][0]["message"]["content"] or "")
        tokens += out["usage"]["completion_tokens"]
    llm.close()
    return {"texts": texts, "tokens_per_second": tokens / seconds if seconds else 0.0,
            "load_s": load_s}


def agreement(reference: list[str], answers: list[str]) -> dict[str, Any]:
    """How far ``answers`` (one per prompt) agree with ``reference``'s: the canary decision
    (None when an answer has no valid one), decision + amount, the whole text."""
    from distill.parse import parse_answer

    if len(reference) != len(answers) or not reference:
        raise ValueError("agreement needs one answer per reference answer (and at least one)")
    ref = [parse_answer(t) for t in reference]
    got = [parse_answer(t) for t in answers]
    decision = [(r.decision if r.valid else None) == (g.decision if g.valid else None)
                for r, g in zip(ref, got, strict=True)]
    action = [d and r.amount_eth == g.amount_eth for d, r, g in zip(decision, ref, got, strict=True)]
    n = len(reference)
    return {
        "n": n,
        "decision_agreement": sum(decision) / n,
        "action_agreement": sum(action) / n,
        "text_agreement": sum(a == b for a, b in zip(reference, answers, strict=True)) / n,
        "reference_compliance": sum(r.valid for r in ref) / n,
        "canary_compliance": sum(g.valid for g in got) / n,
        "decisions": dict(sorted(Counter(g.decision if g.valid else "none" for g in got).items())),
        "disagreements": [i for i, d in enumerate(decision) if not d],
    }

