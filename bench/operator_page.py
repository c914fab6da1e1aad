"""How long the operator page's E-STOP takes, from the click in a browser to the driver applying its safe action.

Runs `acalign launch FILE` (default launch/sim_eval.yaml: a MuJoCo Hopper driver and its controller, with the
policy the repository ships), opens the session's page in Debian's headless Chromium (selenium + chromedriver), and
presses the robot's E-STOP, then Clear (confirmed), `--presses` times. For each press:
- click -> latched: from just before selenium's click to the driver's own Stats saying `estopped` (one control
  client connected beforehand polls Stats every millisecond; the driver applies its safe action as the EStop
  arrives, before it answers, so this bounds the time to the first safe action from above);
- exchange: the `in X ms` of the page's answer line (operator.ask_drivers: from the request leaving to the
  driver's acknowledgement);
- click -> answer on the page: the page's own measurement, from its click handler to the answer drawn.

    python bench/operator_page.py [--launch launch/sim_eval.yaml] [--presses 10]

Prints medians and maxima in ms and writes bench/out/operator_page.json.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from acalign_robot.wire import protocol as p
from acalign_robot.wire.transport import ZmqControlClient

CLI = [sys.executable, "-m", "acalign_robot.cli"]
OUT = Path(__file__).parent / "out" / "operator_page.json"


def wait(predicate, timeout_s: float, what: str, interval_s: float = 0.05):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval_s)
    raise SystemExit(f"timed out after {timeout_s} s waiting for {what}")


def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1500,1100"):
        options.add_argument(argument)
    return webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)


def estopped(client: ZmqControlClient) -> bool:
    reply = client.request(p.Stats(source="bench", values={}), 5.0)
    return bool(reply.values["estopped"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--launch", default="launch/sim_eval.yaml")
    parser.add_argument("--presses", type=int, default=10)
    args = parser.parse_args()
    if not (shutil.which("chromium") and shutil.which("chromedriver")):
        raise SystemExit("needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)")
    from selenium.webdriver.common.by import By

    work = Path(tempfile.mkdtemp(prefix="operator-page-"))
    overrides = [f"output_dir={work}", "duration_s=600", "controller.episodes=100000"]
    launch = subprocess.Popen(
        [*CLI, "launch", args.launch, *[item for o in overrides for item in ("--set", o)]],
        stdout=open(work / "launch.log", "w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    page = None
    rows = []
    try:
        url_file = wait(lambda: next(work.glob("*/*/page.url"), None), 120, "the page")
        robot = yaml.safe_load((url_file.parent / "session.yaml").read_text())["robots"][0]
        page = browser()
        page.get(url_file.read_text().strip())
        card = f'article[data-robot="{robot["name"]}"]'
        wait(lambda: page.find_elements(By.CSS_SELECTOR, f"{card} [data-field=safety]"), 120, "the robot's card")
        wait(lambda: page.find_element(By.CSS_SELECTOR, f"{card} [data-field=safety]").text == "RUNNING", 60, "run")
        result = page.find_element(By.ID, "action-result")
        with ZmqControlClient(robot["control_endpoint"]) as client:
            for _ in range(args.presses):
                button = page.find_element(By.CSS_SELECTOR, f'{card} button[data-action="estop"]')
                clicked = time.monotonic()
                button.click()
                wait(lambda: estopped(client), 5, "the e-stop", interval_s=0.001)
                latched_ms = 1000 * (time.monotonic() - clicked)
                wait(lambda: "estop acknowledged" in result.text, 5, "the page's answer")
                exchange_ms, answer_ms = _times(result.text)
                rows.append(
                    {"click_to_latched_ms": latched_ms, "exchange_ms": exchange_ms, "click_to_answer_ms": answer_ms}
                )
                page.find_element(By.CSS_SELECTOR, f'{card} button[data-action="clear"]').click()
                page.find_element(By.ID, "confirm-yes").click()
                wait(lambda: not estopped(client), 5, "the clear")
                time.sleep(0.5)
    finally:
        if page is not None:
            page.quit()
        if launch.poll() is None:
            os.killpg(launch.pid, signal.SIGTERM)
        launch.wait(timeout=120)
    summary = {
        key: {"median_ms": statistics.median(r[key] for r in rows), "max_ms": max(r[key] for r in rows)}
        for key in rows[0]
    }
    for key, values in summary.items():
        print(f"{key:22s} median {values['median_ms']:7.1f} ms   max {values['max_ms']:7.1f} ms")
    OUT.parent.mkdir(exist_ok=True)
    load = os.getloadavg()
    OUT.write_text(json.dumps({"launch": args.launch, "presses": rows, "summary": summary, "loadavg": load}, indent=1))
    print(f"{len(rows)} presses, load average {load[0]:.1f}; wrote {OUT}")


def _times(text: str) -> tuple[float, float]:
    """(the exchange's ms, the page's click-to-answer ms) from the page's answer lines."""
    exchange = re.search(r"acknowledged in ([\d.]+) ms", text)
    answer = re.search(r"\(([\d.]+) ms from the click", text)
    return float(exchange.group(1)), float(answer.group(1))


if __name__ == "__main__":
    main()
