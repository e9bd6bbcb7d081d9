"""Config: presets load, overrides are typed, and bad keys/values fail naming the key."""
import pytest

from jobs.config import ConfigError, load_config, parse_value


def test_presets_and_overrides():
    cfg = load_config("train_transformer", overrides=["model.depth=3", "loss.temperature=1e-2", "optim.betas=[0.9, 0.95]"])
    assert cfg.model.kind == "transformer" and cfg.model.depth == 3
    assert cfg.loss.temperature == 0.01 and cfg.optim.betas == [0.9, 0.95]
    assert load_config("train_mlp").model.hidden == [1024, 2048, 1024]
    assert parse_value("1e-3") == 0.001 and parse_value("true") is True and parse_value("abc") == "abc"


def test_unknown_key_names_it_and_suggests():
    with pytest.raises(ConfigError, match=r"model\.dpeth: unknown config key \(did you mean depth"):
        load_config("train_transformer", overrides=["model.dpeth=2"])
    with pytest.raises(ConfigError, match=r"optim\.lrr: unknown config key \(did you mean lr"):
        load_config("train_mlp", overrides=["optim.lrr=0.1"])
    with pytest.raises(ConfigError, match=r"model\.depth: unknown"):
        load_config("train_mlp", overrides=["model.depth=2"])  # the MLP has no fusion depth


def test_wrong_type_and_range_name_the_key():
    with pytest.raises(ConfigError, match=r"train\.epochs: .*integer.*'many'"):
        load_config("train_mlp", overrides=["train.epochs=many"])
    with pytest.raises(ConfigError, match=r"data\.batch_size: .*greater than or equal to 1"):
        load_config("train_mlp", overrides=["data.batch_size=0"])
    with pytest.raises(ConfigError, match=r"train\.select_metric"):
        load_config("train_mlp", overrides=["train.select_metric=test_r1"])
    with pytest.raises(ConfigError, match="expected key=value"):
        load_config("train_mlp", overrides=["train.epochs"])
    with pytest.raises(ConfigError, match=r"model\.heads|width .* divisible"):
        load_config("train_transformer", overrides=["model.width=30"])
