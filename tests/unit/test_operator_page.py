"""The operator page without a browser: launch-file fields, the token file, what the server refuses (Host, token,
Origin, content type, size), its event stream, and the live view's bookkeeping of episodes and learner records."""

from __future__ import annotations

import http.client
import json
import subprocess
import sys
import threading
import time

import pytest

from acalign_robot.config import ConfigError
from acalign_robot.errors import InputError
from acalign_robot.session.live import MAX_EPISODES, LiveFeed, ProcessState, SessionView, read_last_record
from acalign_robot.session.page import MAX_STREAMS, OperatorPageServer, read_token
from acalign_robot.session.schema import OperatorPage, load_launch
from acalign_robot.wire.security import SecurityConfig

GOOD_TOKEN = "x" * 24


def launch_file(tmp_path, page: str):
    path = tmp_path / "launch.yaml"
    path.write_text(
        "session: s\nrobots:\n  - name: r\n    driver: {kind: loopback}\n    controller: {policy: p}\n"
        f"operator_page: {page}\n"
    )
    return path


@pytest.mark.parametrize(
    ("page", "expected"),
    [
        ("{port: 70000}", "operator_page.port: must be 0 (a free port) to 65535, got 70000"),
        ("{host: 0.0.0.0}", "operator_page.token_file: the page on 0.0.0.0 (not loopback) needs a token"),
        ("{host: 'a b'}", "operator_page.host: expected an address or host name"),
        ("{colour: red}", "colour"),
    ],
)
def test_bad_page_fields_name_the_field(tmp_path, page, expected):
    with pytest.raises(ConfigError, match="launch.yaml:") as raised:
        load_launch(launch_file(tmp_path, page))
    assert expected in str(raised.value)


def test_bad_page_field_is_one_line_and_exit_2(tmp_path):
    path = launch_file(tmp_path, "{port: -1}")
    result = subprocess.run(
        [sys.executable, "-m", "acalign_robot.cli", "validate", str(path)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1 and "operator_page.port" in result.stderr, result.stderr


def test_loopback_needs_no_token_file_and_other_hosts_accept_one(tmp_path):
    assert load_launch(launch_file(tmp_path, "{host: localhost, port: 8470}")).operator_page.port == 8470
    config = load_launch(launch_file(tmp_path, "{host: 0.0.0.0, token_file: page.token}")).operator_page
    assert config.token_file == "page.token"


def test_the_token_file_must_be_private_and_well_formed(tmp_path):
    path = tmp_path / "page.token"
    with pytest.raises(InputError, match="does not exist"):
        read_token(path)
    path.write_text(GOOD_TOKEN + "\n")
    path.chmod(0o644)
    with pytest.raises(InputError, match="may be read by group or others"):
        read_token(path)
    path.chmod(0o600)
    assert read_token(path) == GOOD_TOKEN
    path.write_text("short")
    with pytest.raises(InputError, match="16 to 256 characters"):
        read_token(path)


class Page:
    """A served page on a free loopback port, with its recorded actions; `request()` speaks raw HTTP to it."""

    def __init__(self, config: OperatorPage, robots=(("arm", "tcp://127.0.0.1:1"),)):
        self.actions = []
        self.state = {"session": "unit", "robots": [], "learner": None, "events": [], "elapsed_s": 1.0}
        self.server = OperatorPageServer(config, list(robots), SecurityConfig(), lambda *a: self.actions.append(a))
        self.server.start()
        self.server.publish(self.state)
        self.port = int(self.server.url.rsplit(":", 1)[1].rstrip("/"))

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        connection.request(method, path, body=body, headers={"Host": f"127.0.0.1:{self.port}", **(headers or {})})
        response = connection.getresponse()
        data = response.read()
        connection.close()
        return response.status, response.headers, data

    def post(self, action: str, body: dict, **headers):
        headers = {"Content-Type": "application/json", "X-Acalign-Token": self.server.token, **headers}
        return self.request("POST", f"/api/{action}", json.dumps(body).encode(), headers)


@pytest.fixture
def page():
    served = Page(OperatorPage(port=0))
    yield served
    served.server.close()


def test_the_page_embeds_its_session_token_and_refuses_framing(page):
    status, headers, body = page.request("GET", "/")
    assert status == 200 and f'content="{page.server.token}"' in body.decode()
    assert headers["X-Frame-Options"] == "DENY" and "frame-ancestors 'none'" in headers["Content-Security-Policy"]
    assert page.request("GET", "/static/page.js")[0] == 200
    assert page.request("GET", "/static/..%2Fpage.py")[0] == 404  # only the listed assets
    status, _, body = page.request("GET", "/api/state")
    assert status == 200 and json.loads(body)["session"] == "unit"


def test_a_host_header_of_another_name_is_refused(page):
    """DNS rebinding: a site whose name resolves to 127.0.0.1 must not read the page (and its token)."""
    assert page.request("GET", "/", headers={"Host": f"evil.example:{page.port}"})[0] == 421
    assert page.request("GET", "/", headers={"Host": f"localhost:{page.port}"})[0] == 200


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({"X-Acalign-Token": "wrong-token-wrong-token"}, 403),
        ({"Origin": "http://evil.example"}, 403),
        ({"Content-Type": "text/plain"}, 403),  # a cross-site form could send this without a preflight
    ],
)
def test_estop_requests_not_from_the_page_are_refused(page, headers, status):
    assert page.post("estop", {"robot": None}, **headers)[0] == status
    assert page.actions == []


