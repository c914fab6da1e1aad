"""Driver kinds resolved by drivers/plugins.py, in process: what a driver config's load refuses with its line, the
typed `args` of a plugin-convention driver, and entry points (faked: the installed package is the integration test's).
"""

from __future__ import annotations

from importlib import metadata

import pytest

from acalign_robot import config as config_io
from acalign_robot.config import ConfigError
from acalign_robot.drivers import plugins
from acalign_robot.drivers.server import DriverConfig, make_driver


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("kind: python\n", "driver.yaml:1: target: kind python needs `target: package.module:Class`"),
        ("kind: template\ntarget: a.b:C\n", "driver.yaml:2: target: kind python needs"),
        ("kind: python\ntarget: a.b.C\n", "driver.yaml:2: target: expected package.module:Class, got 'a.b.C'"),
        ("kind: loopback\nargs: {joints: 2}\n", "driver.yaml:2: args: a loopback driver takes no args"),
        ("kind: template\nargs: [1, 2]\n", "driver.yaml:2: args: expected a mapping"),
    ],
)
def test_a_driver_config_is_refused_at_load_with_its_line(text, message):
    with pytest.raises(ConfigError) as error:
        config_io.load_text(DriverConfig, text, "driver.yaml")
    assert str(error.value).startswith(message)


def test_template_args_reach_the_driver_and_round_trip():
    text = "kind: template\nargs:\n  joints: 2\n  control_period_s: 0.02\n"
    config = config_io.load_text(DriverConfig, text, "driver.yaml", overrides=["args.episode_steps=7"])
    assert config.args == {"joints": 2, "control_period_s": 0.02, "episode_steps": 7}
    assert config_io.load_text(DriverConfig, config_io.dump(config)) == config
    driver = make_driver(config)
    assert driver.spec.action.shape == (2,) and driver.spec.control_period_s == 0.02 and driver.episode_steps == 7
    with pytest.raises(ConfigError, match=r"^driver.yaml: args: joints: must be at least 1, got 0$"):
        make_driver(DriverConfig(kind="template", args={"joints": 0}), "driver.yaml")


def test_a_driver_without_config_refuses_args():
    # A module-level Driver subclass without settings: the loopback driver's class, reached as a python target.
    config = DriverConfig(kind="python", target="acalign_robot.drivers.loopback:LoopbackDriver", args={"x": 1})
    with pytest.raises(ConfigError, match=r"^args: acalign_robot.drivers.loopback:LoopbackDriver takes no args"):
        make_driver(config)
    assert make_driver(DriverConfig(kind="python", target=config.target)).spec.name == "loopback"


def fake_entry_points(monkeypatch, *pairs: tuple[str, str]) -> None:
    found = metadata.EntryPoints(metadata.EntryPoint(n, v, plugins.ENTRY_POINT_GROUP) for n, v in pairs)
    monkeypatch.setattr(plugins, "_entry_points", lambda: found)


def test_entry_points_resolve_by_name_and_a_built_in_name_stays_built_in(monkeypatch):
    template = "acalign_robot.drivers.template:TemplateDriver"
    fake_entry_points(monkeypatch, ("arm", template), ("mujoco", template))
    assert make_driver(DriverConfig(kind="arm", args={"joints": 4})).spec.action.shape == (4,)
    listed = {source.kind: source for source in plugins.driver_sources() if "entry point" in source.origin}
    assert listed["arm"].target == template and listed["arm"].origin == "entry point of an unknown package"
    assert listed["mujoco"].origin.endswith("(unused: `mujoco` is built in)")


def test_one_name_registered_twice_is_refused(monkeypatch):
    fake_entry_points(monkeypatch, ("arm", "a:A"), ("arm", "b:B"))
    with pytest.raises(ConfigError, match=r"^kind: 'arm' is registered by more than one package"):
        make_driver(DriverConfig(kind="arm"))
