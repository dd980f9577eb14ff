"""The small run on the shared real swaps: SmolLM2-135M-Instruct LoRA-tuned on the rules teacher,
timed end to end; the GAN ablation (the same run with the teacher on real windows only); QLoRA
(the same run with the student imported 4-bit).

    .venv/bin/python benchmarks/bench_small_run.py                 # all three variants
    .venv/bin/python benchmarks/bench_small_run.py --variants real+synthetic
    .venv/bin/python benchmarks/bench_small_run.py --merge A.json B.json --out runs/bench/small_run.json

Each variant is `scripts/pipeline.py --preset small --swaps <csv>` in its own run folder (the
real-only one adds `--set distill.synthetic_windows=false`, the QLoRA one
`--set finetune.base_q_bits=4`); the held-out test prompts are the
same real windows in both (the split's last windows are real). Prints one table, writes JSON
(--out): wall time and peak RSS of each run, the fused student's agreement with the teacher, the
best trivial baseline, canary compliance of the base and the fused student, the backtest's returns,
and the stage times from each run's manifest; beside the JSON the same table as markdown
(``.md``) and the valid learning curve of every variant (``.png``). ``--merge`` renders the
rows of earlier outputs together without running anything. The real-only dataset is smaller,
so its test split is the last part of the others': every fused student is also scored on the
test prompts all variants hold out (``common_test``: one ``ape-finetune eval`` each), the
like-for-like comparison of the ablation.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
REAL_CSV = REPO.parent / "shared/data/base_eth_usdc_v4_swaps.csv"
VARIANTS = {
    "real+synthetic": [],
    "real only": ["--set", "distill.synthetic_windows=false"],
    # QLoRA: the student imported 4-bit (MLX affine, group 64), LoRA over the quantised blocks
    "qlora": ["--set", "finetune.base_q_bits=4"],
}


def run_variant(name: str, run_dir: Path, extra: list[str]) -> dict:
    cmd = [sys.executable, str(REPO / "scripts/pipeline.py"), "--preset", "small",
           "--swaps", str(REAL_CSV), "--run-dir", str(run_dir), "--force", "all", *extra]
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    t0 = time.perf_counter()
    rc = subprocess.call(cmd, cwd=REPO)
    seconds = time.perf_counter() - t0
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    row = {"variant": name, "command": " ".join(cmd[1:]), "run_dir": str(run_dir), "exit": rc,
           "seconds": round(seconds, 1),
           # the largest child so far (a later variant reports its own only if it is larger)
           "peak_rss_mib": round(max(peak_kib, before) / 1024, 1)}
    if rc:
        return row
    ev = json.loads((run_dir / "eval" / "eval.json").read_text())
    fused = ev["variants"]["fused"]
    base = ev["variants"].get("base") or {}
    bt = json.loads((run_dir / "backtest" / "backtest.json").read_text())
    train = json.loads((run_dir / "student" / "adapters" / "train_report.json").read_text())
    manifest = json.loads((run_dir / "manifest.json").read_text())
    row.update(
        agreement=fused["decision_agreement"],
        canary=fused["canary_compliance"],
        base_canary=base.get("canary_compliance"),
        base_plain_agreement=base.get("plain_agreement"),
        best_trivial=ev["comparison"]["best_trivial_agreement"],
        margin_points=ev["comparison"].get("margin_points"),
        test_n=ev["n"],
        train_seconds=train["seconds"],
        valid_curve=[{k: v.get(k) for k in ("iteration", "val_loss", "valid_exact", "valid_decision")}
                     for v in train["val_log"]],
        backtest={p: {"return_pct": r.get("total_return_pct"), "trades": r.get("trades")}
                  for p, r in bt.get("policies", {}).items()},
        stages={k: v.get("seconds") for k, v in manifest.get("stages", {}).items()},
    )
    return row


def common_test(rows: list[dict], out: Path) -> None:
    """Every finished variant's fused student on the test prompts all of them hold out (the
    real-only dataset is smaller, so its test split is the last part of the others'), scored
    by ``ape-finetune eval`` as the pipeline scores it: ``row["common_test"]``."""
    from apeagent.files import write_jsonl

    done = [r for r in rows if r.get("exit") == 0 and r.get("run_dir")]
    if len(done) < 2:
        return

    def prompt(ex: dict) -> str:
        return json.dumps(ex["messages"][:-1], sort_keys=True)

    tests = {r["variant"]: [json.loads(line) for line in
                            (Path(r["run_dir"]) / "dataset" / "test.jsonl").read_text().splitlines()]
             for r in done}
    common = set.intersection(*({prompt(e) for e in t} for t in tests.values()))
    test_file = out.with_name(out.stem + "_common_test.jsonl")
    write_jsonl(test_file, [e for e in tests[done[0]["variant"]] if prompt(e) in common])
    for r in done:
        run = Path(r["run_dir"])
        ev = out.with_name(f"{out.stem}_common_eval_{run.name}.json")
        subprocess.run([sys.executable, "-m", "finetune_mlx", "eval", "-c", str(run / "config.yaml"),
                        "--run-dir", str(run), "--fused", str(run / "student" / "fused"),
                        "--test-file", str(test_file), "--train-file", str(run / "dataset" / "train.jsonl"),
                        "--no-base", "--out", str(ev)], cwd=REPO, check=True)
        e = json.loads(ev.read_text())
        r["common_test"] = {"file": str(test_file), "n": e["n"],
                            "agreement": e["variants"]["fused"]["decision_agreement"],
                            "canary": e["variants"]["fused"]["canary_compliance"],
                            "best_trivial": e["comparison"]["best_trivial_agreement"]}


def pct(x) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def ret(r: dict, policy: str) -> str:
    b = (r.get("backtest") or {}).get(policy) or {}
    if b.get("return_pct") is None:
        return "-"
    trades = f" ({b['trades']} trades)" if b.get("trades") else ""
    return f"{b['return_pct']:+.3f}%{trades}"


COLUMNS = ("variant", "minutes", "peak RSS MiB", "LoRA s", "fused agreement (test n)",
           "best trivial", "margin", "on the common test (n)", "canary", "base canary",
           "base plain", "backtest student", "backtest rules", "backtest hold")


def cells(r: dict) -> list[str]:
    lora = (r.get("stages") or {}).get("lora")
    return [r["variant"], f"{r['seconds'] / 60:.1f}", f"{r['peak_rss_mib']:.0f}",
            "-" if lora is None else f"{lora:.0f}",
            f"{pct(r.get('agreement'))} ({r.get('test_n', '-')})", pct(r.get("best_trivial")),
            "-" if r.get("margin_points") is None else f"{r['margin_points']:+.1f}",
            f"{pct(r['common_test']['agreement'])} ({r['common_test']['n']})" if r.get("common_test") else "-",
            pct(r.get("canary")), pct(r.get("base_canary")), pct(r.get("base_plain_agreement")),
            ret(r, "student"), ret(r, "rules"), ret(r, "hold")]


def render(rows: list[dict], out: Path) -> None:
    """The table (terminal and ``out``.md) and the valid curves of every variant (``out``.png)."""
    from rich.console import Console
    from rich.table import Table

    from apeagent.files import write_text

    table = Table(title="small run (SmolLM2-135M-Instruct, real CSV)")
    for c in COLUMNS:
        table.add_column(c, justify="right")
    for r in rows:
        table.add_row(*cells(r))
    Console().print(table)
    md = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    md += ["| " + " | ".join(cells(r)) + " |" for r in rows]
    md += ["", "Commands:", ""] + [f"- {r['variant']}: `{r['command']}`" for r in rows]
    write_text(out.with_suffix(".md"), "\n".join(md) + "\n")
    curves = [r for r in rows if r.get("valid_curve")]
    if curves:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        from apeagent.files import atomic_path

        fig, ax = plt.subplots(figsize=(6.5, 3.6))
        for r in curves:
            c = [v for v in r["valid_curve"] if v.get("valid_decision") is not None]
            label = f"{r['variant']} (test {pct(r.get('agreement'))})"
            ax.plot([v["iteration"] for v in c], [100 * v["valid_decision"] for v in c], "o-", label=label)
        bests = {r.get("best_trivial") for r in curves} - {None}
        if bests:  # each variant's own train split picks its rule: the highest is drawn
            many = " (highest of the variants)" if len(bests) > 1 else ""
            ax.axhline(100 * max(bests), color="grey", ls=":",
                       label=f"best one-number rule {pct(max(bests))}{many}")
        ax.set_xlabel("LoRA iteration")
        ax.set_ylabel("valid decision agreement, %")
        ax.set_ylim(0, 105)
        ax.set_title("small run: the student learns the teacher's decision")
        ax.legend(fontsize=7, loc="lower right")
        fig.tight_layout()
        with atomic_path(out.with_suffix(".png")) as tmp:
            fig.savefig(tmp, format="png", dpi=110)
        plt.close(fig)
    print(f"wrote {out.with_suffix('.md')}" + (f", {out.with_suffix('.png')}" if curves else ""))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/bench/small_run.json")
    p.add_argument("--run-root", default="runs/bench-small")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--merge", nargs="+", type=Path, metavar="JSON",
                   help="run nothing: the rows of these earlier outputs, in one table and plot")
    args = p.parse_args()
    from apeagent.errors import UserError, reading
    from apeagent.files import write_json

    out = Path(args.out)
    if args.merge:
        rows = []
        for path in args.merge:
            with reading(path, "--merge", extra=(json.JSONDecodeError,)):
                got = json.loads(path.read_text())
            if not isinstance(got, dict) or not isinstance(got.get("runs"), list):
                raise UserError(f"{path}: not an output of bench_small_run.py (no 'runs' list)")
            for r in got["runs"]:  # older outputs name the run folder only in the command
                cmd = r.get("command", "").split()
                if "run_dir" not in r and "--run-dir" in cmd:
                    r["run_dir"] = cmd[cmd.index("--run-dir") + 1]
                rows.append(r)
        common_test(rows, out)
        write_json(out, {"csv": str(REAL_CSV), "merged": [str(m) for m in args.merge], "runs": rows})
        render(rows, out)
        return
    rows = []
    for name in args.variants:
        folder = Path(args.run_root) / name.replace(" ", "-").replace("+", "-")
        rows.append(run_variant(name, folder, VARIANTS[name]))
        write_json(out, {"csv": str(REAL_CSV), "runs": rows})
    common_test(rows, out)
    write_json(out, {"csv": str(REAL_CSV), "runs": rows})
    render(rows, out)
    print(f"wrote {out}")
    if any(r["exit"] for r in rows):
        sys.exit(1)


if __name__ == "__main__":
    from apeagent.cli import run_cli

    run_cli(main)  # bad input: one `error:` line, exit 2
