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

from apeagent.errors import ConfigError
from apeagent.layout import RunLayout
from apeagent.redact import add_url_secrets

PRESET_DIR = Path(__file__).parent / "presets"
DEFAULTS_FILE = Path(__file__).parent / "defaults.yaml"
DEFAULTS: dict[str, dict[str, Any]] = yaml.safe_load(DEFAULTS_FILE.read_text())
SECTIONS = tuple(DEFAULTS)
SHARED = "market"  # merged into every stage section
STAGES = ("chain", "gan", "distill", "finetune", "agent")




def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def resolve(preset_or_path: str | Path) -> Path:
    """A preset name (``tiny``, ``mac``) or a path to a YAML file."""
    text = str(preset_or_path)
    candidate = Path(text)
    try:
        is_file = candidate.is_file()
        looks_like_file = is_file or candidate.suffix in (".yaml", ".yml") or candidate.exists()
    except OSError as e:  # a name too long for the file system, ...
        raise ConfigError(f"config file {_short(text, 80)!r}: {e.strerror or e}") from None
    if looks_like_file:
        if not is_file:
            why = "is a directory" if candidate.is_dir() else "not found"
            raise ConfigError(f"config file {why}: {candidate}")
        return candidate
    path = PRESET_DIR / f"{text}.yaml"
    if not path.is_file():
        raise ConfigError(f"unknown preset {text!r} (known: {', '.join(preset_names())})")
    return path


def load(preset_or_path: str | Path = "tiny", *, _chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Load a preset or config file. A file may ``extends: <preset or path>`` and override parts.

    A relative ``extends:`` path is read from the folder of the file that says it; a chain of
    files that comes back to one of its own is an error. ``_origins`` records which file set
    each ``section.key``, so an error names the file that holds the bad key.
    """
    path = resolve(preset_or_path)
    here = path.resolve()
    if here in _chain:
        loop = " -> ".join(str(p) for p in (*_chain, here))
        raise ConfigError(f"{path}: extends itself ({loop})")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a UTF-8 text file") from None
    except (yaml.YAMLError, ValueError, RecursionError) as e:
        raise ConfigError(f"{path}: malformed YAML: {_short(e)}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping of sections")
    base: dict[str, Any] = {}
    parent = data.pop("extends", None)
    if parent is not None:
        if not isinstance(parent, str) or not parent:
            raise ConfigError(f"{path}: extends must be a preset name or a YAML path, got {parent!r}")
        target = Path(parent)
        if target.suffix in (".yaml", ".yml") or len(target.parts) > 1:  # a file, not a preset name
            target = path.parent / target  # (an absolute path stays itself)
        elif (PRESET_DIR / f"{parent}.yaml").is_file():
            target = PRESET_DIR / f"{parent}.yaml"
        else:
            raise ConfigError(f"{path}: extends {parent!r}: unknown preset (known: {', '.join(preset_names())})")
        base = load(target, _chain=(*_chain, here))
    origins = base.pop("_origins", {})
    base.pop("_source", None)
    for key, value in data.items():
        if key not in SECTIONS:
            raise ConfigError(f"{path}: unknown section {key!r} (known: {', '.join(SECTIONS)})")
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: section {key!r} must be a mapping")
        base.setdefault(key, {}).update(value)
        origins.update({f"{key}.{k}": str(path) for k in value})
    base["_source"] = str(path)
    base["_origins"] = origins
    return base


def apply_overrides(config: dict[str, Any], overrides: dict[str, dict[str, Any]], origin: str = "--set") -> None:
    """Merge ``--set`` style overrides into a loaded config; errors about them name ``origin``."""
    origins = config.setdefault("_origins", {})
    for sec, values in overrides.items():
        config.setdefault(sec, {}).update(values)
        origins.update({f"{sec}.{k}": f"{origin} {sec}.{k}" for k in values})


def defaults(name: str) -> dict[str, Any]:
    """A section's defaults (a stage section's include the shared ``market`` keys)."""
    if name not in DEFAULTS:
        raise ConfigError(f"unknown section {name!r} (known: {', '.join(SECTIONS)})")
    merged = copy.deepcopy(DEFAULTS[SHARED]) if name in STAGES else {}
    merged.update(copy.deepcopy(DEFAULTS[name]))
    return merged


def section(
    config: dict[str, Any], name: str, overrides: dict[str, Any] | None = None,
    flags: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Defaults < config file section < explicit overrides (``None`` means "not given");
    ``flags``: the command-line flag of an override, named in its errors.

    A stage section comes merged with the ``market`` section: ``section(cfg, "gan")["window_bars"]``.
    """
    base = defaults(name)
    own = DEFAULTS[name]
    source = config.get("_source", "<config>")
    origins = config.get("_origins", {})
    layers = [(config.get(name) or {}, name, own)]
    if name in STAGES:
        layers.insert(0, (config.get(SHARED) or {}, SHARED, DEFAULTS[SHARED]))
    for values, sec, known in layers:
        if not isinstance(values, dict):
            raise ConfigError(f"{source}: section {sec!r} must be a mapping")
        for key, value in values.items():
            where = origins.get(f"{sec}.{key}", source)
            if key not in known:
                hint = f"; it is {SHARED}.{key}" if sec != SHARED and key in DEFAULTS[SHARED] else ""
                raise ConfigError(
                    f"{where}: unknown key {sec}.{key}{hint} (known: {', '.join(sorted(known))})"
                )
            label = where if where.endswith(f"{sec}.{key}") else f"{where}: {sec}.{key}"
            base[key] = check_value(f"{sec}.{key}", value, label)
    for key, value in (overrides or {}).items():
        if value is None:
            continue
        if key not in base:
            raise ConfigError(f"unknown override {name}.{key}")
        sec = name if key in own else SHARED
        label = f"{flags[key]} ({sec}.{key})" if key in (flags or {}) else f"override {sec}.{key}"
        base[key] = check_value(f"{sec}.{key}", value, label)
    return base


