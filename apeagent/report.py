"""The run report: ``report.md`` with PNG plots and ``report.json`` with the numbers and the
targets of the stage issues, built only from the files the stages wrote."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from apeagent import files
from apeagent.layout import RunLayout
from apeagent.redact import redact, redact_obj

# The targets the stage issues set for a tiny-preset run; `report.json` says which are met.
TARGETS = {
    "base_canary_compliance_max": 0.05,
    "fused_canary_compliance_min": 0.95,
    "fused_decision_agreement_min": 0.85,
    "fused_margin_over_trivial_min_points": 15.0,
    "teacher_acceptance_min": 0.95,
}


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f}%"


def _num(x: Any, digits: int = 3) -> str:
    return "–" if x is None else f"{x:.{digits}f}" if isinstance(x, float) else str(x)


def collect(run_dir: Path) -> dict[str, Any]:
    """Every number the report shows, read from the stage outputs (missing stages -> None)."""
    r = RunLayout(run_dir)
    return {
        "data": _read_json(r.process_report),
        "validation": _read_json(r.validation_json),
        "teacher": _read_json(r.teacher_report),
        "dataset": _read_json(r.dataset_report),
        "train": _read_json(r.train_report),
        "eval": _read_json(r.eval_json),
        "backtest": _read_json(r.backtest_json),
    }


def check_targets(numbers: dict[str, Any]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    variants = (numbers.get("eval") or {}).get("variants", {})
    if "base" in variants:
        v = variants["base"]["canary_compliance"]
        out["base canary compliance near 0%"] = {"value": v, "target": f"<= {_pct(TARGETS['base_canary_compliance_max'])}",
                                                 "met": v <= TARGETS["base_canary_compliance_max"]}
    if "fused" in variants:
        v = variants["fused"]["canary_compliance"]
        out["fused canary compliance"] = {"value": v, "target": f">= {_pct(TARGETS['fused_canary_compliance_min'])}",
                                          "met": v >= TARGETS["fused_canary_compliance_min"]}
        v = variants["fused"]["decision_agreement"]
        best = ((numbers.get("eval") or {}).get("baselines") or {}).get("best_trivial_agreement")
        margin = TARGETS["fused_margin_over_trivial_min_points"]
        # the agreement means something only above what a trivial rule gets (majority class,
        # best single-feature threshold; finetune_mlx.baselines): >= 85% and >= 15 points above it
        out["fused decision agreement with the teacher"] = {
            "value": v, "best_trivial": best,
            "target": f">= {_pct(TARGETS['fused_decision_agreement_min'])} and >= {margin:g} points above "
                      f"the best trivial baseline ({_pct(best)})",
            "met": best is not None and v >= TARGETS["fused_decision_agreement_min"]
            and 100 * (v - best) >= margin}
    teacher = numbers.get("teacher")
    if teacher and teacher.get("items"):
        v = teacher["accepted"] / teacher["items"]
        out["teacher acceptance"] = {"value": v, "target": f">= {_pct(TARGETS['teacher_acceptance_min'])}",
                                     "met": v >= TARGETS["teacher_acceptance_min"]}
    validation = numbers.get("validation")
    if validation:
        # like with like: the GAN must have seen only the training period, as GBM and the
        # bootstrap did (gan validate records how it conditioned the GAN)
        mode = (validation.get("gan_conditioning") or {}).get("mode")
        fair = mode in ("training cond_bank", "windows file")
        for period, data in validation.get("periods", {}).items():
            verdicts = data.get("verdicts", {}).get("gan_vs_gbm", {})
            if verdicts:
                met = fair and verdicts.get("discriminative") == "better" and verdicts.get("acf_abs_ret") == "better"
                out[f"GAN beats GBM on the {period} period (discriminative, ACF of abs returns; "
                    "both fitted on the training period only)"] = {
                    "value": f"{verdicts.get('discriminative')}, {verdicts.get('acf_abs_ret')} (GAN conditioning: {mode})",
                    "target": "better, better", "met": met}
    return out


def _plot_training(train: dict[str, Any], path: Path) -> bool:
    log = train.get("train_log") or []
    if not log:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot([x["iteration"] for x in log], [x["train_loss"] for x in log], label="train loss")
    val = train.get("val_log") or []
    if val:
        ax.plot([x["iteration"] for x in val], [x["val_loss"] for x in val], "o-", label="validation loss")
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss (canary-weighted)")
    ax.set_title("student LoRA training")
    acc = [x for x in val if "valid_decision" in x]
    if acc:  # with the frozen-block cache: teacher-forced decision agreement on the valid set
        ax2 = ax.twinx()
        ax2.plot([x["iteration"] for x in acc], [100 * x["valid_decision"] for x in acc], "s-",
                 color="tab:green", label="valid decision agreement (teacher-forced)")
        ax2.plot([x["iteration"] for x in acc], [100 * x["valid_exact"] for x in acc], "^:",
                 color="tab:olive", label="valid answers reproduced exactly")
        ax2.set_ylabel("%")
        ax2.set_ylim(0, 105)
        ax2.legend(loc="center right", fontsize=7)
    ax.legend(loc="upper right", fontsize=7)
    fig.tight_layout()
    with files.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return True


def _plot_eval(variants: dict[str, Any], path: Path) -> bool:
    if not variants:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    names = list(variants)
    metrics = [("canary_compliance", "canary compliance"), ("decision_agreement", "agreement with teacher"),
               ("format_validity", "format validity")]
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for i, (key, label) in enumerate(metrics):
        ax.bar(x + (i - 1) * 0.27, [100 * variants[n][key] for n in names], 0.27, label=label)
    ax.axhline(95, color="grey", ls="--", lw=0.8)
    ax.set_xticks(x, names)
    ax.set_ylabel("%")
    ax.set_ylim(0, 105)
    ax.set_title("does it speak canary? (held-out test split)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    with files.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return True


def _targets_md(targets: dict[str, dict[str, Any]]) -> list[str]:
    md = ["", "## Targets", "", "| target | value | wanted | met |", "|---|---|---|---|"]
    for name, t in targets.items():
        value = _pct(t["value"]) if isinstance(t["value"], float) else t["value"]
        md.append(f"| {name} | {value} | {t['target']} | {'yes' if t['met'] else '**no**'} |")
    return md


def _data_md(data: dict[str, Any]) -> list[str]:
    return ["", "## Data", "", f"{data['swaps']} swaps, blocks {data['first_block']}–{data['last_block']}, "
            f"{data['bars']} bars of {data['bar_seconds']} s ({data['empty_bars']} without swaps), "
            f"price {data['price_min']:.2f}–{data['price_max']:.2f} USDC/ETH."]


def _swaps_md(swaps: dict[str, Any]) -> list[str]:
    real = swaps.get("real_test_stats", {})
    md = ["", f"### Swap-level fidelity (decoded swaps vs {real.get('swaps')} held-out real swaps)", "",
          f"Decoder `{swaps.get('decoder')}`; classifier on windows of 24 consecutive swaps "
          f"({swaps.get('real_windows')} real windows), 0 = indistinguishable, 0.5 = separable. "
          f"Held-out real: excess kurtosis {_num(real.get('ret_excess_kurtosis'), 1)}, "
          f"max |r| {_num(real.get('max_abs_ret'), 4)}.", "",
          "| source | discriminative (returns) | discriminative (all) | KS return | KS size | KS gap | kurtosis | max abs r |",
          "|---|---|---|---|---|---|---|---|"]
    for name, s in swaps.get("sources", {}).items():
        ks, st = s.get("ks", {}), s.get("stats", {})
        md.append(f"| {name} | {_num(s.get('discriminative_returns'))} | {_num(s.get('discriminative_all'))} | "
                  f"{_num(ks.get('log_return'))} | {_num(ks.get('size'))} | {_num(ks.get('dt'))} | "
                  f"{_num(st.get('ret_excess_kurtosis'), 1)} | {_num(st.get('max_abs_ret'), 4)} |")
    return md


def _validation_md(validation: dict[str, Any], plots: Path) -> list[str]:
    """The GAN fidelity section; the validation's plots are copied into ``plots``."""
    md = ["", "## GAN fidelity (synthetic vs held-out real windows)", "",
          f"Overall grade: **{validation.get('grade')}** (thresholds in docs/gan_torch.md). "
          "Lower is better everywhere; `real_train` (real training windows vs the held-out period) is the floor. "
          "Every source sees only the training period; the GAN is conditioned as "
          f"`ape-gan generate` conditions it ({(validation.get('gan_conditioning') or {}).get('detail', 'unknown')})."]
    for period, data_p in validation.get("periods", {}).items():
        md += ["", f"### held-out {period} period ({data_p.get('n_real_windows')} real windows)", "",
               "| source | grade | discriminative | predictive | mean KS | ACF r err | ACF abs r err | kurtosis err |",
               "|---|---|---|---|---|---|---|---|"]
        for name, s in data_p.get("sources", {}).items():
            md.append(f"| {name} | {s.get('grade')} | {_num(s.get('discriminative_score'))} | "
                      f"{_num(s.get('predictive_score'))} | {_num(s.get('mean_ks'))} | {_num(s.get('acf_ret_error'))} | "
                      f"{_num(s.get('acf_abs_ret_error'))} | {_num(s.get('kurtosis_error'), 2)} |")
    swaps = validation.get("swaps")
    if swaps:
        md += _swaps_md(swaps)
    for plot in [*validation.get("plots", []), *(swaps or {}).get("plots", [])]:
        src = Path(plot)
        if src.is_file():
            shutil.copyfile(src, plots / src.name)
            md += ["", f"![{src.stem}](report_plots/{src.name})"]
    return md


