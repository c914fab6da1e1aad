"""Who may talk to the runtime's channels: CURVE key files, client allow-listing and the bind policy.

Threat model (docs/security.md): by default every channel binds loopback, and only processes on the same machine can
reach it. A channel that crosses machines uses ZeroMQ CURVE, which encrypts the link and authenticates both ends:
the client trusts one server public key, and the server accepts only clients whose public key is allow-listed.

One `SecurityConfig` describes one link, for both of its ends, as a launch file states it:

    security:
      curve: true
      keys_dir: keys                      # NAME.key (public) and NAME.key_secret (pair, mode 0600) files
      server_key: learner                 # the binding side serves with keys/learner.key_secret;
                                          # the connecting side trusts keys/learner.key
      client_key: robot1                  # the connecting side authenticates with keys/robot1.key_secret
      authorized_clients_dir: keys/clients  # the binding side accepts only the public keys (*.key) found here

Each machine holds only what its end needs: the learner `learner.key_secret` and `clients/robot1.key`, the robot
`robot1.key_secret` and `learner.key`. Relative paths are resolved against the process's working directory.

How a process uses it:
- binding side (driver, learner): `secure_context(security)` loads and checks its keys and allow-list, and returns a
  `SecureContext` whose fresh ZeroMQ context runs a ZAP authenticator (`zmq.auth.thread.ThreadAuthenticator`);
  create the bound endpoints with `context=secure.context, curve=secure.server_keys(endpoint)`. `server_keys`
  applies the bind policy (`check_bind`) and returns the keys (None without CURVE). ZAP is per context, which is why
  the server gets its own context and never `zmq.Context.instance()`.
- connecting side (controller, CLI): `curve=client_keys(security)` (None without CURVE); any context will do.

Bind policy: a channel bound to a non-loopback tcp address (anything but 127.0.0.0/8, ::1 or localhost; `0.0.0.0`
and `*` listen on every interface) without CURVE is refused, unless the launch file says `allow_insecure: true`.
ipc:// and inproc:// never leave the machine.

Permissions are checked as ssh checks ~/.ssh: the keys directory, the allow-list directory and every key file must be
owned by the user running the process (or root) and writable by nobody else, since whoever can write there can put
their own key in (a client key in the allow-list, or a server key the clients then trust); secret key files must
moreover be readable by nobody else. Every refusal names the file or directory and the fix (chmod, chown).
"""

from __future__ import annotations

import ipaddress
import os
import re
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import zmq
from zmq.utils.z85 import Z85CHARS

from acalign_robot.config import FieldError
from acalign_robot.errors import InputError
from acalign_robot.wire.channels import CurveClientKeys, CurveServerKeys

if TYPE_CHECKING:
    from zmq.auth.thread import ThreadAuthenticator

# zmq.auth (and its authenticator thread, which imports asyncio) is imported where it is used, not here: `acalign
# estop` imports this module on its way to the drivers, and a plain loopback e-stop needs none of it.

__all__ = [
    "PUBLIC_KEY_SUFFIX",
    "SECRET_KEY_SUFFIX",
    "SecureContext",
    "SecurityConfig",
    "check_bind",
    "check_private",
    "client_keys",
    "generate_keys",
    "is_local_endpoint",
    "key_files",
    "load_public_key",
    "load_secret_key",
    "secure_context",
]

# The file names zmq.auth.create_certificates writes, and the suffix its allow-list loader globs for.
PUBLIC_KEY_SUFFIX = ".key"
SECRET_KEY_SUFFIX = ".key_secret"

_KEY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_Z85_KEY_CHARS = 40  # a 32-byte Curve25519 key in Z85