def test_estop_bodies_are_bounded_and_checked(page):
    assert page.post("estop", {"robot": "x" * 2000})[0] == 413
    assert page.post("estop", {"robot": "nobody"})[0] == 400
    assert page.post("estop", {"robot": ["arm"]})[0] == 400
    assert page.actions == []


def test_estop_goes_to_the_drivers_and_says_who_did_not_answer(page):
    """The robot's endpoint has no driver: the answer names it, within the drivers' reply timeout."""
    status, _, body = page.post("estop", {"robot": None}, Origin=f"http://127.0.0.1:{page.port}")
    assert status == 200
    answer = json.loads(body)
    assert answer["ok"] is False and answer["answers"][0]["robot"] == "arm"
    assert not answer["answers"][0]["acknowledged"] and "no answer within" in answer["answers"][0]["detail"]
    ((action, robot, answers),) = page.actions
    assert action == "estop" and robot is None and answers[0].robot == "arm"


def test_the_event_stream_sends_each_new_state(page):
    connection = http.client.HTTPConnection("127.0.0.1", page.port, timeout=10)
    connection.request("GET", "/events", headers={"Host": f"127.0.0.1:{page.port}"})
    response = connection.getresponse()
    assert response.headers["Content-Type"] == "text/event-stream"
    seen = []
    while len(seen) < 3:  # the latest state at once, then each one published
        line = response.fp.readline().decode()
        if line.startswith("data: "):
            seen.append(json.loads(line[6:]))
            page.server.publish({**page.state, "elapsed_s": len(seen) + 1.0})
    connection.close()
    assert [state["elapsed_s"] for state in seen] == [1.0, 2.0, 3.0]


def test_event_streams_are_bounded(page):
    connections = []
    try:
        for _ in range(MAX_STREAMS):
            connection = http.client.HTTPConnection("127.0.0.1", page.port, timeout=10)
            connection.request("GET", "/events", headers={"Host": f"127.0.0.1:{page.port}"})
            assert connection.getresponse().status == 200
            connections.append(connection)
        assert page.request("GET", "/events")[0] == 503
    finally:
        for connection in connections:
            connection.close()


def test_with_a_token_file_every_request_needs_the_token(tmp_path):
    token_file = tmp_path / "page.token"
    token_file.write_text(GOOD_TOKEN)
    token_file.chmod(0o600)
    served = Page(OperatorPage(port=0, token_file=str(token_file)))
    try:
        assert served.request("GET", "/")[0] == 403
        assert served.request("GET", "/api/state")[0] == 403
        assert served.request("GET", f"/?token={GOOD_TOKEN}")[0] == 200
        assert served.request("GET", "/static/page.css")[0] == 200  # the assets hold no session data
        assert served.request("GET", "/events", headers={"X-Acalign-Token": "y" * 24})[0] == 403
    finally:
        served.server.close()