def check_value(dotted: str, value: Any, where: str) -> Any:
    """``value`` for ``section.key``: of its default's type (:func:`_coerce`), in its range
    (:func:`check_range`) and among its choices (:data:`CHOICES`); ``where`` names it."""
    sec, key = dotted.split(".", 1)
    value = check_range(dotted, _coerce(value, DEFAULTS[sec][key], where, dotted), where)
    for v in value if isinstance(value, list) else [value]:
        if isinstance(v, str):
            add_url_secrets(v)  # an endpoint's key in a config file is masked in every message
    if dotted == "chain.to_block" and isinstance(value, str) and value != "latest":
        try:
            value = check_range(dotted, int(value, 0), where)
        except ValueError:
            raise ConfigError(f"{where}: a block number or 'latest', got {_short(value)!r}") from None
    choices = CHOICES.get(dotted)
    if choices is not None:
        for v in value if isinstance(value, list) else [value]:
            if v not in choices:
                what = {"policies": "policy"}.get(key, key.replace("_", " "))
                raise ConfigError(f"{where}: unknown {what} {_short(v)} (known: {', '.join(map(str, choices))})")
    return value


# The keys whose values are names from a fixed set. The stages own what the names mean (a
# stage checks them too); the kernel knows them so that a whole config is checked before the
# first stage runs.
CHOICES: dict[str, tuple[Any, ...]] = {
    "run.source": ("simulate", "csv", "store", "rpc"),
    "chain.timestamps": ("auto", "headers", "derive"),
    "gan.device": ("auto", "cpu", "mps", "cuda"),
    "gan.minibatch_impl": ("cdist", "native"),
    "gan.swap_decoder": ("bootstrap", "uniform"),
    "distill.teacher": ("rules", "mlx", "openai"),
    "distill.style": ("cod", "cot"),
    "distill.format": ("chat", "completions"),
    "distill.rebalance": ("none", "downsample", "upsample"),
    "finetune.fine_tune_type": ("lora", "dora", "full"),
    "finetune.optimizer": ("adam", "adamw", "sgd", "adafactor"),
    "finetune.lr_schedule": ("cosine_decay", "linear_schedule", "constant"),
    "agent.teacher": ("rules",),
    "agent.style": ("cod", "cot"),
    "agent.policies": ("student", "rules", "teacher", "hold", "rebalance"),
}
# keys whose default is null: the types they take besides null
NULLABLE: dict[str, tuple[type, ...]] = {"chain.to_block": (int, str)}