@dataclass(frozen=True)
class SecurityConfig:
    """How one link is secured; the module docstring shows the YAML. Key names are file names in `keys_dir`.

    Role-specific fields are checked when a side uses them: `authorized_clients_dir` by `secure_context` (the binding
    side), `client_key` by `client_keys` (the connecting side).
    """

    curve: bool = False
    keys_dir: str | None = None
    server_key: str | None = None  # the binding side's key pair; its public half is what clients trust
    client_key: str | None = None  # the connecting side's key pair
    authorized_clients_dir: str | None = None  # public keys (*.key) of the clients the binding side accepts
    allow_insecure: bool = False  # bind a non-loopback address without CURVE: say it explicitly, or be refused

    def validate(self) -> None:
        if not self.curve:
            for name in ("keys_dir", "server_key", "client_key", "authorized_clients_dir"):
                if getattr(self, name) is not None:  # keys without CURVE: most likely a forgotten `curve: true`
                    raise FieldError(name, "is set but curve is false: set `curve: true`, or remove it")
            return
        if self.allow_insecure:
            raise FieldError("allow_insecure", "contradicts `curve: true` (a CURVE link is never insecure): remove it")
        if self.keys_dir is None:
            raise FieldError("keys_dir", "is required with `curve: true`: the directory of the key files")
        if self.server_key is None:
            raise FieldError("server_key", "is required with `curve: true`: the key pair the binding side serves with")
        for name in ("server_key", "client_key"):
            value = getattr(self, name)
            if value is not None and (problem := _key_name_problem(value)):
                raise FieldError(name, problem)


def _key_name_problem(name: str) -> str | None:
    """Why `name` cannot name a key pair in a keys directory, or None. Names are never paths."""
    if not _KEY_NAME.fullmatch(name):
        return f"{name!r} is not a key name (letters, digits, '_', '.', '-'; not a path)"
    if name.endswith((PUBLIC_KEY_SUFFIX, SECRET_KEY_SUFFIX)):
        return f"{name!r}: give the key name without its suffix ({name.rsplit('.', 1)[0]!r})"
    return None


def _checked(security: SecurityConfig) -> SecurityConfig:
    """`security` after its validate(): a config built in Python has not been through the YAML loader."""
    try:
        security.validate()
    except FieldError as exc:
        raise InputError(f"security.{exc.field}: {exc.message}") from None
    if security.curve and not zmq.has("curve"):
        raise InputError("security.curve: this libzmq was built without CURVE support")
    return security


# --- Key files -------------------------------------------------------------------------------------------------------


def check_private(path: str | Path, what: str) -> None:
    """Refuse a key file or key directory that a user other than this one (or root) could write.

    `what` names it in the message (`security.keys_dir`, `key file`, ...). Like ssh's StrictModes: owned by this
    user or root, and no write permission for group or others (a sticky world-writable directory such as /tmp is
    refused too: anyone may add files to it).
    """
    path = Path(path)
    try:
        info = path.stat()
    except FileNotFoundError:
        raise InputError(f"{what}: {path} does not exist") from None
    except OSError as exc:
        raise InputError(f"{what}: cannot check {path} ({exc.strerror})") from None
    uid = os.getuid()
    if info.st_uid not in (uid, 0):
        raise InputError(
            f"{what}: {path} is owned by uid {info.st_uid}, not by this user (uid {uid}) or root, so its owner can "
            f"replace the keys; run `chown {uid} {path}` (as root), or use a {_kind(info)} of your own"
        )
    mode = stat.S_IMODE(info.st_mode)
    if mode & 0o022:
        raise InputError(
            f"{what}: {path} is writable by group or others (mode {mode:04o}), so another user could replace the "
            f"keys; run `chmod go-w {path}`"
        )


def _check_keys_dir(keys_dir: str) -> None:
    """`check_private` on the keys directory; a missing one is left to the key file's own "not found" message."""
    if Path(keys_dir).exists():
        check_private(keys_dir, "security.keys_dir")


def _kind(info: os.stat_result) -> str:
    return "directory" if stat.S_ISDIR(info.st_mode) else "file"


def key_files(keys_dir: str | Path, name: str) -> tuple[Path, Path]:
    """The public and secret key files of key pair `name` in `keys_dir`: (NAME.key, NAME.key_secret)."""
    if problem := _key_name_problem(name):
        raise InputError(problem)
    return Path(keys_dir) / f"{name}{PUBLIC_KEY_SUFFIX}", Path(keys_dir) / f"{name}{SECRET_KEY_SUFFIX}"