def _teacher_md(teacher: dict[str, Any]) -> list[str]:
    return ["", "## Teacher", "", f"Teacher `{teacher.get('teacher')}` (`{teacher.get('model')}`, style "
            f"`{teacher.get('style')}`): {teacher.get('accepted')} of {teacher.get('items')} answers accepted, "
            f"{teacher.get('rejected_after_retries')} rejected after retries; rejections by reason: "
            f"`{json.dumps(teacher.get('rejections'))}`; decisions `{json.dumps(teacher.get('decisions'))}`; "
            f"mean output tokens {_num((teacher.get('output_tokens') or {}).get('mean_accepted'), 1)}."]


def _dataset_md(dataset: dict[str, Any]) -> list[str]:
    md = ["", "## Dataset", "", "| split | examples | APE IN | APE OUT | APE NEUTRAL |", "|---|---|---|---|---|"]
    for split, n in dataset.get("counts", {}).items():
        c = dataset.get("classes", {}).get(split, {})
        md.append(f"| {split} | {n} | {c.get('APE IN', 0)} | {c.get('APE OUT', 0)} | {c.get('APE NEUTRAL', 0)} |")
    return md


def _train_md(train: dict[str, Any], plots: Path) -> list[str]:
    md = ["", "## Student training", "", f"`{train.get('fine_tune_type')}` on `{train.get('model')}`: "
          f"{train.get('iters')} iterations, {train.get('trainable_parameters')} trainable of "
          f"{train.get('total_parameters')} parameters, {_num(train.get('tokens_per_second'), 0)} tokens/s, "
          f"final train loss {_num(train.get('final_train_loss'))}, validation loss {_num(train.get('final_val_loss'))}."]
    if _plot_training(train, plots / "training_curve.png"):
        md += ["", "![training curve](report_plots/training_curve.png)"]
    return md


