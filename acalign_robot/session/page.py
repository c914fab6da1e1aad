"""The operator page: a session's live state and its e-stop buttons, served by the supervisor while the session runs.

Served by aiohttp on its own event loop in a thread of the supervisor (one small, well-kept asyncio library that has
a server and streamed responses; no ASGI stack to assemble). The page is plain HTML, JS and CSS from
`page_assets/` (no build step, nothing fetched at run time); it draws its own plots on canvases.

Data flow: the session's live feed (session/live.py) builds the state once a second, from the files the supervisor
reads anyway and the drivers' Stats, and `publish` hands it to the loop; every open page receives it as a server-sent
event (`GET /events`). `GET /api/state` returns the latest state once.

E-stop and clear (`POST /api/estop`, `POST /api/clear`, JSON `{"robot": NAME}` or `{"robot": null}` for every robot)
go through `operator.ask_drivers`, the path of `acalign estop`: every driver at once, one thread each; the answer
lists which drivers acknowledged, and in how long. Each is also a supervisor event (the report lists it).

Who may do what (every socket is reachable by a hostile local process, and a browser visits other sites):
- The Host header must name the address the page listens on (`localhost` too on loopback): a DNS-rebinding site
  cannot read the page or its token through a name of its own. (A wildcard bind cannot tell; its token guards it.)
- Every POST must carry the session's token in `X-Acalign-Token`, as `application/json`, with no Origin or the page's
  own: another site's form or script can neither read the token nor send that header without a CORS preflight,
  which this server never grants. On loopback the token is drawn per session and embedded in the page; a local
  process can read it, but such a process can send EStop and Clear to the drivers directly anyway (docs/security.md).
- With `token_file` (required off loopback) every request but the static assets must carry the token
  (`?token=` in the page's address, which the page passes on; or the header). Plain HTTP: the token crosses the
  network in clear, so prefer an SSH tunnel to a loopback page.
- Bounded: request bodies of 1 KiB, MAX_STREAMS event streams, MAX_ACTIONS e-stop/clear exchanges in flight (more
  wait their turn, each exchange ends within the drivers' reply timeout). The page may not be framed (an e-stop
  or clear button under another site's overlay).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import html
import json
import os
import re
import secrets
import socket
import threading
from collections.abc import Callable
from dataclasses import asdict
from importlib import resources
from pathlib import Path

from aiohttp import web

from acalign_robot.errors import InputError
from acalign_robot.session.operator import ask_drivers
from acalign_robot.session.schema import OperatorPage, is_loopback_host
from acalign_robot.wire.security import SecurityConfig

__all__ = ["MAX_STREAMS", "OperatorPageServer", "read_token"]

MAX_STREAMS = 16  # open event streams (pages) at once
MAX_ACTIONS = 4  # e-stop / clear exchanges in flight at once
MAX_BODY_BYTES = 1024
KEEPALIVE_S = 15.0  # a comment line on a quiet stream, so that proxies and the browser keep it open
TOKEN_HEADER = "X-Acalign-Token"
_TOKEN = re.compile(r"[A-Za-z0-9._~-]{16,256}")
_ASSETS = {"page.js": "text/javascript", "page.css": "text/css"}
_SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; frame-ancestors 'none'; form-action 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",  # the page's address may hold its token
    "Cache-Control": "no-store",
}


def read_token(path: str | Path) -> str:
    """The page's token from `path`: a file of this user (or root) that group and others may not read."""
    path = Path(path)
    try:
        info = path.stat()
        text = path.read_text(errors="replace").strip()
    except FileNotFoundError:
        raise InputError(
            f"{path} does not exist; make one with `python3 -c 'import secrets; print(secrets.token_urlsafe(32))' "
            f"> {path} && chmod 600 {path}`"
        ) from None
    except OSError as exc:
        raise InputError(f"cannot read {path} ({exc.strerror})") from None
    if info.st_uid not in (os.getuid(), 0):
        raise InputError(f"{path} is owned by uid {info.st_uid}, not by this user or root")
    if info.st_mode & 0o077:
        raise InputError(f"{path} may be read by group or others (mode {info.st_mode & 0o777:04o}); chmod 600 {path}")
    if not _TOKEN.fullmatch(text):
        raise InputError(f"{path}: the token must be 16 to 256 characters of letters, digits and . _ ~ -")
    return text