# Ranges of the numbers where a negative, zero or huge value makes no sense. Every other number
# of defaults.yaml must be >= 0 (none is meaningfully negative) and fit in 64 bits.
AT_LEAST_ONE = {
    "market": ("bar_seconds", "window_bars"),
    "chain": ("chunk_size", "max_chunk", "concurrency", "batch_size", "sim_swaps"),
    "gan": ("d_model", "num_heads", "num_layers", "ff_mult", "noise_dim", "cond_tokens", "critic_hidden",
            "mb_kernels", "mb_dim", "steps", "batch_size", "n_critic", "checkpoint_every", "eval_every",
            "log_every", "quick_test_steps", "n_generate", "bootstrap_block"),
    "distill": ("batch_size", "max_tokens", "max_draft_words", "max_drafts", "concurrency", "portfolios_per_window",
                "max_seq_length"),
    "finetune": ("lora_rank", "batch_size", "iters", "grad_accumulation_steps", "max_seq_length",
                 "val_batches", "steps_per_report", "steps_per_eval", "save_every", "num_processes",
                 "max_tokens", "tiny_hidden_size", "tiny_num_layers", "tiny_num_heads", "tiny_num_kv_heads",
                 "tiny_vocab_size", "tiny_pretrain_batch_size"),
    "agent": ("max_tokens", "interval_minutes", "context_tokens", "gas_units", "deadline_seconds", "chain_id"),
}
FRACTIONS = {  # in [0, 1]
    "market": ("holdout_frac",),
    "gan": ("min_active_frac", "val_frac", "noise_anneal_frac", "select_from_frac", "ema_decay",
            "step_bound_quantile"),
    "distill": ("top_p", "real_min_active_frac", "in_band_fraction", "trade_fraction", "valid_fraction",
                "test_fraction"),
    "finetune": ("min_lr_ratio", "lora_dropout"),
    "agent": ("initial_eth_share", "default_trade_fraction"),
}
POSITIVE = {  # > 0
    "chain": ("timeout_s", "poll_s"),
    "gan": ("lr_g", "lr_c", "step_bound_mult"),
    "distill": ("request_timeout", "portfolio_min_usdc", "portfolio_max_usdc"),
    "finetune": ("learning_rate", "lora_scale"),
    "agent": ("initial_value_usdc", "max_trade_eth", "interval_seconds"),
}
AT_LEAST = {
    "finetune.num_layers": -1,  # -1: every block
    "finetune.tiny_vocab_size": 260,  # the byte alphabet (256) and the special tokens come first
}
# Resources: sizes whose memory grows with them. The bound is what fits in the memory of the
# machines the project targets (a 16-128 GB Mac, one GPU); a larger value would be killed by
# the kernel, or crash the library, long after the command started.
AT_MOST = {
    "chain.batch_size": 1000,
    "chain.concurrency": 256,
    "gan.batch_size": 16384,
    "gan.d_model": 4096,
    "gan.num_heads": 256,
    "gan.num_layers": 64,
    "gan.ff_mult": 64,
    "gan.noise_dim": 4096,
    "gan.cond_tokens": 1024,
    "gan.critic_hidden": 8192,
    "gan.mb_kernels": 1024,
    "gan.mb_dim": 1024,
    "gan.n_generate": 1_000_000,
    "distill.batch_size": 1024,
    "distill.concurrency": 1024,
    "distill.max_tokens": 1_000_000,
    "distill.max_seq_length": 1_000_000,
    "finetune.lora_rank": 4096,
    "finetune.batch_size": 4096,
    "finetune.num_layers": 1024,
    "finetune.max_seq_length": 1_000_000,
    "finetune.max_tokens": 1_000_000,
    "finetune.num_processes": 1024,
    "finetune.tiny_hidden_size": 16384,
    "finetune.tiny_num_layers": 256,
    "finetune.tiny_num_heads": 1024,
    "finetune.tiny_num_kv_heads": 1024,
    "finetune.tiny_intermediate_size": 65536,
    "finetune.tiny_vocab_size": 262144,
    "finetune.tiny_pretrain_batch_size": 4096,
    "agent.context_tokens": 1_000_000,
    "agent.max_tokens": 1_000_000,
    "market.window_bars": 100_000,
}
INT64 = 2**63 - 1


