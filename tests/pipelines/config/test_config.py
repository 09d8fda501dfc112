import pytest

from pipelines.config.base import ConfigError
from pipelines.config.loading import config_hash, load_config, parse_overrides
from tests.conftest import EXAMPLE_CONFIG


def test_example_config_loads_as_written():
    config = load_config(EXAMPLE_CONFIG)
    assert config.name == "blr-example" and config.model_name == "blr-example"
    assert config.data.path.endswith("configs/examples/data.csv")
    assert config.model.noise.fixed == 0.3
    assert config.model.prior.weights.kind == "normal" and config.model.prior.weights.params == {"loc": 0.0, "scale": 1.0}
    assert (config.train.batch_size, config.train.max_epochs, config.train.lr) == (256, 30, 0.01)


def test_overrides_are_applied_and_typed():
    config = load_config(EXAMPLE_CONFIG, parse_overrides(["train.max_epochs=5", "model.noise={learned: {half_cauchy: {scale: 2}}}"]))
    assert config.train.max_epochs == 5
    assert config.model.noise.learned.kind == "half_cauchy"
    assert config_hash(config) != config_hash(load_config(EXAMPLE_CONFIG))


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.learning_rate=0.1", r"train\.learning_rate: unknown key"),
        ("model.prior.weights.normal.scale=-1", r"model\.prior\.weights\.normal\.scale: Input should be greater than 0 \(got -1\)"),
        ("model.noise={fixed: 0.3, learned: {half_normal: {}}}", r"model\.noise: give exactly one of 'fixed'"),
        ("model.prior.intercept={laplace: {scale: 1}}", r"model\.prior\.intercept\.laplace: unknown key"),
        ("guide.family=full_rnk", r"guide\.family: Input should be 'mean_field', 'full_rank', 'low_rank' or 'flow'"),
        ("guide.rank=3", r"guide: .*'rank' is an option of the low_rank family, not of mean_field"),
        ("guide={family: low_rank, flow: {transforms: 2}}", r"guide: .*'flow' options belong to the flow family"),
        ("guide={family: flow, flow: {bins: 1}}", r"guide\.flow\.bins: Input should be greater than or equal to 2"),
        ("train.batch_size=0", r"train\.batch_size: Input should be greater than 0"),
        ("train.num_nodes=2", r"train: .*num_nodes 2 needs strategy: ddp"),
    ],
)
def test_bad_keys_and_values_name_file_and_key(override, message):
    with pytest.raises(ConfigError, match=message) as info:
        load_config(EXAMPLE_CONFIG, parse_overrides([override]))
    assert str(EXAMPLE_CONFIG) in str(info.value)


def test_missing_file_and_malformed_override(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="expected dotted.key=value"):
        parse_overrides(["train.lr"])


def test_family_options_reach_the_family():
    config = load_config(EXAMPLE_CONFIG, parse_overrides(["guide={family: low_rank, rank: 3, init_scale: 0.2}"]))
    assert config.guide.family_options() == {"init_scale": 0.2, "rank": 3}
    flow = load_config(EXAMPLE_CONFIG, parse_overrides(["guide={family: flow, flow: {transforms: 2}}"])).guide
    assert flow.family_options() == {"init_scale": 0.1, "transforms": 2, "hidden_features": [32, 32], "bins": 8}


def test_standardised_data_needs_an_intercept():
    with pytest.raises(ConfigError, match="data.standardize centres the data, which needs model.fit_intercept: true"):
        load_config(EXAMPLE_CONFIG, parse_overrides(["data.standardize=true", "model.fit_intercept=false"]))
