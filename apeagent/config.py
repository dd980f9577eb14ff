"""Configuration: one YAML format for every stage, defaults and presets as plain data files.

A config is a mapping of sections (``run``, ``market``, ``chain``, ``gan``, ``distill``,
``finetune``, ``agent``). Every key and its default lives in ``defaults.yaml`` beside this file
(plain data, like mlx-lm's ``CONFIG_DEFAULTS``), so the kernel can check a whole config before
any stage runs without importing a stage. A stage reads its own section with :func:`section`:
defaults < the config file < CLI flags, merged with the ``market`` quantities every stage shares
(bar length, window, held-out fraction: one key each). Unknown keys are errors, so a typo never
silently falls back to a default.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from apeagent.layout import RunLayout

PRESET_DIR = Path(__file__).parent / "presets"
DEFAULTS_FILE = Path(__file__).parent / "defaults.yaml"
DEFAULTS: dict[str, dict[str, Any]] = yaml.safe_load(DEFAULTS_FILE.read_text())
SECTIONS = tuple(DEFAULTS)
SHARED = "market"  # merged into every stage section
STAGES = ("chain", "gan", "distill", "finetune", "agent")


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


def defaults(name: str) -> dict[str, Any]:
    """A section's defaults (a stage section's include the shared ``market`` keys)."""
    if name not in DEFAULTS:
        raise ConfigError(f"unknown section {name!r} (known: {', '.join(SECTIONS)})")
    merged = copy.deepcopy(DEFAULTS[SHARED]) if name in STAGES else {}
    merged.update(copy.deepcopy(DEFAULTS[name]))
    return merged


def section(
    config: dict[str, Any], name: str, overrides: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Defaults < config file section < explicit overrides (``None`` means "not given").

    A stage section comes merged with the ``market`` section: ``section(cfg, "gan")["window_bars"]``.
    """
    base = defaults(name)
    own = DEFAULTS[name]
    source = config.get("_source", "<config>")
    layers = [(config.get(name) or {}, name, own)]
    if name in STAGES:
        layers.insert(0, (config.get(SHARED) or {}, SHARED, DEFAULTS[SHARED]))
    for values, sec, known in layers:
        for key, value in values.items():
            if key not in known:
                hint = f"; it is {SHARED}.{key}" if sec != SHARED and key in DEFAULTS[SHARED] else ""
                raise ConfigError(
                    f"{source}: unknown key {sec}.{key}{hint} (known: {', '.join(sorted(known))})"
                )
            base[key] = _coerce(value, known[key], f"{source}: {sec}.{key}")
    for key, value in (overrides or {}).items():
        if value is None:
            continue
        if key not in base:
            raise ConfigError(f"unknown override {name}.{key}")
        base[key] = _coerce(value, base[key] if key in own else DEFAULTS[SHARED][key], f"override {name}.{key}")
    return base


def window_minutes(settings: dict[str, Any]) -> int:
    """Minutes one market state covers: ``window_bars`` bars of ``bar_seconds``."""
    return int(settings["window_bars"]) * int(settings["bar_seconds"]) // 60


def validate(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Check every section of a whole config against the defaults; returns them all merged."""
    return {name: section(config, name) for name in SECTIONS}


def stage_settings(
    config: str | Path | None, run_dir: Path | None, name: str, overrides: dict[str, Any]
) -> tuple[dict[str, Any], RunLayout]:
    """What a stage command needs: its section (defaults < file < flags) and the run layout.

    ``config`` None: the run's own ``config.yaml`` when ``run_dir`` has one, else the tiny
    preset. ``run_dir`` None: the config's ``run.run_dir``.
    """
    cfg = load(config_for(config, run_dir))
    return section(cfg, name, overrides), RunLayout(run_dir or run_dir_of(cfg))


def config_for(config: str | Path | None, run_dir: Path | None) -> str | Path:
    """The config a stage command reads: the one given, else the run's, else the tiny preset."""
    if config is not None:
        return config
    if run_dir is not None and RunLayout(run_dir).config.is_file():
        return RunLayout(run_dir).config
    return "tiny"


def run_dir_of(config: dict[str, Any]) -> Path:
    """Where a config's run writes by default (``run.run_dir``)."""
    return Path(section(config, "run")["run_dir"])


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
