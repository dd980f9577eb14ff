"""The end-to-end pipeline: swaps -> features -> GAN -> synthetic windows -> teacher -> dataset
-> LoRA student -> fused model -> canary evaluation -> report.

Each stage is one stage CLI command run as a subprocess (stages talk only through files, and
torch and MLX never share a process). A manifest in the run directory records every stage's
command, inputs, settings, outputs, versions and time. A stage is skipped when its inputs,
settings and outputs are unchanged since it last succeeded, so a killed or failed run resumes
at the first stage that has not finished.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata as md
import json
import os
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console

from apeagent import files
from apeagent.cli import RPC_URLS_ENV
from apeagent.config import SECTIONS, SHARED, apply_overrides, load, section, validate
from apeagent.errors import UserError
from apeagent.layout import RunLayout
from apeagent.redact import redact, redact_obj, redact_url

console = Console(stderr=True, soft_wrap=True)

VERSIONED = ("apeagent", "mlx", "mlx-lm", "torch", "numpy", "web3")


@dataclass
class Stage:
    name: str
    package: str  # the stage CLI: python -m <package> <command> <args>
    command: str
    args: list[str]
    inputs: list[Path]
    outputs: list[Path]
    settings: dict[str, Any] = field(default_factory=dict)
    about: str = ""
    fresh: bool = False  # remove old outputs first (an import must not merge into a stale store)
    env: dict[str, str] = field(default_factory=dict, repr=False)  # secrets: never stored or printed


def plan(cfg: dict[str, Any], run_dir: Path, config_file: Path, source: dict[str, Any]) -> list[Stage]:
    """The stages of one run, in order, with their files. ``source`` picks the data."""
    L = RunLayout(run_dir)
    c = ["-c", str(config_file), "--run-dir", str(L.root)]
    db, bars, ckpt, synthetic = L.swaps_db, L.bars, L.gan_checkpoint, L.synthetic_windows
    real_windows, answers, dataset = L.real_windows, L.answers, L.dataset
    base, adapters, fused = L.student_base, L.adapters, L.fused
    merged = validate(cfg)  # every section, before anything runs
    # a stage's fingerprint covers its own section and the shared market quantities (redacted:
    # the manifest keeps only the hash, but nothing secret goes into it either)
    shown = redact_obj({k: v for k, v in cfg.items() if not k.startswith("_")})
    sec = {name: {**shown.get(SHARED, {}), **shown.get(name, {})} for name in SECTIONS}
    # the last part of the swaps is never trained on: the GAN validates and the agent backtests there
    holdout = merged[SHARED]["holdout_frac"]
    stages: list[Stage] = []

    kind = source["kind"]
    if kind == "simulate":
        sim_csv = L.simulated_csv
        stages.append(Stage("simulate", "chain", "simulate", [*c, "--out", str(sim_csv)], [], [sim_csv],
                            {"chain": sec["chain"]}, "SIMULATED swaps (the offline default data source)"))
        swaps = sim_csv
        stages.append(Stage("ingest", "chain", "import-csv", [*c, str(sim_csv), "--db", str(db)],
                            [sim_csv], [db], {}, "simulated swaps -> event store", fresh=True))
    elif kind == "csv":
        csv = swaps = Path(source["path"])
        stages.append(Stage("ingest", "chain", "import-csv", [*c, str(csv), "--db", str(db)],
                            [csv], [db], {}, f"real swaps from {csv} -> event store", fresh=True))
    elif kind == "store":
        db = swaps = Path(source["path"])
    elif kind == "rpc":
        swaps = db
        args = [*c, "--db", str(db)]
        for flag in ("from_block", "to_block"):
            if source.get(flag) is not None:
                args += [f"--{flag.replace('_', '-')}", str(source[flag])]
        stages.append(Stage("ingest", "chain", "collect", args, [], [db],
                            {"chain": sec["chain"], "source": _describe(source)},
                            "collect swaps from the RPC endpoint(s)",
                            env={RPC_URLS_ENV: " ".join(source["urls"])}))
    else:
        raise UserError(f"unknown data source {kind!r}")

    features = L.features
    cut = {k: merged["distill"][k] for k in ("real_window_stride", "real_min_active_frac")}
    with_synthetic = merged["distill"]["synthetic_windows"]
    stages += [
        Stage("process", "chain", "process", [*c, "--db", str(db), "--out-dir", str(features)],
              [db], [bars, L.swaps_parquet], {"chain": sec["chain"]}, "swaps -> market features"),
        Stage("gan-train", "gan_torch", "train", [*c, "--bars", str(bars), "--out-dir", str(L.gan)],
              [bars], [ckpt], {"gan": sec["gan"]}, "WGAN-GP on the bars"),
        Stage("gan-generate", "gan_torch", "generate", [*c, "--checkpoint", str(ckpt), "--out", str(synthetic)],
              [ckpt], [synthetic], {"gan": sec["gan"]}, "synthetic market windows"),
        Stage("gan-validate", "gan_torch", "validate",
              [*c, "--checkpoint", str(ckpt), "--bars", str(bars), "--out-dir", str(L.validation)],
              [ckpt, bars], [L.validation_json], {"gan": sec["gan"]},
              "fidelity vs held-out real data and baselines"),
        Stage("real-windows", "gan_torch", "windows",
              [*c, "--bars", str(bars), "--out", str(real_windows), "--holdout-frac", str(holdout),
               "--stride", str(cut["real_window_stride"]), "--min-active-frac", str(cut["real_min_active_frac"])],
              [bars], [real_windows], {"gan": sec["gan"], "cut": cut}, "real market windows (backtest period left out)"),
        Stage("teacher", "distill", "teach",
              [*c, *(["--windows", str(synthetic)] if with_synthetic else []),
               "--windows", str(real_windows), "--out-dir", str(L.teacher)],
              [synthetic, real_windows] if with_synthetic else [real_windows], [answers, L.teacher_report],
              {"distill": sec["distill"]},
              "teacher answers" + ("" if with_synthetic else " (real windows only)")),
        # the report's item_keys say which of the cached answers the last teach asked
        Stage("dataset", "distill", "dataset", [*c, "--answers", str(answers), "--out-dir", str(dataset)],
              [answers, L.teacher_report], [L.split("train"), L.split("valid"), L.split("test")],
              {"distill": sec["distill"]}, "canary-word training data"),
    ]
    student, model = _student_base(merged["finetune"], L, c, sec["finetune"])
    stages += student
    model_inputs = [base] if student else []
    test = L.split("test")
    stages += [
        Stage("lora", "finetune_mlx", "lora", [*c, "--model", model, "--data", str(dataset), "--adapter-path", str(adapters)],
              [*model_inputs, L.split("train"), L.split("valid")], [adapters],
              {"finetune": sec["finetune"]}, "LoRA with the canary-weighted loss"),
        Stage("fuse", "finetune_mlx", "fuse", [*c, "--model", model, "--adapter-path", str(adapters), "--out", str(fused)],
              [*model_inputs, adapters], [fused], {"finetune": sec["finetune"]}, "fused MLX model"),
        Stage("eval", "finetune_mlx", "eval",
              [*c, "--model", model, "--adapter-path", str(adapters), "--fused", str(fused),
               "--test-file", str(test), "--out", str(L.eval_json)],
              [*model_inputs, adapters, fused, test], [L.eval_json], {"finetune": sec["finetune"]},
              "canary evaluation: base vs adapter vs fused"),
        Stage("backtest", "agent", "backtest",
              [*c, "--swaps", str(swaps), "--model", str(fused), "--out", str(L.backtest),
               "--holdout-frac", str(holdout)],
              [swaps, fused], [L.backtest_json], {"agent": sec["agent"]},
              "the fused student trades the held-out swaps, beside the rules teacher, hold and 50/50"),
    ]
    return stages



def _student_base(ft: dict[str, Any], L: RunLayout, c: list[str], settings: dict) -> tuple[list[Stage], str]:
    """The stage that makes the run's own student base, if any, and the base model to tune."""
    base, model = L.student_base, ft["base_model"]
    gguf, q_bits = ft["base_gguf"], ft["base_q_bits"]
    if gguf:
        # a pretrained GGUF student (the small preset's SmolLM2), imported once into the run
        args = [gguf, str(base)] + (["--q-bits", str(q_bits)] if q_bits else [])
        return [Stage("student-base", "finetune_mlx", "import-gguf", args,
                      [] if gguf == "smollm2" else [Path(gguf)], [base],
                      {"gguf": gguf, "q_bits": q_bits}, f"pretrained student imported from {gguf}")], str(base)
    if not model or Path(model) == base:
        # the tiny preset builds its own offline student
        return [Stage("student-base", "finetune_mlx", "build-tiny",
                      [*c, "--data", str(L.dataset), "--out", str(base)],
                      [L.split("train")], [base], {"finetune": settings},
                      "tiny offline qwen2 student")], str(base)
    return [], model