def _baselines_md(ev: dict[str, Any]) -> list[str]:
    base = ev.get("baselines") or {}
    if not base:
        return []
    single = base.get("best_single_feature") or {}
    cmp = ev.get("comparison") or {}
    return ["", "Trivial baselines (fit on the train split, scored on the same test prompts): "
            f"majority class `{base['majority']['decision']}` {_pct(base['majority']['agreement'])}, "
            f"best single-feature rule `{single.get('rule', '–')}` {_pct(single.get('agreement'))}; "
            f"the base model's plain-word (BUY/SELL/HOLD) agreement {_pct(cmp.get('base_plain_agreement'))}. "
            f"Fused margin over the best trivial baseline: {_num(cmp.get('margin_points'), 1)} points "
            f"({_num(cmp.get('margin_points_in_hindsight'), 1)} over the single-feature rule that scores "
            "best on test, chosen in hindsight)."]


def _eval_md(ev: dict[str, Any], plots: Path) -> list[str]:
    variants = ev.get("variants", {})
    md = ["", f"## Canary evaluation ({ev.get('n')} held-out test prompts)", "",
          "| metric | " + " | ".join(variants) + " |", "|---|" + "---|" * len(variants)]
    for key, label, fmt in [("canary_compliance", "canary compliance", _pct),
                            ("decision_agreement", "decision agreement with teacher", _pct),
                            ("format_validity", "format validity", _pct),
                            ("answer_tokens_mean", "answer tokens", lambda x: _num(x, 1)),
                            ("tokens_per_second", "generation tokens/s", lambda x: _num(x, 0)),
                            ("latency_s_mean", "latency (s)", lambda x: _num(x, 3))]:
        md.append(f"| {label} | " + " | ".join(fmt(v.get(key)) for v in variants.values()) + " |")
    md += _baselines_md(ev)
    if _plot_eval(variants, plots / "canary_eval.png"):
        md += ["", "![canary evaluation](report_plots/canary_eval.png)"]
    return md