def generate_keys(keys_dir: str | Path, name: str, *, force: bool = False) -> tuple[Path, Path]:
    """Write a new CURVE key pair NAME.key (public, 0644) and NAME.key_secret (0600) into `keys_dir`.

    Refuses to replace existing files unless `force`: a new pair locks out every peer that trusts the old public key.
    """
    public_file, secret_file = key_files(keys_dir, name)
    existing = [path for path in (public_file, secret_file) if path.exists()]
    if existing and not force:
        raise InputError(f"{existing[0]} already exists (use --force to replace the key pair)")
    directory = Path(keys_dir)
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    check_private(directory, "keys directory")  # a directory others may write: they could swap the new pair
    # create_certificates writes with the process umask (often 0644); writing into a private (0700) staging directory
    # and tightening the mode before the move means the secret is never readable by others, not even for a moment.
    import zmq.auth

    with tempfile.TemporaryDirectory(dir=directory) as staging:
        new_public, new_secret = zmq.auth.create_certificates(staging, name)
        os.chmod(new_secret, 0o600)
        os.chmod(new_public, 0o644)
        os.replace(new_secret, secret_file)
        os.replace(new_public, public_file)
    return public_file, secret_file


def load_public_key(path: str | Path) -> bytes:
    """The public key (Z85) in a key file: a NAME.key, or a NAME.key_secret (which holds both halves)."""
    public_key, _ = _read_key_file(Path(path))
    return public_key


def load_secret_key(path: str | Path) -> tuple[bytes, bytes]:
    """(public key, secret key) from a NAME.key_secret file that only its owner may read."""
    path = Path(path)
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        raise InputError(f"{path}: secret key file not found (create it with `acalign keys generate`)") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read the secret key file ({exc.strerror})") from None
    if mode & 0o077:
        raise InputError(
            f"{path}: secret key file is accessible by group or others (mode {mode:04o}); run `chmod 600 {path}`"
        )
    public_key, secret_key = _read_key_file(path)  # owner checked there
    if secret_key is None:
        raise InputError(f"{path}: no secret-key in this file (a public key file?)")
    return public_key, secret_key


def _read_key_file(path: Path) -> tuple[bytes, bytes | None]:
    import zmq.auth

    if not path.exists():
        raise InputError(f"{path}: key file not found")
    check_private(path, "key file")
    try:
        public_key, secret_key = zmq.auth.load_certificate(path)
    except OSError as exc:
        raise InputError(f"{path}: cannot read the key file ({exc.strerror or exc})") from None
    except ValueError:
        raise InputError(f"{path}: not a CURVE key file (no public-key line)") from None
    for label, key in (("public-key", public_key), ("secret-key", secret_key)):
        if key is not None and (len(key) != _Z85_KEY_CHARS or not set(key) <= set(Z85CHARS)):
            raise InputError(f"{path}: the {label} is not a {_Z85_KEY_CHARS}-character Z85 CURVE key")
    return public_key, secret_key


def _check_authorized_clients(directory: Path) -> None:
    """Load every public key in `directory` here, so that a bad file is named and an empty list is refused.

    (ThreadAuthenticator.configure_curve only logs a directory it cannot load, and then refuses every client.)
    """
    if not directory.is_dir():
        raise InputError(f"security.authorized_clients_dir: {directory} is not a directory")
    check_private(directory, "security.authorized_clients_dir")
    if not [load_public_key(path) for path in sorted(directory.glob(f"*{PUBLIC_KEY_SUFFIX}"))]:
        raise InputError(
            f"security.authorized_clients_dir: no client public keys (*{PUBLIC_KEY_SUFFIX}) in {directory}, so every "
            "client would be refused; copy each client's NAME.key there"
        )


# --- Bind policy -----------------------------------------------------------------------------------------------------


def is_local_endpoint(endpoint: str) -> bool:
    """Whether a ZeroMQ endpoint is reachable only from this machine (loopback tcp, ipc://, inproc://)."""
    scheme, separator, address = endpoint.partition("://")
    if scheme in ("ipc", "inproc"):
        return True
    if scheme != "tcp" or not separator:
        return False  # pgm, udp, ws, ...: network transports
    host = address.rpartition(":")[0].removeprefix("[").removesuffix("]")  # tcp://HOST:PORT, tcp://[IPV6]:PORT
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # '*', an interface name or a host name: possibly reachable from other machines