def check_range(dotted: str, value: Any, where: str) -> Any:
    """A number of ``section.key`` within its range (see above); other values pass unchanged."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return value
    sec, key = dotted.split(".", 1)
    low = AT_LEAST.get(dotted, 1 if key in AT_LEAST_ONE.get(sec, ()) else 0)
    if value != value or abs(value) == float("inf"):
        raise ConfigError(f"{where}: must be a finite number, got {value!r}")
    if abs(value) > INT64:
        raise ConfigError(f"{where}: number too large (more than 64 bits)")
    if key in POSITIVE.get(sec, ()) and value <= 0:
        raise ConfigError(f"{where}: must be > 0, got {value!r}")
    if value < low:
        raise ConfigError(f"{where}: must be >= {low}, got {_short(value)}")
    if key in FRACTIONS.get(sec, ()) and value > 1:
        raise ConfigError(f"{where}: must be between 0 and 1, got {value!r}")
    high = AT_MOST.get(dotted)
    if high is not None and value > high:
        raise ConfigError(f"{where}: must be <= {high} (the bound of what fits in memory), got {value!r}")
    return value


def _short(x: Any, n: int = 60) -> str:
    """A value or message cut to ``n`` characters (a 100,000-digit number stays one short line)."""
    text = str(x)
    return text if len(text) <= n else f"{text[:n]}… ({len(text)} characters)"


def window_minutes(settings: dict[str, Any]) -> int:
    """Minutes one market state covers: ``window_bars`` bars of ``bar_seconds``."""
    return int(settings["window_bars"]) * int(settings["bar_seconds"]) // 60


def validate(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Check every section of a whole config against the defaults; returns them all merged."""
    return {name: section(config, name) for name in SECTIONS}


def stage_settings(
    config: str | Path | None, run_dir: Path | None, name: str, overrides: dict[str, Any],
    flags: dict[str, str] | None = None,
) -> tuple[dict[str, Any], RunLayout]:
    """What a stage command needs: its section (defaults < file < flags) and the run layout.

    ``config`` None: the run's own ``config.yaml`` when ``run_dir`` has one, else the tiny
    preset. ``run_dir`` None: the config's ``run.run_dir``.
    """
    cfg = load(config_for(config, run_dir))
    return section(cfg, name, overrides, flags), RunLayout(run_dir or run_dir_of(cfg))


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
        try:
            value = yaml.safe_load(raw)
        except (yaml.YAMLError, ValueError, RecursionError) as e:
            raise ConfigError(f"override {_short(dotted)}: cannot read the value: {_short(e)}") from None
        out.setdefault(sec, {})[key] = value
    return out


def _coerce(value: Any, default: Any, where: str, dotted: str = "") -> Any:
    """Check a value against its default's type; ints widen to floats. ``null`` only where the
    default is null; a list's elements must be strings (as every list default's are)."""
    if default is None:
        kinds = NULLABLE.get(dotted, ())
        if value is None or not kinds or (isinstance(value, kinds) and not isinstance(value, bool)):
            return value
        raise ConfigError(f"{where}: expected {' or '.join(k.__name__ for k in kinds)} or null, got {_short(value)!r}")
    if value is None:
        raise ConfigError(f"{where}: must not be null (expected {type(default).__name__}, default {default!r})")
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {_short(value)!r}")
        return value
    if isinstance(default, float) and isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            return float(value)
        except OverflowError:
            raise ConfigError(f"{where}: number too large, got {_short(value)}") from None
    if isinstance(default, float) and isinstance(value, str):
        try:
            return float(value)  # YAML reads "2e-4" as a string
        except ValueError:
            pass
    if isinstance(default, list) and isinstance(value, str):
        return [v for v in value.split(",") if v]
    if not isinstance(value, type(default)) or (isinstance(value, bool) and not isinstance(default, bool)):
        raise ConfigError(f"{where}: expected {type(default).__name__}, got {_short(value)!r}")
    if isinstance(default, list):
        bad = [v for v in value if not isinstance(v, str)]
        if bad:
            raise ConfigError(f"{where}: expected a list of strings, got the element {_short(bad[0])!r}")
    return value
