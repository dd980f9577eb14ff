"""Config loading: presets, files that extend them, overrides, and clear errors."""

import pytest

from finetune_mlx.config import ConfigError, load, parse_overrides, preset_names, section

DEFAULTS = {"steps": 100, "lr": 1e-3, "device": "auto", "devices": ["cpu"], "quick": False, "model": None}


def test_presets_exist_and_load():
    assert {"tiny", "mac"} <= set(preset_names())
    for name in ("tiny", "mac"):
        cfg = load(name)
        assert cfg["run"]["run_dir"].startswith("runs/")


def test_file_extends_preset_and_overrides_win(tmp_path):
    from gan_torch.config import DEFAULTS as GAN

    f = tmp_path / "my.yaml"
    f.write_text("extends: tiny\ngan:\n  steps: 7\n  lr_g: 1e-4\n")
    cfg = load(f)
    assert cfg["run"]["run_dir"] == "runs/tiny"
    tiny = section(load("tiny"), "gan", GAN)
    gan = section(cfg, "gan", GAN, {"device": "cpu", "seed": None})
    assert gan["steps"] == 7 and gan["lr_g"] == pytest.approx(1e-4) and gan["device"] == "cpu"
    assert gan["seed"] == tiny["seed"] and gan["window"] == tiny["window"]  # the rest from tiny


def test_cli_style_overrides():
    ov = parse_overrides(["gan.steps=12", "gan.devices=cpu,mps", "gan.model=Qwen/Qwen2.5-3B"])
    gan = section({"gan": {}}, "gan", DEFAULTS, ov["gan"])
    assert gan["steps"] == 12 and gan["devices"] == ["cpu", "mps"] and gan["model"] == "Qwen/Qwen2.5-3B"


@pytest.mark.parametrize(
    "text, needle",
    [
        ("gan:\n  stepz: 3\n", "unknown key gan.stepz"),
        ("gan:\n  steps: many\n", "gan.steps: expected int"),
        ("gan:\n  quick: 1\n", "gan.quick: expected true/false"),
        ("ganz:\n  steps: 3\n", "unknown section 'ganz'"),
        ("gan: [1, 2\n", "malformed YAML"),
        ("- 1\n- 2\n", "top level must be a mapping"),
    ],
)
def test_bad_config_names_file_and_key(tmp_path, text, needle):
    f = tmp_path / "bad.yaml"
    f.write_text(text)
    with pytest.raises(ConfigError) as e:
        section(load(f), "gan", DEFAULTS)
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