class OperatorPageServer:
    """The page's HTTP server; `start()` binds (errors are InputError) and serves on a thread, `close()` stops it.

    `robots` are the (name, control endpoint) pairs of this host's robots; `publish(state)` shows a new state (the
    session's live feed calls it once a second, session/live.py); `on_action(action, robot, answers)` records an
    e-stop or clear.
    """

    def __init__(
        self,
        config: OperatorPage,
        robots: list[tuple[str, str]],
        security: SecurityConfig,
        on_action: Callable[[str, str | None, list], None],
    ):
        self.config = config
        self.robots = dict(robots)
        self.security = security
        self.on_action = on_action
        self.token_required = config.token_file is not None
        try:
            self.token = read_token(config.token_file) if self.token_required else secrets.token_urlsafe(32)
        except InputError as exc:
            raise InputError(f"operator_page.token_file: {exc}") from None
        self.url = ""
        self._socket: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._latest = "{}"
        self._next: asyncio.Event | None = None  # set (and replaced) when a new state arrives
        self._streams = 0
        self._actions: asyncio.Semaphore | None = None
        self._allowed_hosts: set[str] | None = None

    # --- life cycle (supervisor thread) -----------------------------------------------------------------------------

    def start(self) -> str:
        """Bind and serve; returns the page's address (without the token)."""
        host, port = self.config.host, self.config.port
        try:
            family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
            self._socket = socket.create_server((host, port), family=family)
        except OSError as exc:
            raise InputError(f"operator_page: cannot listen on {host}:{port} ({exc.strerror or exc})") from None
        port = self._socket.getsockname()[1]
        shown = f"[{host}]" if ":" in host else host
        self.url = f"http://{shown}:{port}/"
        if host in ("0.0.0.0", "::"):
            self._allowed_hosts = None  # any interface: the Host header cannot be checked, the token guards it
        else:
            names = {shown} | ({"localhost", "127.0.0.1", "[::1]"} if is_loopback_host(host) else set())
            self._allowed_hosts = {f"{name}:{port}" for name in names}
        started = threading.Event()
        failure: list[BaseException] = []
        self._thread = threading.Thread(target=self._serve, args=(started, failure), name="operator-page", daemon=True)
        self._thread.start()
        started.wait(timeout=30)
        if failure or not started.is_set():
            self.close()
            raise InputError(f"operator_page: the server did not start: {failure[0] if failure else 'timeout'}")
        return self.url

    def close(self) -> None:
        self._stopping.set()
        if self._loop is not None and self._thread is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._wake_streams)
            self._thread.join(timeout=10)
        if self._socket is not None:
            self._socket.close()

    def publish(self, state: dict) -> None:
        """Hand a new state to every open page (any thread)."""
        text = json.dumps(state, separators=(",", ":"), allow_nan=False)
        if self._loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop closed: the session is ending
                self._loop.call_soon_threadsafe(self._set_latest, text)

    # --- the event loop (its own thread) ----------------------------------------------------------------------------

    def _serve(self, started: threading.Event, failure: list) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._run(started))
        except Exception as exc:  # reported by start(), or the page is gone and the session goes on without it
            failure.append(exc)
        finally:
            loop.close()

    async def _run(self, started: threading.Event) -> None:
        self._next = asyncio.Event()
        self._actions = asyncio.Semaphore(MAX_ACTIONS)
        app = web.Application(client_max_size=MAX_BODY_BYTES, middlewares=[self._guard])
        app.router.add_get("/", self._index)
        app.router.add_get("/static/{name}", self._asset)
        app.router.add_get("/events", self._events)
        app.router.add_get("/api/state", self._state)
        app.router.add_post("/api/estop", self._estop)
        app.router.add_post("/api/clear", self._clear)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.SockSite(runner, self._socket, shutdown_timeout=1.0).start()
        started.set()
        try:
            while not self._stopping.is_set():
                await asyncio.sleep(0.2)
        finally:
            await runner.cleanup()

    def _set_latest(self, text: str) -> None:
        self._latest = text
        self._wake_streams()

    def _wake_streams(self) -> None:
        if self._next is not None:
            current, self._next = self._next, asyncio.Event()
            current.set()

    @web.middleware
    async def _guard(self, request: web.Request, handler):
        if self._allowed_hosts is not None and request.host not in self._allowed_hosts:
            return _refuse(web.HTTPMisdirectedRequest, f"this page is served as {sorted(self._allowed_hosts)[0]}")
        public = request.path.startswith("/static/")
        if self.token_required and not public and not self._has_token(request, allow_query=True):
            return _refuse(web.HTTPForbidden, "this page needs its token: open it as URL?token=TOKEN")
        if request.method == "POST":
            origin = request.headers.get("Origin")
            if origin is not None and origin != f"{request.scheme}://{request.host}":
                return _refuse(web.HTTPForbidden, "cross-origin request refused")
            if request.content_type != "application/json" or not self._has_token(request, allow_query=False):
                return _refuse(web.HTTPForbidden, "a request from the page itself is expected (token, JSON)")
        try:
            response = await handler(request)
        except web.HTTPException as exc:  # a refusal of a handler's own (bad JSON, unknown robot, too many pages)
            exc.headers.update(_SECURITY_HEADERS)
            raise
        if not response.prepared:  # an event stream sent its headers already
            response.headers.update(_SECURITY_HEADERS)
        return response

    def _has_token(self, request: web.Request, allow_query: bool) -> bool:
        given = request.headers.get(TOKEN_HEADER) or (request.query.get("token", "") if allow_query else "")
        return hmac.compare_digest(given.encode(), self.token.encode())

    async def _index(self, request: web.Request) -> web.Response:
        page = _asset_text("index.html")
        page = page.replace("{{TOKEN}}", html.escape(self.token)).replace("{{SESSION}}", html.escape(self._session()))
        return web.Response(text=page, content_type="text/html")

    def _session(self) -> str:
        with contextlib.suppress(ValueError):
            return str(json.loads(self._latest).get("session", ""))
        return ""

    async def _asset(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in _ASSETS:  # a fixed list: no path from a request reaches the file system
            raise web.HTTPNotFound()
        return web.Response(text=_asset_text(name), content_type=_ASSETS[name])

    async def _state(self, request: web.Request) -> web.Response:
        return web.Response(text=self._latest, content_type="application/json")

    async def _events(self, request: web.Request) -> web.StreamResponse:
        if self._streams >= MAX_STREAMS:
            raise web.HTTPServiceUnavailable(text=f"at most {MAX_STREAMS} pages at once")
        self._streams += 1
        try:
            response = web.StreamResponse(headers={"Content-Type": "text/event-stream", **_SECURITY_HEADERS})
            await response.prepare(request)
            await response.write(f"data: {self._latest}\n\n".encode())
            while not self._stopping.is_set():
                waiting = self._next
                try:
                    await asyncio.wait_for(waiting.wait(), KEEPALIVE_S)
                except asyncio.TimeoutError:
                    await response.write(b": keep-alive\n\n")
                    continue
                if not self._stopping.is_set():
                    await response.write(f"data: {self._latest}\n\n".encode())
            return response
        except ConnectionResetError:  # the page was closed
            return response
        finally:
            self._streams -= 1

    async def _estop(self, request: web.Request) -> web.Response:
        return await self._act(request, "estop")

    async def _clear(self, request: web.Request) -> web.Response:
        return await self._act(request, "clear")

    async def _act(self, request: web.Request, action: str) -> web.Response:
        try:
            body = await request.json()
        except ValueError:
            raise web.HTTPBadRequest(text='expected JSON {"robot": NAME or null}') from None
        robot = body.get("robot", 0) if isinstance(body, dict) else 0
        if robot is not None and not (isinstance(robot, str) and robot in self.robots):
            raise web.HTTPBadRequest(text=f"robot: one of {sorted(self.robots)} or null (every robot)")
        targets = list(self.robots.items()) if robot is None else [(robot, self.robots[robot])]
        loop = asyncio.get_running_loop()
        async with self._actions:
            answers = await loop.run_in_executor(
                None,
                lambda: ask_drivers(targets, action, self.security, reason="operator page", source="operator-page"),
            )
        self.on_action(action, robot, answers)
        payload = {
            "action": action,
            "ok": all(answer.acknowledged for answer in answers),
            "answers": [asdict(answer) for answer in answers],
        }
        return web.json_response(payload)


def _refuse(kind: type[web.HTTPException], why: str) -> web.Response:
    return web.Response(status=kind.status_code, text=why + "\n", headers=_SECURITY_HEADERS)


def _asset_text(name: str) -> str:
    return resources.files("acalign_robot.session").joinpath("page_assets", name).read_text()
