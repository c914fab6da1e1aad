"""wire.security without sockets: the bind policy, the config's checks and the key files' handling."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import zmq

from acalign_robot import config as config_io
from acalign_robot.errors import InputError
from acalign_robot.wire.security import (
    SecurityConfig,
    check_bind,
    client_keys,
    generate_keys,
    is_local_endpoint,
    key_files,
    load_public_key,
    load_secret_key,
    secure_context,
)

PLAIN = SecurityConfig()
INSECURE = SecurityConfig(allow_insecure=True)
CURVE = SecurityConfig(curve=True, keys_dir="keys", server_key="learner")


def mode_of(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize(
    ("endpoint", "local"),
    [
        ("tcp://127.0.0.1:5555", True),
        ("tcp://127.3.2.1:5555", True),
        ("tcp://localhost:5555", True),
        ("tcp://[::1]:5555", True),
        ("ipc:///tmp/acalign-driver.sock", True),
        ("inproc://policies", True),
        ("tcp://0.0.0.0:5555", False),
        ("tcp://*:5555", False),
        ("tcp://192.168.1.20:5555", False),
        ("tcp://[::]:5555", False),
        ("tcp://eth0:5555", False),
        ("tcp://robot.local:5555", False),
        ("tcp://127.0.0.1", False),  # no port: not an endpoint we can vouch for
        ("udp://127.0.0.1:5555", False),
        ("127.0.0.1:5555", False),
    ],
)
def test_which_endpoints_are_local(endpoint, local):
    assert is_local_endpoint(endpoint) is local


@pytest.mark.parametrize(
    ("endpoint", "security", "allowed"),
    [
        ("tcp://127.0.0.1:5555", PLAIN, True),
        ("ipc:///tmp/x.sock", PLAIN, True),
        ("tcp://0.0.0.0:5555", PLAIN, False),
        ("tcp://*:5555", PLAIN, False),
        ("tcp://10.0.0.2:5555", PLAIN, False),
        ("tcp://0.0.0.0:5555", INSECURE, True),
        ("tcp://10.0.0.2:5555", INSECURE, True),
        ("tcp://0.0.0.0:5555", CURVE, True),
        ("tcp://10.0.0.2:5555", CURVE, True),
        ("tcp://127.0.0.1:5555", CURVE, True),
    ],
)
def test_bind_policy(endpoint, security, allowed):
    if allowed:
        check_bind(endpoint, security)
    else:
        with pytest.raises(InputError, match="refusing to bind") as refused:
            check_bind(endpoint, security)
        message = str(refused.value)
        assert repr(endpoint) in message and "127.0.0.1" in message and "allow_insecure" in message


def test_security_section_loads_strictly_from_yaml():
    text = (
        "curve: true\nkeys_dir: keys\nserver_key: learner\nclient_key: robot1\nauthorized_clients_dir: keys/clients\n"
    )
    loaded = config_io.load_text(SecurityConfig, text, "launch.yaml")
    assert loaded == SecurityConfig(True, "keys", "learner", "robot1", "keys/clients")
    assert config_io.load_text(SecurityConfig, config_io.dump(loaded)) == loaded
    with pytest.raises(InputError, match=r"launch.yaml:1: unknown key 'cruve'"):
        config_io.load_text(SecurityConfig, "cruve: true\n", "launch.yaml")


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("keys_dir: keys\n", "keys_dir: is set but curve is false"),
        ("curve: true\nserver_key: s\n", "keys_dir: is required"),
        ("curve: true\nkeys_dir: k\n", "server_key: is required"),
        ("curve: true\nkeys_dir: k\nserver_key: s\nallow_insecure: true\n", "allow_insecure: contradicts"),
        ("curve: true\nkeys_dir: k\nserver_key: ../s\n", "server_key: '../s' is not a key name"),
        ("curve: true\nkeys_dir: k\nserver_key: s\nclient_key: c.key_secret\n", "without its suffix"),
    ],
)
def test_contradictory_or_incomplete_sections_are_refused(text, problem):
    with pytest.raises(InputError, match=problem):
        config_io.load_text(SecurityConfig, text, "launch.yaml")


def test_helpers_check_a_config_built_in_python():
    with pytest.raises(InputError, match="security.keys_dir: is set but curve is false"):
        check_bind("tcp://127.0.0.1:1", SecurityConfig(keys_dir="keys"))


def test_generated_keys_are_private_and_never_overwritten(tmp_path):
    keys_dir = tmp_path / "keys"
    public_file, secret_file = generate_keys(keys_dir, "robot1")
    assert (public_file.name, secret_file.name) == ("robot1.key", "robot1.key_secret")
    assert mode_of(keys_dir) == 0o700 and mode_of(secret_file) == 0o600 and mode_of(public_file) == 0o644
    assert sorted(p.name for p in keys_dir.iterdir()) == ["robot1.key", "robot1.key_secret"]  # no staging dir left
    public_key, secret_key = load_secret_key(secret_file)
    assert load_public_key(public_file) == public_key and len(secret_key) == 40
    assert zmq.curve_public(secret_key) == public_key

    with pytest.raises(InputError, match=r"robot1.key already exists \(use --force"):
        generate_keys(keys_dir, "robot1")
    assert load_public_key(public_file) == public_key
    generate_keys(keys_dir, "robot1", force=True)
    assert load_public_key(public_file) != public_key
    assert mode_of(secret_file) == 0o600


def test_key_names_are_not_paths(tmp_path):
    for name in ("../escape", "a/b", "", ".hidden", "robot.key"):
        with pytest.raises(InputError):
            key_files(tmp_path, name)


def test_missing_and_malformed_key_files_are_named(tmp_path):
    missing = tmp_path / "nobody.key"
    with pytest.raises(InputError, match=f"{missing}: key file not found"):
        load_public_key(missing)
    with pytest.raises(InputError, match=f"{tmp_path / 'nobody.key_secret'}: secret key file not found"):
        load_secret_key(tmp_path / "nobody.key_secret")
    garbage = tmp_path / "garbage.key"
    garbage.write_text("hello\n")
    with pytest.raises(InputError, match=f"{garbage}: not a CURVE key file"):
        load_public_key(garbage)
    short = tmp_path / "short.key"
    short.write_text('curve\n    public-key = "tooshort"\n')
    with pytest.raises(InputError, match=f"{short}: the public-key is not a 40-character Z85"):
        load_public_key(short)
    public_file, _ = generate_keys(tmp_path, "pub")
    public_file.chmod(0o600)
    with pytest.raises(InputError, match=f"{public_file}: no secret-key"):
        load_secret_key(public_file)


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_a_secret_key_readable_by_others_is_refused(tmp_path, mode):
    _, secret_file = generate_keys(tmp_path, "server")
    secret_file.chmod(mode)
    with pytest.raises(InputError, match=rf"{secret_file}: secret key file is accessible by group or others") as exc:
        load_secret_key(secret_file)
    assert f"chmod 600 {secret_file}" in str(exc.value)


def test_each_side_needs_its_own_fields(tmp_path):
    generate_keys(tmp_path, "learner")
    link = SecurityConfig(curve=True, keys_dir=str(tmp_path), server_key="learner")
    with pytest.raises(InputError, match="security.client_key: the connecting side"):
        client_keys(link)
    with pytest.raises(InputError, match="security.authorized_clients_dir: the binding side"):
        secure_context(link)
    assert client_keys(PLAIN) is None


def test_the_binding_side_refuses_a_missing_empty_or_bad_allow_list(tmp_path):
    generate_keys(tmp_path, "learner")
    clients = tmp_path / "clients"

    def served(directory) -> SecurityConfig:
        return SecurityConfig(
            curve=True, keys_dir=str(tmp_path), server_key="learner", authorized_clients_dir=directory
        )

    with pytest.raises(InputError, match=f"{clients} is not a directory"):
        secure_context(served(str(clients)))
    clients.mkdir()
    with pytest.raises(InputError, match="no client public keys"):
        secure_context(served(str(clients)))
    (clients / "broken.key").write_text("not a key\n")
    with pytest.raises(InputError, match=f"{clients / 'broken.key'}: not a CURVE key file"):
        secure_context(served(str(clients)))


def test_the_server_secret_is_checked_before_anything_starts(tmp_path):
    _, secret_file = generate_keys(tmp_path, "learner")
    secret_file.chmod(0o644)
    security = SecurityConfig(
        curve=True, keys_dir=str(tmp_path), server_key="learner", authorized_clients_dir=str(tmp_path)
    )
    with pytest.raises(InputError, match="accessible by group or others"):
        secure_context(security)


def keys_of_one_link(tmp_path) -> tuple[SecurityConfig, Path, Path]:
    """(the link, its keys directory, its allow-list directory): learner serves, robot connects and is listed."""
    keys_dir, clients = tmp_path / "keys", tmp_path / "keys" / "clients"
    generate_keys(keys_dir, "learner")
    robot_public, _ = generate_keys(keys_dir, "robot")
    clients.mkdir()
    shutil.copy(robot_public, clients / "robot.key")
    link = SecurityConfig(
        curve=True,
        keys_dir=str(keys_dir),
        server_key="learner",
        client_key="robot",
        authorized_clients_dir=str(clients),
    )
    return link, keys_dir, clients


def both_sides(link: SecurityConfig) -> None:
    client_keys(link)
    secure_context(link).close()


def test_a_link_with_private_directories_loads(tmp_path):
    link, _, _ = keys_of_one_link(tmp_path)
    both_sides(link)  # the positive control for the refusals below


@pytest.mark.parametrize("mode", [0o777, 0o775, 0o757, 0o1777, 0o720])
def test_a_keys_directory_others_may_write_is_refused_by_both_sides_and_generate(tmp_path, mode):
    link, keys_dir, _ = keys_of_one_link(tmp_path)
    keys_dir.chmod(mode)
    for use in (client_keys, secure_context, lambda _: generate_keys(keys_dir, "another")):
        with pytest.raises(InputError, match=f"{keys_dir} is writable by group or others") as refused:
            use(link)
        assert f"(mode {mode:04o})" in str(refused.value) and f"chmod go-w {keys_dir}" in str(refused.value)
    assert not (keys_dir / "another.key").exists()


@pytest.mark.parametrize("mode", [0o777, 0o770, 0o1777])
def test_an_allow_list_directory_others_may_write_is_refused(tmp_path, mode):
    link, _, clients = keys_of_one_link(tmp_path)
    clients.chmod(mode)
    with pytest.raises(InputError, match=f"security.authorized_clients_dir: {clients} is writable by group or others"):
        secure_context(link)
    client_keys(link)  # the connecting side does not read the allow-list


@pytest.mark.parametrize("which", ["clients/robot.key", "learner.key"])
def test_a_public_key_file_others_may_write_is_refused(tmp_path, which):
    link, keys_dir, _ = keys_of_one_link(tmp_path)
    (keys_dir / which).chmod(0o646)
    with pytest.raises(InputError, match=f"key file: {keys_dir / which} is writable by group or others") as refused:
        both_sides(link)
    assert f"chmod go-w {keys_dir / which}" in str(refused.value)


def give_away(path: Path, monkeypatch) -> None:
    """Make `path` another user's: chown as root; otherwise, pretend to be another user."""
    if os.getuid() == 0:
        os.chown(path, 54321, -1)
    else:
        real_uid = os.getuid()
        monkeypatch.setattr(os, "getuid", lambda: real_uid + 1)


@pytest.mark.parametrize(
    ("which", "field"),
    [
        (".", "security.keys_dir"),
        ("clients", "security.authorized_clients_dir"),
        ("clients/robot.key", "key file"),
        ("learner.key_secret", "key file"),
        ("robot.key_secret", "key file"),
    ],
)
def test_keys_owned_by_another_user_are_refused(tmp_path, monkeypatch, which, field):
    link, keys_dir, _ = keys_of_one_link(tmp_path)
    path = keys_dir / which
    give_away(path, monkeypatch)
    with pytest.raises(InputError, match=f"{field}: {path} is owned by uid [0-9]+, not by this user") as refused:
        both_sides(link)
    assert f"chown {os.getuid()} {path}" in str(refused.value)


def test_imports_without_torch():
    code = "import sys; sys.modules['torch'] = None\nimport acalign_robot.wire.security\n"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
