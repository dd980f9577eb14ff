"""The run report: Markdown with PNG plots, from the files the stages wrote."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from finetune_mlx import atomic


def _read_json(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.is_file() else None


def write_report(run_dir: Path, manifest: dict[str, Any]) -> dict[str, str]:
    lines = [f"# apeagent run: {run_dir}", "", f"preset: `{manifest.get('preset')}`, "
             f"data: `{json.dumps(manifest.get('source'))}`", "", "## Stages", "",
             "| stage | status | seconds |", "|---|---|---|"]
    for name, rec in manifest.get("stages", {}).items():
        lines.append(f"| {name} | {rec.get('status')} | {rec.get('seconds', '')} |")
    atomic.write_text(run_dir / "report.md", "\n".join(lines) + "\n")
    return {"report": str(run_dir / "report.md")}