# ---------------------------------------------------------------- fingerprints and manifest


def fingerprint(path: Path) -> str | None:
    """Content hash of a file or directory (big files by size + mtime, to stay fast)."""
    if not path.exists():
        return None
    h = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for f in files:
        st = f.stat()
        h.update(str(f.relative_to(path) if f != path else f.name).encode())
        if st.st_size > 64 * 2**20:
            h.update(f"{st.st_size}:{st.st_mtime_ns}".encode())
        else:
            h.update(hashlib.sha256(f.read_bytes()).digest())
    return h.hexdigest()


def settings_hash(stage: Stage) -> str:
    text = json.dumps({"args": stage.args, "settings": stage.settings}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def load_manifest(run_dir: Path, rebuild: bool = False) -> dict[str, Any]:
    """The run's manifest. One that is not a manifest (written atomically, so a hand edit gone
    wrong, or another file) is an error naming it; ``rebuild`` (``--force all``) starts over."""
    path = RunLayout(run_dir).manifest
    if not path.exists():
        return {"stages": {}}
    why = ""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict) or not isinstance(data.get("stages", {}), dict):
            why = "valid JSON, but not a manifest (an object with a 'stages' object)"
        elif not all(isinstance(r, dict) for r in data.get("stages", {}).values()):
            why = "a stage record is not an object"
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
        why = f"not valid JSON ({type(e).__name__})"
    except OSError as e:
        raise UserError(f"{path}: cannot be read: {e.strerror or e}") from None
    if not why:
        data.setdefault("stages", {})
        return data
    if rebuild:
        console.print(f"[yellow]{path}: {why}; rebuilt (--force all): every stage re-runs")
        return {"stages": {}}
    raise UserError(f"{path}: {why}; fix or remove it, or pass --force all to rebuild the run")


