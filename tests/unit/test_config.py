from dataclasses import dataclass, field
from typing import Literal

import pytest

from acalign_robot import config
from acalign_robot.algo.aca import PRESETS, ACAConfig, load_preset
from acalign_robot.config import ConfigError, FieldError


@dataclass(frozen=True)
class Inner:
    rate_hz: float = 100.0
    names: tuple[str, ...] = ()


@dataclass(frozen=True)
class Outer:
    name: str
    inner: Inner = field(default_factory=Inner)
    mode: Literal["sim", "robot"] = "sim"
    limit: int | None = None

    def validate(self) -> None:
        if self.inner.rate_hz > 1000:
            raise FieldError("inner", "rate above 1 kHz")


def test_unknown_key_names_key_file_line_and_suggestion(tmp_path):
    path = tmp_path / "session.yaml"
    path.write_text("name: a\ninner:\n  rate_hzz: 5\n")
    with pytest.raises(ConfigError) as error:
        config.load(Outer, path)
    message = str(error.value)
    assert f"{path}:3" in message
    assert "inner.rate_hzz" in message
    assert "did you mean 'rate_hz'" in message


def test_wrong_type_is_located(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("name: a\nlimit: many\n")
    with pytest.raises(ConfigError, match=r"c\.yaml:2: limit: expected an integer"):
        config.load(Outer, path)


def test_bool_is_not_an_int():
    with pytest.raises(ConfigError, match="expected an integer"):
        config.load_text(Outer, "name: a\nlimit: true\n")


def test_missing_required_field():
    with pytest.raises(ConfigError, match="missing required key 'name'"):
        config.load_text(Outer, "mode: sim\n")


def test_literal_choice_suggests():
    with pytest.raises(ConfigError, match="did you mean 'robot'"):
        config.load_text(Outer, "name: a\nmode: robto\n")


def test_validate_error_points_at_field_line():
    with pytest.raises(ConfigError, match=r"<string>:2: inner: rate above 1 kHz"):
        config.load_text(Outer, "name: a\ninner: {rate_hz: 5000}\n")


def test_invalid_yaml_is_a_config_error():
    with pytest.raises(ConfigError, match=r":2: invalid YAML"):
        config.load_text(Outer, "name: a\n  bad: [\n")


def test_round_trip_and_overrides(tmp_path):
    original = Outer(name="x", inner=Inner(rate_hz=250.0, names=("a", "b")), mode="robot", limit=3)
    path = tmp_path / "o.yaml"
    config.save(original, path)
    assert config.load(Outer, path) == original
    changed = config.load(Outer, path, overrides=["inner.rate_hz=500", "limit=null"])
    assert changed.inner.rate_hz == 500.0 and changed.limit is None


def test_override_of_unknown_key_is_reported():
    with pytest.raises(ConfigError, match="unknown key 'inner.rat'"):
        config.load_text(Outer, "name: a\n", overrides=["inner.rat=3"])


@pytest.mark.parametrize("name", PRESETS)
def test_presets_load_and_round_trip(name):
    preset = load_preset(name)
    assert config.load_text(ACAConfig, config.dump(preset)) == preset


def test_from_dict_round_trips_and_applies_overrides():
    preset = load_preset("medium-expert")
    assert config.from_dict(ACAConfig, config.to_dict(preset)) == preset
    data = {"name": "x", "inner": {"rate_hz": 250.0, "names": ["a"]}, "limit": 3}
    changed = config.from_dict(Outer, data, overrides=["inner.rate_hz=500", "mode=robot"])
    assert changed == Outer(name="x", inner=Inner(rate_hz=500.0, names=("a",)), mode="robot", limit=3)
    assert data["inner"]["rate_hz"] == 250.0  # the caller's values are not touched


def test_from_dict_is_as_strict_as_the_yaml_loader_and_names_its_source():
    expected = r"^run\.pt \(config\): unknown key 'inner\.rat' \(did you mean 'rate_hz'\?\)$"
    with pytest.raises(ConfigError, match=expected):
        config.from_dict(Outer, {"name": "a", "inner": {"rat": 3}}, "run.pt (config)")
    with pytest.raises(ConfigError, match=r"^<dict>: limit: expected an integer, got True$"):
        config.from_dict(Outer, {"name": "a", "limit": True})
    with pytest.raises(ConfigError, match=r"^<dict>: inner: rate above 1 kHz$"):
        config.from_dict(Outer, {"name": "a", "inner": {"rate_hz": 5000}})


@dataclass(frozen=True)
class Arm:
    rate_hz: float = 100.0

    def validate(self) -> None:
        if self.rate_hz <= 0:
            raise FieldError("rate_hz", f"must be positive, got {self.rate_hz}")


@dataclass(frozen=True)
class Cell:
    arms: tuple[Arm, ...]
    spares: dict[str, Arm] = field(default_factory=dict)


def test_a_config_built_in_code_is_validated_as_the_loader_validates_it():
    config.validate(Outer(name="a"))
    config.validate(Cell(arms=(Arm(), Arm(5.0))))
    with pytest.raises(ConfigError, match=r"^<code>: inner: rate above 1 kHz$"):
        config.validate(Outer(name="a", inner=Inner(rate_hz=5000.0)))
    with pytest.raises(ConfigError, match=r"^<code>: spares\.left\.rate_hz: must be positive, got 0\.0$"):
        config.validate(Cell(arms=(), spares={"left": Arm(0.0)}))
    cell = Cell(arms=(Arm(), Arm(rate_hz=-1.0)))
    with pytest.raises(ConfigError, match=r"^demo cell: arms\[1\]\.rate_hz: must be positive, got -1\.0$") as built:
        config.validate(cell, "demo cell")
    with pytest.raises(ConfigError) as loaded:
        config.from_dict(Cell, config.to_dict(cell), "demo cell")
    assert str(built.value) == str(loaded.value)


def test_preset_values_follow_algorithm_table():
    assert load_preset("medium-expert").beta == 15 and load_preset("medium-expert").w_min == 1
    assert load_preset("medium-replay").top_trajectories == 50
    assert load_preset("random").w_min == 0 and load_preset("random").w_decay_k == 10


def test_cross_field_check_in_aca_config():
    with pytest.raises(ConfigError, match="w_min"):
        config.load_text(ACAConfig, "w0: 1\nw_min: 2\n")


@dataclass(frozen=True)
class Fleet:
    name: str
    robots: tuple[Inner, ...] = ()
    inner: Inner = field(default_factory=Inner)


def test_include_merges_fragments_and_reports_their_lines(tmp_path):
    (tmp_path / "limits.yaml").write_text("inner:\n  rate_hz: 50\n  names: [a]\n")
    main = tmp_path / "main.yaml"
    main.write_text("include: [limits.yaml]\nname: x\ninner:\n  rate_hz: 75\n")
    loaded = config.load(Fleet, main)
    assert loaded.inner == Inner(rate_hz=75.0, names=("a",))
    (tmp_path / "bad.yaml").write_text("inner:\n  rate: 1\n")
    main.write_text("include: [bad.yaml]\nname: x\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml:2: unknown key 'inner.rate'"):
        config.load(Fleet, main)


def test_include_cycle_and_missing_file(tmp_path):
    (tmp_path / "a.yaml").write_text("include: [b.yaml]\nname: a\n")
    (tmp_path / "b.yaml").write_text("include: [a.yaml]\n")
    with pytest.raises(ConfigError, match="include cycle"):
        config.load(Fleet, tmp_path / "a.yaml")
    (tmp_path / "c.yaml").write_text("include: [nope.yaml]\nname: c\n")
    with pytest.raises(ConfigError, match=r"nope\.yaml: cannot read config file \(included from"):
        config.load(Fleet, tmp_path / "c.yaml")


def test_override_into_a_list_entry():
    loaded = config.load_text(
        Fleet, "name: f\nrobots:\n  - {rate_hz: 1}\n  - {rate_hz: 2}\n", overrides=["robots.1.rate_hz=9"]
    )
    assert [r.rate_hz for r in loaded.robots] == [1.0, 9.0]


@dataclass(frozen=True)
class NamedInner:
    name: str
    rate_hz: float = 1.0
    names: tuple[str, ...] = ()


@dataclass(frozen=True)
class NamedFleet:
    robots: tuple[NamedInner, ...]


def test_include_merges_named_list_entries_by_name(tmp_path):
    (tmp_path / "limits.yaml").write_text("robots:\n  - {name: a, rate_hz: 5, names: [x]}\n  - {name: b}\n")
    main = tmp_path / "main.yaml"
    main.write_text("include: [limits.yaml]\nrobots:\n  - {name: a, rate_hz: 7}\n  - {name: c}\n")
    robots = config.load(NamedFleet, main).robots
    assert robots == (NamedInner("a", 7.0, ("x",)), NamedInner("b"), NamedInner("c"))


def test_one_value_or_one_per_dimension_reads_a_number_or_a_list():
    from acalign_robot.controller.process import ControllerConfig

    one = config.load_text(ControllerConfig, "policy: p\nmax_policy_deviation: 0.5\n")
    per_dimension = config.load_text(ControllerConfig, "policy: p\nmax_policy_deviation: [0.5, 1]\n")
    assert one.max_policy_deviation == 0.5
    assert per_dimension.max_policy_deviation == (0.5, 1.0)
    with pytest.raises(ConfigError, match=r"<string>:2: max_policy_deviation: must be in \(0, 1\]"):
        config.load_text(ControllerConfig, "policy: p\nmax_policy_deviation: [0.5, 2]\n")
    with pytest.raises(ConfigError, match=r"max_policy_deviation\[1\]: expected a number"):
        config.load_text(ControllerConfig, "policy: p\nmax_policy_deviation: [0.5, wide]\n")
