"""The operator page in a real browser: Debian's headless Chromium, driven through Debian's chromedriver (selenium),
on a running sim session (MuJoCo Hopper driver, controller, learner). The page shows returns and policy versions as
they change; its E-STOP latches the driver, which the test checks through the driver's own Stats; Clear asks for
confirmation and releases it.

`ACALIGN_PAGE_SCREENSHOT=FILE` saves the page (e-stopped, with the driver's answer) as a PNG: docs/img/operator_page.png
is made that way. .ci/run installs chromium and chromium-driver; without them the test skips and says so.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time

import pytest
import yaml

from acalign_robot.wire import protocol as p
from acalign_robot.wire.transport import ZmqControlClient
from tests.helpers import acalign_command, wait_for

pytestmark = pytest.mark.integration

CHROMIUM = shutil.which("chromium")
CHROMEDRIVER = shutil.which("chromedriver")
# docs/safety.md: from selenium's click to the driver's Stats saying `estopped`, WebDriver's own round trip included
# (bench/operator_page.py: median 166 ms, worst of 10 presses 368 ms on the 2-core machine at load average 7).
ESTOP_BOUND_S = 1.0

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install -e '.[dev]')")
if CHROMIUM is None or CHROMEDRIVER is None:
    pytest.skip(
        "no browser: the operator page test needs Debian's chromium and chromium-driver "
        "(apt-get install chromium chromium-driver; .ci/run installs them)",
        allow_module_level=True,
    )


@pytest.fixture
def browser():
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM  # the system's browser: selenium must not look for (or fetch) one
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(argument)  # --no-sandbox: CI runs as root, where Chromium's sandbox refuses to start
    options.add_argument("--window-size=1500,1100")
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def stats_of(client: ZmqControlClient) -> dict:
    reply = client.request(p.Stats(source="test", values={}), 5.0)
    assert isinstance(reply, p.Stats)
    return dict(reply.values)


def text(browser, selector: str) -> str:
    from selenium.webdriver.common.by import By

    elements = browser.find_elements(By.CSS_SELECTOR, selector)
    return elements[0].text if elements else ""


def test_the_page_shows_a_live_session_and_its_estop_latches_the_driver(
    tmp_path, hopper_policy, aligned_hopper_checkpoint, browser
):
    from selenium.webdriver.common.by import By

    launch = {
        "session": "page",
        "output_dir": str(tmp_path / "sessions"),
        "duration_s": 240,
        "robots": [
            {
                "name": "hopper-0",
                "driver": {"kind": "mujoco", "env_id": "Hopper-v5"},
                "controller": {"policy": str(hopper_policy), "explore": True},
            }
        ],
        "learner": {"checkpoint": str(aligned_hopper_checkpoint), "publish_every": 50},
    }
    path = tmp_path / "page.yaml"
    path.write_text(yaml.safe_dump(launch, sort_keys=False))
    supervisor = subprocess.Popen(
        acalign_command("launch", str(path)),
        stdout=open(tmp_path / "supervisor.log", "w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        url_file = wait_for(
            lambda: next((tmp_path / "sessions" / "page").glob("*/page.url"), None), 120, "the page's address"
        )
        session_dir = url_file.parent
        browser.get(url_file.read_text().strip())
        robot = 'article[data-robot="hopper-0"]'
        wait_for(lambda: text(browser, "#connection") == "live", 120, "the page's live feed")

        # Returns and versions update: more episodes, and a policy version the learner published after the first seen.
        episodes = lambda: int(text(browser, f'{robot} [data-field="episodes"]') or 0)  # noqa: E731
        version = lambda: int(text(browser, f'{robot} [data-field="version"]').lstrip("v") or 0)  # noqa: E731
        wait_for(lambda: episodes() >= 1 and version() >= 1, 120, "the first episodes and policy version")
        first_episodes, first_version = episodes(), version()
        wait_for(lambda: version() > first_version, 120, "a new policy version on the page")
        wait_for(lambda: episodes() > first_episodes, 60, "more episodes on the page")
        # An episode ended under the new version only some time after the version itself shows: wait for its colour.
        legend = lambda: browser.find_elements(By.CSS_SELECTOR, f'{robot} [data-field="legend"] span')  # noqa: E731
        wait_for(lambda: len(legend()) >= 2, 60, "returns coloured by at least two policy versions")
        wait_for(lambda: text(browser, "#learner [data-field='updates']") not in ("", "–", "0"), 30, "learner numbers")
        assert text(browser, f'{robot} [data-field="safety"]') == "RUNNING"

        # E-stop from the page: the driver's own Stats say it applies its safe action, within the documented time.
        endpoint = yaml.safe_load((session_dir / "session.yaml").read_text())["robots"][0]["control_endpoint"]
        with ZmqControlClient(endpoint) as client:  # connected before the click: the clock measures the e-stop only
            before = stats_of(client)
            assert not before["estopped"]
            button = browser.find_element(By.CSS_SELECTOR, f'{robot} button[data-action="estop"]')
            clicked = time.monotonic()
            button.click()
            stats = wait_for(lambda: (s := stats_of(client))["estopped"] and s, ESTOP_BOUND_S, "the e-stop", 0.002)
            latched_s = time.monotonic() - clicked
            assert stats["estops"] == before["estops"] + 1
            wait_for(lambda: stats_of(client)["safe_action_steps"] > stats["safe_action_steps"], 5, "safe actions")
        print(f"e-stop from the page: the driver latched {1000 * latched_s:.1f} ms after the click")
        wait_for(lambda: text(browser, "#action-result").startswith("hopper-0: estop acknowledged in"), 5, "the answer")
        wait_for(lambda: text(browser, f'{robot} [data-field="safety"]') == "E-STOP", 10, "the page showing E-STOP")
        if os.environ.get("ACALIGN_PAGE_SCREENSHOT"):
            browser.save_screenshot(os.environ["ACALIGN_PAGE_SCREENSHOT"])

        # Clear asks first; cancelling changes nothing, confirming releases the driver and the controller's latch.
        browser.find_element(By.CSS_SELECTOR, f'{robot} button[data-action="clear"]').click()
        assert browser.find_element(By.ID, "confirm").is_displayed()
        browser.find_element(By.ID, "confirm-no").click()
        time.sleep(0.5)
        with ZmqControlClient(endpoint) as client:
            assert stats_of(client)["estopped"]
            browser.find_element(By.CSS_SELECTOR, f'{robot} button[data-action="clear"]').click()
            browser.find_element(By.ID, "confirm-yes").click()
            wait_for(lambda: not stats_of(client)["estopped"], 5, "the driver's release")
        wait_for(lambda: text(browser, "#action-result").startswith("hopper-0: clear acknowledged in"), 5, "the answer")
        wait_for(lambda: text(browser, f'{robot} [data-field="safety"]') == "RUNNING", 15, "the controller's release")
    finally:
        if supervisor.poll() is None:
            os.killpg(supervisor.pid, signal.SIGTERM)
        supervisor.wait(timeout=120)
    log = (tmp_path / "supervisor.log").read_text()
    assert supervisor.returncode == 0, log
    report = (session_dir / "report.json").read_text()
    assert "operator-page" in report  # the page's e-stop and clear are session events
