"""Config loading: presets, files that extend them, overrides, and clear errors."""

import pytest

from apeagent.config import ConfigError, load, parse_overrides, preset_names, section, validate


def test_presets_exist_and_load():
    assert {"tiny", "mac"} <= set(preset_names())
    for name in ("tiny", "mac"):
        cfg = load(name)
        assert cfg["run"]["run_dir"].startswith("runs/")


def test_file_extends_preset_and_overrides_win(tmp_path):
    f = tmp_path / "my.yaml"
    f.write_text("extends: tiny\ngan:\n  steps: 7\n  lr_g: 1e-4\n")
    cfg = load(f)
    assert cfg["run"]["run_dir"] == "runs/tiny"
    tiny = section(load("tiny"), "gan")
    gan = section(cfg, "gan", {"device": "cpu", "seed": None})
    assert gan["steps"] == 7 and gan["lr_g"] == pytest.approx(1e-4) and gan["device"] == "cpu"
    assert gan["seed"] == tiny["seed"] and gan["window_bars"] == tiny["window_bars"]  # the rest from tiny


def test_cli_style_overrides():
    ov = parse_overrides(["gan.steps=12", "agent.policies=rules,hold", "finetune.base_model=Qwen/Qwen2.5-3B"])
    assert section({}, "gan", ov["gan"])["steps"] == 12
    assert section({}, "agent", ov["agent"])["policies"] == ["rules", "hold"]
    assert section({}, "finetune", ov["finetune"])["base_model"] == "Qwen/Qwen2.5-3B"


def test_market_quantities_have_one_key():
    """window, bar length and held-out fraction live in `market:` and reach every stage."""
    cfg = {"market": {"window_bars": 6, "holdout_frac": 0.3}, "_source": "x.yaml"}
    for name in ("chain", "gan", "distill", "finetune", "agent"):
        s = section(cfg, name)
        assert s["window_bars"] == 6 and s["holdout_frac"] == pytest.approx(0.3) and s["bar_seconds"] == 300
    with pytest.raises(ConfigError, match="unknown key gan.window_bars; it is market.window_bars"):
        section({"gan": {"window_bars": 6}}, "gan")


def test_defaults_pool_id_is_the_computed_one():
    from chain.config import DEFAULTS
    from chain.pool import ETH_USDC_POOL_ID

    assert DEFAULTS["pool_id"] == ETH_USDC_POOL_ID


@pytest.mark.parametrize(
    "text, needle",
    [
        ("gan:\n  stepz: 3\n", "unknown key gan.stepz"),
        ("gan:\n  steps: many\n", "gan.steps: expected int"),
        ("finetune:\n  grad_checkpoint: 1\n", "finetune.grad_checkpoint: expected true/false"),
        ("gan:\n  window: 12\n", "unknown key gan.window"),
        ("ganz:\n  steps: 3\n", "unknown section 'ganz'"),
        ("gan: [1, 2\n", "malformed YAML"),
        ("- 1\n- 2\n", "top level must be a mapping"),
    ],
)
def test_bad_config_names_file_and_key(tmp_path, text, needle):
    f = tmp_path / "bad.yaml"
    f.write_text(text)
    with pytest.raises(ConfigError) as e:
        validate(load(f))
    assert needle in str(e.value)
    if "YAML" in needle or "top level" in needle or "section" in needle:
        assert str(f) in str(e.value)


def test_unknown_preset_and_missing_file():
    with pytest.raises(ConfigError, match="unknown preset 'huge'.*mac.*tiny"):
        load("huge")
    with pytest.raises(ConfigError, match="config file not found"):
        load("nope/missing.yaml")
    with pytest.raises(ConfigError, match="section.key=value"):
        parse_overrides(["steps=3"])


def test_extends_is_relative_to_the_file_and_errors_name_the_file(tmp_path, monkeypatch):
    (tmp_path / "base.yaml").write_text("extends: tiny\ngan:\n  steps: 9\n")
    (tmp_path / "sub").mkdir()
    child = tmp_path / "sub" / "run.yaml"
    child.write_text("extends: ../base.yaml\ngan:\n  lr_g: 1e-4\n")
    monkeypatch.chdir(tmp_path / "sub")  # any working directory
    gan = section(load(child), "gan")
    assert gan["steps"] == 9 and gan["lr_g"] == pytest.approx(1e-4)
    (tmp_path / "base.yaml").write_text("extends: tiny\ndistill:\n  nope: 1\n")
    with pytest.raises(ConfigError, match=r"base\.yaml: unknown key distill\.nope"):
        validate(load(child))
    from apeagent.config import apply_overrides

    cfg = load("tiny")
    apply_overrides(cfg, {"gan": {"stepz": 1}})
    with pytest.raises(ConfigError, match=r"^--set gan\.stepz: unknown key"):
        validate(cfg)


def test_extends_cycles_and_ranges_are_errors(tmp_path):
    (tmp_path / "a.yaml").write_text("extends: b.yaml\n")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\n")
    with pytest.raises(ConfigError, match="extends itself"):
        load(tmp_path / "a.yaml")
    for override, needle in [({"steps": -1}, "must be >= 1"), ({"val_frac": 1.5}, "between 0 and 1"),
                             ({"lr_g": 0}, "must be > 0"), ({"steps": 2**64}, "too large")]:
        with pytest.raises(ConfigError, match=needle):
            section({}, "gan", override)
    assert section({}, "finetune", {"num_layers": -1})["num_layers"] == -1  # -1: every block
