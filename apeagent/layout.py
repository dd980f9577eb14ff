"""Where a run keeps its files: one ``RunLayout`` for the pipeline, the report and every stage
command's defaults, so a stage run by hand with ``--run-dir R`` (or ``-c R/config.yaml``) finds
what the pipeline put there.

    R/config.yaml                 the effective config every stage of the run read
    R/manifest.json               the pipeline's stages, fingerprints and status
    R/chain/swaps.db              event store (chain collect / import-csv)
    R/chain/simulated_swaps.csv   SIMULATED swaps (chain simulate, the offline source)
    R/features/                   bars.parquet, swaps.parquet, process_report.json,
                                  real_windows.parquet (chain process, gan windows)
    R/gan/                        checkpoints, metrics.jsonl, best.pt (gan train)
    R/synthetic/windows.parquet   synthetic windows (gan generate)
    R/validation/                 validation.json + PNGs (gan validate)
    R/teacher/                    answers.jsonl, teacher_report.json (distill teach)
    R/dataset/                    train/valid/test.jsonl, dataset_report.json (distill dataset)
    R/student/base|adapters|fused the student (finetune build-tiny, lora, fuse)
    R/student/gguf/               GGUF exports (finetune export-gguf, recipe)
    R/eval/eval.json              canary evaluation (finetune eval)
    R/backtest/                   backtest.json, decisions.jsonl, equity.png (agent backtest)
    R/agent/journal.jsonl         paper / live trading journal (agent trade)
    R/report.md, report.json      the run's report (pipeline)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class RunLayout:
    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    # the run itself
    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def manifest(self) -> Path:
        return self.root / "manifest.json"

    @property
    def report_md(self) -> Path:
        return self.root / "report.md"

    @property
    def report_json(self) -> Path:
        return self.root / "report.json"

    @property
    def report_plots(self) -> Path:
        return self.root / "report_plots"

    # chain
    @property
    def swaps_db(self) -> Path:
        return self.root / "chain" / "swaps.db"

    @property
    def simulated_csv(self) -> Path:
        return self.root / "chain" / "simulated_swaps.csv"

    @property
    def swaps_csv(self) -> Path:
        """Where ``ape-chain export`` writes the store as CSV."""
        return self.root / "chain" / "swaps.csv"

    @property
    def features(self) -> Path:
        return self.root / "features"

    @property
    def bars(self) -> Path:
        return self.features / "bars.parquet"

    @property
    def swaps_parquet(self) -> Path:
        return self.features / "swaps.parquet"

    @property
    def process_report(self) -> Path:
        return self.features / "process_report.json"

    @property
    def real_windows(self) -> Path:
        return self.features / "real_windows.parquet"

    # gan
    @property
    def gan(self) -> Path:
        return self.root / "gan"

    @property
    def gan_checkpoint(self) -> Path:
        return self.gan / "best.pt"

    @property
    def synthetic_windows(self) -> Path:
        return self.root / "synthetic" / "windows.parquet"

    @property
    def validation(self) -> Path:
        return self.root / "validation"

    @property
    def validation_json(self) -> Path:
        return self.validation / "validation.json"

    # distill
    @property
    def teacher(self) -> Path:
        return self.root / "teacher"

    @property
    def answers(self) -> Path:
        return self.teacher / "answers.jsonl"

    @property
    def teacher_report(self) -> Path:
        return self.teacher / "teacher_report.json"

    @property
    def dataset(self) -> Path:
        return self.root / "dataset"

    def split(self, name: str) -> Path:
        """``train`` | ``valid`` | ``test`` -> the dataset's JSONL file."""
        return self.dataset / f"{name}.jsonl"

    @property
    def dataset_report(self) -> Path:
        return self.dataset / "dataset_report.json"

    # finetune
    @property
    def student_base(self) -> Path:
        return self.root / "student" / "base"

    @property
    def adapters(self) -> Path:
        return self.root / "student" / "adapters"

    @property
    def train_report(self) -> Path:
        return self.adapters / "train_report.json"

    @property
    def fused(self) -> Path:
        return self.root / "student" / "fused"

    @property
    def gguf(self) -> Path:
        """GGUF exports of the fused student (``ape-finetune recipe`` points here)."""
        return self.root / "student" / "gguf"

    @property
    def eval_json(self) -> Path:
        return self.root / "eval" / "eval.json"

    # agent
    @property
    def backtest(self) -> Path:
        return self.root / "backtest"

    @property
    def backtest_json(self) -> Path:
        return self.backtest / "backtest.json"

    @property
    def journal(self) -> Path:
        return self.root / "agent" / "journal.jsonl"
