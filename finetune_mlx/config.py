"""Pipeline configuration: one YAML format for every stage, presets as plain data files.

A config is a mapping of stage sections (``chain``, ``gan``, ``distill``, ``finetune``,
``pipeline``). A stage reads its own section with :func:`section`, which starts from the
stage's defaults (a plain dict, like mlx-lm's ``CONFIG_DEFAULTS``), overlays the file, then
overlays CLI flags. Unknown keys are errors, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

PRESET_DIR = Path(__file__).parent / "presets"
SECTIONS = ("run", "chain", "gan", "distill", "finetune", "agent")


class ConfigError(ValueError):
    """A config problem; the message names the file and the key."""


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def resolve(preset_or_path: str | Path) -> Path:
    """A preset name (``tiny``, ``mac``) or a path to a YAML file."""
    text = str(preset_or_path)
    candidate = Path(text)
    if candidate.suffix in (".yaml", ".yml") or candidate.exists():
        if not candidate.is_file():
            raise ConfigError(f"config file not found: {candidate}")
        return candidate
    path = PRESET_DIR / f"{text}.yaml"
    if not path.is_file():
        raise ConfigError(f"unknown preset {text!r} (known: {', '.join(preset_names())})")
    return path


def load(preset_or_path: str | Path = "tiny") -> dict[str, Any]:
    """Load a preset or config file. A file may ``extends: <preset>`` and override parts."""
    path = resolve(preset_or_path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: malformed YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping of sections")
    base: dict[str, Any] = {}
    parent = data.pop("extends", None)
    if parent is not None:
        base = load(parent)
    for key, value in data.items():
        if key not in SECTIONS:
            raise ConfigError(f"{path}: unknown section {key!r} (known: {', '.join(SECTIONS)})")
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: section {key!r} must be a mapping")
        base.setdefault(key, {}).update(value)
    base["_source"] = str(path)
    return base


def section(
    config: dict[str, Any],
    name: str,
    defaults: dict[str, Any],
    overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Defaults < config file section < explicit overrides (``None`` means "not given")."""
    merged = copy.deepcopy(defaults)
    source = config.get("_source", "<config>")
    for key, value in (config.get(name) or {}).items():
        if key not in defaults:
            raise ConfigError(
                f"{source}: unknown key {name}.{key} (known: {', '.join(sorted(defaults))})"
            )
        merged[key] = _coerce(value, defaults[key], f"{source}: {name}.{key}")
    for key, value in (overrides or {}).items():
        if value is None:
            continue
        if key not in defaults:
            raise ConfigError(f"unknown override {name}.{key}")
        merged[key] = _coerce(value, defaults[key], f"override {name}.{key}")
    return merged


def stage_settings(
    preset_or_path: str | Path, name: str, defaults: dict[str, Any], overrides: dict[str, Any]
) -> tuple[dict[str, Any], Path]:
    """What a stage command needs: its section (defaults < file < flags) and the run dir."""
    cfg = load(preset_or_path)
    return section(cfg, name, defaults, overrides), run_dir_of(cfg)


def run_dir_of(config: dict[str, Any]) -> Path:
    """Where a config's run writes by default (``run.run_dir``)."""
    return Path((config.get("run") or {}).get("run_dir", "runs/tiny"))


def parse_overrides(pairs: list[str] | None) -> dict[str, dict[str, Any]]:
    """``["gan.steps=200", "distill.teacher=openai"]`` -> ``{"gan": {"steps": 200}, ...}``."""
    out: dict[str, dict[str, Any]] = {}
    for pair in pairs or []:
        if "=" not in pair or "." not in pair.split("=", 1)[0]:
            raise ConfigError(f"override {pair!r} must look like section.key=value")
        dotted, raw = pair.split("=", 1)
        sec, key = dotted.split(".", 1)
        if sec not in SECTIONS:
            raise ConfigError(f"override {pair!r}: unknown section {sec!r}")
        out.setdefault(sec, {})[key] = yaml.safe_load(raw)
    return out


def _coerce(value: Any, default: Any, where: str) -> Any:
    """Check a value against its default's type; ints widen to floats, None stays None."""
    if default is None or value is None:
        return value
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {value!r}")
        return value
    if isinstance(default, float) and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(default, float) and isinstance(value, str):
        try:
            return float(value)  # YAML reads "2e-4" as a string
        except ValueError:
            pass
    if isinstance(default, list) and isinstance(value, str):
        return [v for v in value.split(",") if v]
    if not isinstance(value, type(default)) or (isinstance(value, bool) and not isinstance(default, bool)):
        raise ConfigError(f"{where}: expected {type(default).__name__}, got {value!r}")
    return value
