"""`ape-finetune recipe RUN_DIR`: the printed commands are run as printed (shlex) on the tiny
fused student; the printed prompt is the run's own held-out prompt."""

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from export_fixtures import student_run
from finetune_fixtures import example

from distill.dataset import read_split, split_prompt
from distill.parse import parse_answer
from distill.prompt import system_prompt
from finetune_mlx.gguf_check import mlx_answers

BIN = str(Path(sys.executable).parent)  # mlx_lm.generate, ape-finetune: the venv's scripts
ENV = {**os.environ, "PATH": BIN + os.pathsep + os.environ.get("PATH", "")}


def recipe(*args):
    return subprocess.run([sys.executable, "-m", "finetune_mlx", "recipe", *map(str, args)],
                          capture_output=True, text=True, env=ENV)


def command(text: str, program: str) -> list[str]:
    """The printed command line that starts with ``program``, split as a shell would."""
    for start, line in enumerate(text.splitlines()):
        if line.startswith(program + " "):
            # a quoted argument may span lines (ollama run's prompt): take lines until it closes
            lines = text.splitlines()[start:]
            for end in range(1, len(lines) + 1):
                try:
                    return shlex.split("\n".join(lines[:end]))
                except ValueError:
                    continue
    raise AssertionError(f"no {program} command in:\n{text}")


@pytest.fixture(scope="module")
def run():
    return student_run()


@pytest.fixture(scope="module")
def printed(run):
    r = recipe(run)
    assert r.returncode == 0, r.stderr
    assert r.stderr.count("note:") == 0  # the fused model exists
    return r.stdout


def test_printed_mlx_lm_generate_answers_like_the_model(run, printed):
    cmd = command(printed, "mlx_lm.generate")
    assert "--system-prompt" not in cmd  # the tiny preset trains without one
    messages = list(split_prompt(read_split(run / "dataset" / "test.jsonl")[0])[0])
    assert cmd[cmd.index("--prompt") + 1].replace("\\n", "\n") == messages[-1]["content"]
    out = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    # mlx_lm.generate prints the answer between two ==========, then its speed
    answer = out.stdout.split("==========\n")[1].rstrip("\n")
    parsed = parse_answer(answer)
    assert parsed.valid, out.stdout
    assert parsed.decision in ("APE IN", "APE OUT", "APE NEUTRAL")
    assert parse_answer(out.stdout).decision == parsed.decision  # the whole output parses too
    # the same greedy answer as the canary evaluation's for the same prompt
    assert answer == mlx_answers(run / "student" / "fused", [messages], 96)[0]


def test_printed_curl_body_and_ollama_files(run, printed, tmp_path):
    messages = list(split_prompt(read_split(run / "dataset" / "test.jsonl")[0])[0])
    server = command(printed, "mlx_lm.server")
    assert server[server.index("--model") + 1] == str(run / "student" / "fused")
    curl = command(printed, "curl")
    body = json.loads(curl[curl.index("-d") + 1])
    assert body == {"messages": messages, "max_tokens": 96, "temperature": 0}
    assert curl[2] == f"http://127.0.0.1:{server[server.index('--port') + 1]}/v1/chat/completions"
    ollama_run = command(printed, "ollama run")
    assert ollama_run[2:] == ["ape-student", messages[-1]["content"]]
    create = command(printed, "ollama create")
    export = command(printed, "ape-finetune export-gguf")
    gguf = Path(export[export.index("--out") + 1])
    assert Path(create[create.index("-f") + 1]) == gguf.parent / "Modelfile"
    assert export[export.index("--quant") + 1] == "q4_k_m" and "--system" not in export
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (the gguf extra)")
    out = subprocess.run(export, capture_output=True, text=True, env=ENV, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert gguf.is_file() and f"FROM ./{gguf.name}" in (gguf.parent / "Modelfile").read_text()
    assert json.loads((gguf.parent / "export_info.json").read_text())["file_type"] == "MOSTLY_Q4_K_M"


def test_system_prompt_when_the_run_trained_with_one(tmp_path):
    import random

    row = example(random.Random(1))  # system + user + answer, as with distill.include_system
    (tmp_path / "dataset").mkdir()
    (tmp_path / "dataset" / "test.jsonl").write_text(json.dumps(row) + "\n")
    (tmp_path / "config.yaml").write_text("extends: mac\n")
    r = recipe(tmp_path)
    assert r.returncode == 0, r.stderr
    assert "student/fused is not built yet" in r.stderr
    gen = command(r.stdout, "mlx_lm.generate")
    assert gen[gen.index("--system-prompt") + 1] == row["messages"][0]["content"]
    assert gen[gen.index("--max-tokens") + 1] == "256"  # the mac preset's finetune.max_tokens
    export = command(r.stdout, "ape-finetune export-gguf")
    assert export[export.index("--system") + 1] == row["messages"][0]["content"]
    body = json.loads(command(r.stdout, "curl")[-1])
    assert body["messages"] == row["messages"][:2]


def test_without_a_dataset_the_prompt_follows_the_preset(tmp_path):
    mac = recipe(tmp_path / "nothing", "-c", "mac")
    assert mac.returncode == 0, mac.stderr
    gen = command(mac.stdout, "mlx_lm.generate")
    assert gen[gen.index("--system-prompt") + 1] == system_prompt("cod")  # include_system: true
    assert "ETH share" in gen[gen.index("--prompt") + 1]
    tiny = recipe(tmp_path / "nothing", "-c", "tiny")
    assert "--system-prompt" not in command(tiny.stdout, "mlx_lm.generate")


def test_bad_input_is_one_line_and_exit_2(tmp_path):
    for args, msg in ((("-c", "tiny", "--quant", "q7"), "unknown GGUF quant 'q7'"),
                      (("-c", "nope"), "unknown preset 'nope'")):
        r = recipe(tmp_path, *args)
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 2 and r.stdout == "" and len(lines) == 1, r.stderr
        assert lines[0].startswith("error: ") and msg in lines[0]