def check_bind(endpoint: str, security: SecurityConfig) -> None:
    """Refuse to bind a non-loopback address without CURVE, unless the launch file says `allow_insecure: true`."""
    _checked(security)
    if security.curve or security.allow_insecure or is_local_endpoint(endpoint):
        return
    raise InputError(
        f"refusing to bind {endpoint!r} without CURVE: anyone on the network could read and send on this channel. "
        "Bind 127.0.0.1, or secure it with `security: {curve: true, ...}` (docs/security.md), or, on a network you "
        "trust entirely, write `security: {allow_insecure: true}`"
    )


# --- The two sides of a link -----------------------------------------------------------------------------------------


def client_keys(security: SecurityConfig) -> CurveClientKeys | None:
    """The connecting side's `curve=` argument: its own key pair and the server's public key (None without CURVE)."""
    if not _checked(security).curve:
        return None
    if security.client_key is None:
        raise InputError("security.client_key: the connecting side of a CURVE link needs a key pair name")
    _, secret_file = key_files(security.keys_dir, security.client_key)
    server_public_file, _ = key_files(security.keys_dir, security.server_key)
    _check_keys_dir(security.keys_dir)
    public_key, secret_key = load_secret_key(secret_file)
    return CurveClientKeys(secret_key, public_key, load_public_key(server_public_file))


class SecureContext:
    """A binding process's own ZeroMQ context; with CURVE, a ZAP authenticator on it allow-lists clients by key.

    The allow-list applies to every CURVE socket made on this context, and only to those. Close the endpoints made on
    it before closing it (nest the `with` blocks): once the authenticator has stopped, libzmq lets CURVE handshakes
    through without asking anyone. `close` stops the authenticator's thread and destroys the context (LINGER 0), so
    it never waits on a peer or on a socket left open.
    """

    def __init__(
        self,
        security: SecurityConfig,
        context: zmq.Context,
        authenticator: ThreadAuthenticator | None,
        keys: CurveServerKeys | None,
    ):
        self.security = security
        self.context = context
        self.authenticator = authenticator
        self._keys = keys

    def server_keys(self, endpoint: str) -> CurveServerKeys | None:
        """The `curve=` argument for an endpoint bound on this context, after the bind policy (None without CURVE)."""
        check_bind(endpoint, self.security)
        return self._keys

    def close(self) -> None:
        if self.authenticator is not None:
            self.authenticator.stop()
        self.context.destroy(linger=0)

    def __enter__(self) -> SecureContext:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def secure_context(security: SecurityConfig) -> SecureContext:
    """The binding side's context (see SecureContext); with CURVE, its key pair and allow-list are checked first.

    Problems are InputErrors naming the field or file. The authenticator accepts only the public keys found in
    `authorized_clients_dir` and runs on a new context, never on `zmq.Context.instance()`.
    """
    if not _checked(security).curve:
        return SecureContext(security, zmq.Context(), None, None)
    if security.authorized_clients_dir is None:
        raise InputError(
            "security.authorized_clients_dir: the binding side of a CURVE link needs the directory of the public keys "
            "it accepts (without it any client that knows the server's public key could connect)"
        )
    _, secret_file = key_files(security.keys_dir, security.server_key)
    _check_keys_dir(security.keys_dir)
    public_key, secret_key = load_secret_key(secret_file)
    allowed_dir = Path(security.authorized_clients_dir)
    _check_authorized_clients(allowed_dir)
    from zmq.auth.thread import ThreadAuthenticator

    context = zmq.Context()
    authenticator = ThreadAuthenticator(context)
    try:
        authenticator.start()
        # Loads the same files just checked; domain '*' covers sockets whatever their ZAP_DOMAIN. The key list is read
        # once: restart the process (or call configure_curve again) after changing the directory.
        authenticator.configure_curve(domain="*", location=str(allowed_dir))
    except BaseException:
        authenticator.stop()
        context.destroy(linger=0)
        raise
    return SecureContext(security, context, authenticator, CurveServerKeys(secret_key, public_key))
