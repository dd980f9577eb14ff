"""The exact commands that ask a run's fused student a trading question with stock tools.

For one run (its fused model, its config, a held-out prompt from its own test split) this
prints what a user types:

- ``mlx_lm.generate`` (greedy, with ``--system-prompt`` when the student was trained with a
  system message, i.e. ``distill.include_system``);
- ``mlx_lm.server`` and a ``curl`` to its OpenAI-compatible ``/v1/chat/completions``;
- ``ape-finetune export-gguf --quant ...``, ``ollama create`` and ``ollama run``.

The prompt is the first row of ``dataset/test.jsonl`` (the messages the model was evaluated
on, system message included when it had one); without a dataset it is built by
``distill.prompt.messages`` for an example state, as the agent builds its prompts.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Any

from distill.prompt import LN_TICK, MarketState, messages

# An example market state for a run without a dataset yet (the `generate` command's defaults).
EXAMPLE_STATE = MarketState(
    price=3000.0, change_pct=0.8, change_ticks=round(0.8 / 100 / LN_TICK), volume_eth=120.0,
    volume_usdc=360000.0, volatility_pct=0.5, swap_count=400, eth_balance=1.0,
    usdc_balance=5000.0, window_minutes=60,
)


def recipe_prompt(test_file: Path, style: str, include_system: bool) -> tuple[list[dict], str]:
    """(chat messages without the answer, where they come from)."""
    if test_file.is_file():
        from distill.dataset import read_split, split_prompt

        rows = read_split(test_file)
        if rows:
            return list(split_prompt(rows[0])[0]), f"{test_file}:1"
    return messages(EXAMPLE_STATE, style, system=include_system), "distill.prompt (example state)"


def _q(text: str | Path) -> str:
    return shlex.quote(str(text))


def commands(
    fused: Path,
    msgs: list[dict],
    *,
    max_tokens: int,
    gguf_path: Path,
    quant: str,
    model_name: str = "ape-student",
    port: int = 8080,
) -> list[tuple[str, list[str]]]:
    """(title, shell commands) per tool, for the model dir ``fused`` and the prompt ``msgs``."""
    system = msgs[0]["content"] if msgs[0]["role"] == "system" else None
    user = msgs[-1]["content"]
    # mlx_lm.generate turns a literal "\n" of --prompt into a newline: one line to copy.
    one_line = user.replace("\n", "\\n") if "\\" not in user else user
    gen = f"mlx_lm.generate --model {_q(fused)}"
    if system is not None:
        gen += f" --system-prompt {_q(system)}"
    gen += f" --prompt {_q(one_line)} --max-tokens {max_tokens} --temp 0"
    body = {"messages": msgs, "max_tokens": max_tokens, "temperature": 0}
    curl = (f"curl -s http://127.0.0.1:{port}/v1/chat/completions "
            f"-H 'Content-Type: application/json' -d {_q(json.dumps(body))}")
    export = (f"ape-finetune export-gguf --model {_q(fused)} --out {_q(gguf_path)} "
              f"--quant {quant} --name {_q(model_name)}")
    if system is not None:
        export += f" --system {_q(system)}"
    return [
        ("mlx-lm, one greedy answer", [gen]),
        ("mlx-lm's OpenAI-compatible server (leave it running), then ask it",
         [f"mlx_lm.server --model {_q(fused)} --port {port}", curl]),
        ("Ollama: export a GGUF + Modelfile, create the model, ask it",
         [export, f"ollama create {_q(model_name)} -f {_q(gguf_path.parent / 'Modelfile')}",
          f"ollama run {_q(model_name)} {_q(user)}"]),
    ]


def format_recipe(steps: list[tuple[str, list[str]]], header: list[str]) -> str:
    lines = [f"# {h}" for h in header]
    for title, cmds in steps:
        lines += ["", f"# {title}", *cmds]
    return "\n".join(lines) + "\n"


def recipe_for_run(
    run_dir: str | Path | None,
    config: str | Path | None = None,
    *,
    quant: str = "q4_k_m",
    model_name: str = "ape-student",
    port: int = 8080,
) -> tuple[str, list[str]]:
    """The recipe text for a run and notes for the user (e.g. the model is not built yet).

    ``config``: a preset or YAML file; default the run's ``config.yaml``, else ``tiny``.
    ``run_dir``: default the config's ``run.run_dir``.
    """
    from apeagent.config import config_for, load, run_dir_of, section
    from apeagent.layout import RunLayout
    from finetune_mlx.export_gguf import canonical_quant

    quant = canonical_quant(quant)
    run_dir = Path(run_dir) if run_dir is not None else None
    cfg = load(config_for(config, run_dir))
    run = RunLayout(run_dir or run_dir_of(cfg))
    distill: dict[str, Any] = section(cfg, "distill")
    finetune: dict[str, Any] = section(cfg, "finetune")
    msgs, source = recipe_prompt(run.split("test"), distill["style"], distill["include_system"])
    notes = []
    if not (run.fused / "config.json").is_file():
        notes.append(f"{run.fused} is not built yet: run the pipeline first")
    steps = commands(
        run.fused,
        msgs,
        max_tokens=finetune["max_tokens"],
        gguf_path=run.gguf / f"model-{quant}.gguf",
        quant=quant,
        model_name=model_name,
        port=port,
    )
    system = "with" if msgs[0]["role"] == "system" else "without"
    header = [
        f"Ask the fused student of {run_dir} (config {config}) one trading question,",
        f"prompt from {source}, {system} the system prompt (as it was trained); greedy decoding.",
        "The answer ends in a canary decision: #### APE IN|APE OUT|APE NEUTRAL [amount ETH].",
    ]
    return format_recipe(steps, header), notes