def _backtest_md(bt: dict[str, Any], layout: RunLayout) -> list[str]:
    held = bt.get("holdout", {})
    md = ["", "## Backtest on the held-out swaps", "",
          f"{held.get('swaps')} swaps never trained on (the last {_pct(held.get('fraction'))}), "
          f"a decision every {bt.get('interval_minutes')} min ({bt.get('steps')} steps), pool fee and "
          "price impact from the exact AMM math, gas per trade.", "",
          "| policy | return % | Sharpe | max drawdown % | trades | fees USDC | unparseable |",
          "|---|---|---|---|---|---|---|"]
    for name, p in bt.get("policies", {}).items():
        md.append(f"| {name} | {p['total_return_pct']:+.3f} | {p['sharpe']:.2f} | {p['max_drawdown_pct']:.3f} | "
                  f"{p['trades']} | {p['fees_paid_usdc']:.2f} | {p.get('unparseable', 0)} |")
    equity = layout.backtest / "equity.png"
    if equity.is_file():
        shutil.copyfile(equity, layout.report_plots / "equity.png")
        md += ["", "![equity curves](report_plots/equity.png)"]
    return md


def _stages_md(manifest: dict[str, Any]) -> list[str]:
    md = ["", "## Stages", "", "| stage | status | seconds |", "|---|---|---|"]
    for name, rec in manifest.get("stages", {}).items():
        md.append(f"| {name} | {rec.get('status')} | {rec.get('seconds', '')} |")
    return md + ["", f"Versions: `{json.dumps(manifest.get('versions'))}`", ""]


def write_report(run_dir: Path, manifest: dict[str, Any]) -> dict[str, str]:
    """report.md (one section per stage that wrote its outputs, plots copied beside it) and
    report.json, both redacted."""
    layout = RunLayout(run_dir)
    numbers = collect(run_dir)
    targets = check_targets(numbers)
    plots = layout.report_plots
    plots.mkdir(exist_ok=True)
    source = manifest.get("source", {})
    simulated = source.get("kind") == "simulate" or (numbers["data"] or {}).get("simulated")

    md = [f"# apeagent run report: `{run_dir}`", ""]
    md.append(f"Preset `{manifest.get('preset')}`; data: `{json.dumps(source)}`.")
    if simulated:
        md += ["", "> **SIMULATED DATA.** These swaps come from the offline market simulator "
               "(`ape-chain simulate`), not from Base. Run with `--swaps FILE` or `--rpc-url URL` for real data."]
    md += _targets_md(targets)
    sections = [("data", _data_md), ("validation", lambda v: _validation_md(v, plots)),
                ("teacher", _teacher_md), ("dataset", _dataset_md),
                ("train", lambda t: _train_md(t, plots)), ("eval", lambda e: _eval_md(e, plots)),
                ("backtest", lambda b: _backtest_md(b, layout))]
    for key, section in sections:
        if numbers[key]:
            md += section(numbers[key])
    md += _stages_md(manifest)

    # everything a report shows passes the one redaction rule (endpoint URLs, keys)
    files.write_text(layout.report_md, redact("\n".join(md)))
    files.write_json(layout.report_json, redact_obj({"simulated": bool(simulated), "targets": targets, **numbers}))
    return {"report": str(layout.report_md), "numbers": str(layout.report_json)}