def test_a_port_in_use_is_bad_input(page):
    with pytest.raises(InputError, match=f"operator_page: cannot listen on 127.0.0.1:{page.port}"):
        Page(OperatorPage(port=page.port))


def status_with(ticks: int, episodes: list) -> dict:
    return {"ticks": ticks, "recent_episodes": episodes, "_age_s": 0.5, "safe": False}


def snapshot(view: SessionView, status: dict, metrics: dict | None = None) -> dict:
    return view.snapshot(
        elapsed_s=1.0,
        processes=[ProcessState("r", "controller", "running"), ProcessState("learner", "learner", "running")],
        statuses={"r": status, "learner": {"updates": 5, "alpha": 0.5, "w": float("nan")}},
        driver_stats={"r": None},
        learner_metrics=metrics,
        events=[],
    )


def test_the_view_takes_each_episode_once_across_overlapping_statuses_and_restarts():
    view = SessionView("s", ["r"], heartbeat_timeout_s=10)
    snapshot(view, status_with(100, [[40, 0.4, 1.0, 1], [90, 0.9, 2.0, 1]]))
    robot = snapshot(view, status_with(200, [[90, 0.9, 2.0, 1], [150, 1.5, 3.0, 2]]))["robots"][0]
    assert robot["episodes"] == [[1, 1.0, 1], [2, 2.0, 1], [3, 3.0, 2]]
    # A restarted controller counts its ticks from zero: its episodes are new ones.
    robot = snapshot(view, status_with(30, [[20, 0.2, 4.0, 2]]))["robots"][0]
    assert robot["episodes"][-1] == [4, 4.0, 2] and robot["episode_count"] == 4
    for tick in range(1000, 1000 + 2 * MAX_EPISODES):
        snapshot(view, status_with(tick, [[tick, 0.0, 0.0, 3]]))
    assert len(snapshot(view, status_with(5000, []))["robots"][0]["episodes"]) == MAX_EPISODES


def test_the_view_keeps_one_loss_per_learner_record_and_no_nan():
    view = SessionView("s", ["r"], heartbeat_timeout_s=10)
    for _ in range(3):
        state = snapshot(view, status_with(1, []), {"elapsed_s": 2.0, "loss/critic": 1.5})
    learner = snapshot(view, status_with(1, []), {"elapsed_s": 4.0, "loss/critic": 1.0})["learner"]
    assert learner["critic_losses"] == [[2.0, 1.5], [4.0, 1.0]] and learner["critic_loss"] == 1.0
    assert learner["w"] is None and json.dumps(state, allow_nan=False)


def test_read_last_record_skips_a_line_still_being_written(tmp_path):
    path = tmp_path / "metrics.jsonl"
    assert read_last_record(path) is None
    path.write_text('{"a": 1}\n{"a": 2}\n{"a": 3')
    assert read_last_record(path) == {"a": 2}


def test_closing_stops_the_server(page):
    page.server.close()
    assert not any(thread.name.startswith("operator-page") for thread in threading.enumerate())
    with pytest.raises(OSError):
        page.request("GET", "/")


def test_a_fault_in_building_or_consuming_the_state_is_reported_once_and_the_feed_goes_on(capsys):
    calls, consumed = [], []

    def collect():
        calls.append(1)
        if len(calls) < 3:
            raise KeyError("ticks")
        return {"n": len(calls)}

    def broken(state):
        raise ValueError("sink down")

    feed = LiveFeed(collect, [broken, consumed.append], period_s=0.01)
    feed.start()
    try:
        deadline = time.monotonic() + 10
        while len(consumed) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        feed.close()
    assert consumed[:2] == [{"n": 3}, {"n": 4}]  # the consumer after the broken one still gets every state
    err = capsys.readouterr().err
    assert err.count("the live state could not be built: KeyError: 'ticks'") == 1
    assert err.count("ValueError: sink down") == 1
