"""Config: defaults, presets, dotted overrides, and one-line fix-it errors."""

import dataclasses

import pytest

from slas.config import Config
from slas.config_io import dump_yaml, explain, from_dict, list_presets, load_config, to_dict
from slas.errors import SlasError


def test_every_field_is_documented():
    for section in dataclasses.fields(Config):
        for f in dataclasses.fields(section.default_factory()):
            assert f.metadata.get("help"), f"{section.name}.{f.name} has no documentation"


def test_defaults_round_trip_through_yaml(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(dump_yaml(Config()))
    assert to_dict(load_config(str(path))) == to_dict(Config())


@pytest.mark.parametrize("preset", ["world_grpo", "world_mean_only", "world_slas"])
def test_presets_only_override(preset):
    assert preset in list_presets()
    cfg = load_config(preset)
    assert cfg.advantage.estimator == preset.removeprefix("world_")
    world = load_config("world")  # the shared base: only the estimator differs
    assert (cfg.sample, cfg.train, cfg.reward) == (world.sample, world.train, world.reward)
    assert cfg.model == Config().model  # sections no preset touches keep the defaults


def test_dotted_overrides_and_coercion():
    cfg = load_config(
        "world_grpo",
        [
            "train.lr=1e-5",
            "sample.group_size=4",
            "advantage.clamp=null",
            "reward.weights=[0.7, 1.4]",
            "reward.names=[a, b]",
            "train.max_grad_norm=2",
        ],
    )
    assert cfg.train.lr == 1e-5 and isinstance(cfg.train.lr, float)  # YAML reads 1e-5 as a string
    assert cfg.sample.group_size == 4 and cfg.advantage.clamp is None
    assert cfg.reward.weights == [0.7, 1.4] and cfg.train.max_grad_norm == 2.0


@pytest.mark.parametrize(
    "override,message",
    [
        (["train.lrr=1"], "unknown field in [train] 'lrr'; did you mean lr?"),
        (["trian.lr=1"], "unknown section 'trian'; did you mean train"),
        (["sample.group_size=1"], "sample.group_size: must be >= 2"),
        (["sample.group_size=two"], "sample.group_size = 'two' has type str; expected int"),
        (["sample.group_size=2.5"], "expected int"),
        (["advantage.gamma=-1"], "advantage.gamma: must be >= 0"),
        (["sample.batch_size=10"], "sample.batch_size: 10 is not divisible by sample.group_size=8"),
        (["advantage.normalize=mid"], "choose one of pre, post"),
        (["reward.weights=[1, 2]"], "reward.weights: has 2 entries but reward.names has 1"),
        (["train.lr"], "must look like section.field=value"),
        (["model.finetune=true"], "choose one of full, lora"),
    ],
)
def test_bad_overrides_are_one_clear_line(override, message):
    with pytest.raises(SlasError) as info:
        load_config(None, override)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_processes_divisibility():
    cfg = load_config(
        None, ["sample.batch_size=48", "sample.group_size=8", "sample.micro_batch_size=8"]
    )
    cfg.validate_for(2)  # 48 = 3 x (8 x 2)
    with pytest.raises(SlasError, match="group_size x processes = 8 x 4 = 32"):
        cfg.validate_for(4)


def test_bad_files(tmp_path):
    with pytest.raises(SlasError, match="not found"):
        load_config(str(tmp_path / "missing.yaml"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  lr: [1\n")
    with pytest.raises(SlasError, match=r"bad.yaml:\d+: invalid YAML"):
        load_config(str(bad))
    listy = tmp_path / "list.yaml"
    listy.write_text("- 1\n- 2\n")
    with pytest.raises(SlasError, match="mapping of sections"):
        load_config(str(listy))
    with pytest.raises(SlasError, match="unknown preset 'world_slsa'; did you mean world_slas"):
        load_config("world_slsa")


def test_section_must_be_mapping():
    with pytest.raises(SlasError, match="section 'train' must be a mapping"):
        from_dict({"train": 3})


def test_explain_lists_every_field():
    text = explain(Config())
    assert "advantage:" in text and "gamma = 0.5" in text
    n_fields = sum(len(dataclasses.fields(s.default_factory())) for s in dataclasses.fields(Config))
    assert (
        sum(line.startswith("  ") and not line.startswith("   ") for line in text.splitlines())
        == n_fields
    )


def test_preset_base_inheritance(tmp_path):
    (tmp_path / "parent.yaml").write_text("sample:\n  group_size: 4\n  num_steps: 3\n")
    parent = tmp_path / "parent.yaml"
    (tmp_path / "child.yaml").write_text(f"base: {parent}\nsample:\n  num_steps: 5\n")
    cfg = load_config(str(tmp_path / "child.yaml"))
    assert cfg.sample.group_size == 4 and cfg.sample.num_steps == 5
    (tmp_path / "loop.yaml").write_text(f"base: {tmp_path / 'loop.yaml'}\n")
    with pytest.raises(SlasError, match="form a cycle"):
        load_config(str(tmp_path / "loop.yaml"))