def is_current(stage: Stage, record: dict[str, Any] | None) -> bool:
    if not record or record.get("status") != "done":
        return False
    if record.get("settings") != settings_hash(stage):
        return False
    if record.get("inputs") != {str(p): fingerprint(p) for p in stage.inputs}:
        return False
    return record.get("outputs") == {str(p): fingerprint(p) for p in stage.outputs}


def versions() -> dict[str, str]:
    out = {}
    for name in VERSIONED:
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = "absent"
    return out


# ---------------------------------------------------------------- running


def run(
    preset: str,
    run_dir: Path | None = None,
    source: dict[str, Any] | None = None,
    force: list[str] | None = None,
    until: str | None = None,
    overrides: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Run (or resume) the pipeline. Returns the manifest."""
    cfg = load(preset)
    apply_overrides(cfg, overrides or {})
    run_cfg = section(cfg, "run")
    run_dir = Path(run_dir or run_cfg["run_dir"])
    cfg.setdefault("run", {})["run_dir"] = str(run_dir)  # a stage run by hand with -c R/config.yaml finds R
    source = dict(source or {})
    source.setdefault("kind", run_cfg["source"])
    if source["kind"] == "rpc" and not source.get("urls"):
        source["urls"] = list(section(cfg, "chain")["rpc_urls"])
        if not source["urls"]:
            raise UserError("run.source is rpc but no endpoint is given: --rpc-url URL (or chain.rpc_urls)")
    check_inputs(source, run_dir)

    layout = RunLayout(run_dir)
    config_file = layout.config
    stages = plan(cfg, run_dir, config_file, source)  # validates the whole config
    names = [s.name for s in stages] + ["report"]
    force = set(force or [])
    unknown = force - set(names) - {"all"}
    if unknown:
        raise UserError(f"--force: unknown stage(s) {', '.join(sorted(unknown))} (stages: {', '.join(names)})")
    if until is not None and until not in names:
        raise UserError(f"--until: unknown stage {until!r} (stages: {', '.join(names)})")
    check_blocks(source, section(cfg, "chain"))
    check_swaps_file(source, section(cfg, "chain")["pool_id"])
    # every check is done before the first write: the manifest too
    manifest = load_manifest(run_dir, rebuild="all" in force)

    # every stage reads the same effective config (preset + --set overrides), kept with the run
    # (redacted: an endpoint's key reaches its stage through the environment only)
    effective = redact_obj({k: v for k, v in cfg.items() if not k.startswith("_")})
    text = yaml.safe_dump(effective, sort_keys=False)
    if not config_file.exists() or config_file.read_text() != text:
        files.write_text(config_file, text)
    manifest.update(preset=preset, run_dir=str(run_dir), source=_describe(source), versions=versions())
    if source["kind"] == "simulate":
        console.print("[bold yellow]data source: SIMULATED swaps (offline default); "
                      "use --swaps FILE or --rpc-url URL for real data")
    console.rule(f"apeagent pipeline · preset {preset} · {run_dir}")
    redo = False  # once a stage re-runs, everything after it re-runs too
    for stage in stages:
        record = manifest["stages"].get(stage.name)
        if not redo and stage.name not in force and "all" not in force and is_current(stage, record):
            console.print(f"[green]✓ {stage.name}[/] up to date ({stage.about})")
        else:
            redo = True
            _run_stage(stage, manifest, run_dir)
        if stage.name == until:
            manifest["status"] = f"stopped after {until}"
            save_manifest(run_dir, manifest)
            return manifest

    from apeagent.report import write_report

    started = time.time()
    report = write_report(run_dir, manifest)
    manifest["stages"]["report"] = {"status": "done", "outputs": report, "seconds": round(time.time() - started, 2)}
    manifest["status"] = "done"
    save_manifest(run_dir, manifest)
    console.print(f"[bold green]done[/]: report at {layout.report_md}")
    return manifest


def check_inputs(source: dict[str, Any], run_dir: Path) -> None:
    """Every input path exists and the run folder can be written, before anything is written."""
    kind = source["kind"]
    if kind in ("csv", "store"):
        path = Path(source["path"])
        what = "swaps file" if kind == "csv" else "event store"
        if not path.exists():
            raise UserError(f"{what} not found: {path}")
        if not path.is_file():
            raise UserError(f"{what} {path}: is a directory, not a file")
        if not os.access(path, os.R_OK):
            raise UserError(f"{what} {path}: permission denied")
        if kind == "store":
            _check_sqlite(path)
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"--run-dir {run_dir}: is a file, not a folder")
    parent = run_dir
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise UserError(f"--run-dir {run_dir}: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"--run-dir {run_dir}: {parent} is not writable")


def check_blocks(source: dict[str, Any], chain: dict[str, Any]) -> None:
    """The block range of an RPC source (flags, else ``chain.from_block`` / ``to_block``):
    numbers >= 0, from <= to; checked before any connection."""
    if source["kind"] != "rpc":
        given = [f for f in ("from_block", "to_block") if source.get(f) is not None]
        if given:
            raise UserError(f"--{given[0].replace('_', '-')} needs --rpc-url (the blocks of an RPC collection)")
        return
    lo = source.get("from_block") if source.get("from_block") is not None else chain["from_block"]
    hi = source.get("to_block") if source.get("to_block") is not None else chain["to_block"]
    for flag, v in (("--from-block", lo), ("--to-block", hi)):
        if isinstance(v, int) and not 0 <= v < 2**63:
            raise UserError(f"{flag} must be a block number >= 0, got {v}")
    if isinstance(hi, int) and isinstance(lo, int) and hi < lo:
        raise UserError(f"--to-block {hi} is below --from-block {lo}")


def check_swaps_file(source: dict[str, Any], pool_id: str) -> None:
    """A ``--swaps`` CSV's header and first rows, read by its owner (`ape-chain check-csv`,
    the ingest stage's reader) before anything is written: a bad file fails here, not after
    the first stages."""
    if source["kind"] != "csv":
        return
    cmd = [sys.executable, "-m", "chain", "check-csv", str(source["path"]), "--pool-id", pool_id]
    done = subprocess.run(cmd, capture_output=True, text=True, errors="replace")
    if done.returncode != 0:
        lines = [ln for ln in done.stderr.splitlines() if ln.strip()]
        why = lines[-1].removeprefix("error: ") if lines else f"exit code {done.returncode}"
        raise UserError(f"--swaps {why}" if str(source["path"]) in why else f"--swaps {source['path']}: {why}")


def _check_sqlite(path: Path) -> None:
    """A SQLite file, opened read-only (a 0-byte file is no store, and must not become one)."""
    if path.stat().st_size == 0:
        raise UserError(f"event store {path}: empty file, not a SQLite store")
    # immutable unless a writer left a -wal file: checking must not leave -wal/-shm files behind
    wal = path.with_name(path.name + "-wal").exists()
    uri = f"{path.resolve().as_uri()}?mode=ro{'' if wal else '&immutable=1'}"
    try:
        with contextlib.closing(sqlite3.connect(uri, uri=True)) as db:
            if db.execute("PRAGMA quick_check").fetchone()[0] != "ok":
                raise sqlite3.DatabaseError("integrity check failed")
    except sqlite3.DatabaseError as e:
        raise UserError(f"event store {path}: not a usable SQLite store ({e})") from None


def save_manifest(run_dir: Path, manifest: dict[str, Any]) -> None:
    """The manifest, redacted (apeagent/redact.py), written atomically."""
    files.write_json(RunLayout(run_dir).manifest, redact_obj(manifest))


def _run_stage(stage: Stage, manifest: dict[str, Any], run_dir: Path) -> None:
    cmd = [sys.executable, "-m", stage.package, stage.command, *stage.args]
    shown = [redact(a) for a in cmd[1:]]
    console.print(f"[bold cyan]▶ {stage.name}[/]: {stage.about}")
    console.print(f"  $ {' '.join(shown)}", style="dim", markup=False, highlight=False)
    for p in stage.outputs:
        p.parent.mkdir(parents=True, exist_ok=True)
        if stage.fresh:
            for old in p.parent.glob(p.name + "*"):  # the store and its -wal/-shm files
                old.unlink()
    started = time.time()
    record = {
        "status": "running",
        "command": shown,
        "settings": settings_hash(stage),
        "inputs": {str(p): fingerprint(p) for p in stage.inputs},
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    manifest["stages"][stage.name] = record
    save_manifest(run_dir, manifest)
    rc = subprocess.call(cmd, env={**os.environ, **stage.env} if stage.env else None)
    record["seconds"] = round(time.time() - started, 2)
    if rc != 0:
        record["status"] = "failed"
        record["exit_code"] = rc
        manifest["status"] = f"failed at {stage.name}"
        save_manifest(run_dir, manifest)
        raise StageFailed(stage.name, rc)
    missing = [str(p) for p in stage.outputs if not p.exists()]
    if missing:
        record["status"] = "failed"
        save_manifest(run_dir, manifest)
        raise StageFailed(stage.name, rc, f"did not write {', '.join(missing)}")
    record["status"] = "done"
    record["outputs"] = {str(p): fingerprint(p) for p in stage.outputs}
    save_manifest(run_dir, manifest)
    console.print(f"[green]✓ {stage.name}[/] in {record['seconds']:.1f}s")


class StageFailed(Exception):
    def __init__(self, stage: str, code: int, why: str = ""):
        self.stage, self.code = stage, code
        super().__init__(f"stage {stage} failed (exit code {code}){': ' + why if why else ''}; "
                         "finished stages are kept and the next run resumes here")


def _describe(source: dict[str, Any]) -> dict[str, Any]:
    out = dict(source)
    if "urls" in out:  # endpoint URLs often embed API keys
        out["urls"] = [redact_url(u) for u in out["urls"]]
    return out


# ---------------------------------------------------------------- command line


def cli(
    preset: str = "tiny",
    swaps: Path | None = None,
    store: Path | None = None,
    rpc_url: list[str] | None = None,
    from_block: int | None = None,
    to_block: int | None = None,
    run_dir: Path | None = None,
    force: list[str] | None = None,
    until: str | None = None,
    set_: list[str] | None = None,
) -> None:
    from apeagent.config import parse_overrides

    chosen = [x for x in (swaps, store, rpc_url) if x]
    if len(chosen) > 1:
        raise UserError(f"choose one data source: --swaps, --store or --rpc-url (or ${RPC_URLS_ENV})")
    if swaps:
        source = {"kind": "csv", "path": str(swaps)}
    elif store:
        if not store.is_file():
            raise UserError(f"event store not found: {store}")
        source = {"kind": "store", "path": str(store)}
    elif rpc_url:
        source = {"kind": "rpc", "urls": list(rpc_url), "from_block": from_block, "to_block": to_block}
    else:  # the config's source (--from-block / --to-block apply to run.source rpc only)
        source = {k: v for k, v in (("from_block", from_block), ("to_block", to_block)) if v is not None} or None
    try:
        manifest = run(preset, run_dir, source, force, until, parse_overrides(set_))
    except StageFailed as e:
        console.print(f"[bold red]✗ {e}")
        raise SystemExit(1) from None
    if manifest.get("status", "").startswith("stopped"):
        console.print(f"[yellow]{manifest['status']}")

