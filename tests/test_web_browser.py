"""The local page in a real browser: Debian's chromium, headless, driven by selenium through
Debian's chromedriver (nothing is downloaded at test time), on a running agent with the person
model on bikes.mp4: the live view is an image that is not blank and changes, an event shows up
in the list with its snapshot, and a screenshot is saved (``out/test-artifacts/web-page.png``, or
``$TEST_ARTIFACTS``; docs/web-page.png is its small copy)."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from tests.conftest import ROOT
from tests.web_helpers import (
    BIKES,
    FACE,
    WebAgent,
    person_on_bikes,
    wait_for,
    web_agent,
)

PACKAGES = ("chromium", "chromium-driver")  # Debian's names


def _binaries() -> tuple[str, str] | None:
    browser, driver = shutil.which("chromium"), shutil.which("chromedriver")
    return (browser, driver) if browser and driver else None


def _install() -> tuple[str, str]:
    """Debian's chromium and its driver: installed with apt-get when root (as scripts/test does
    for mosquitto), else the test skips saying what to install."""
    found = _binaries()
    if found is None and os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], check=False, env=env, capture_output=True)
        subprocess.run(["apt-get", "install", "-y", "-qq", *PACKAGES], check=False, env=env,
                       capture_output=True)
        found = _binaries()
    if found is None:
        pytest.skip(f"chromium and chromedriver are not installed: apt-get install {' '.join(PACKAGES)}")
    return found


def artifacts() -> Path:
    folder = Path(os.environ.get("TEST_ARTIFACTS", ROOT / "out" / "test-artifacts"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="module")
def page(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebAgent]:
    folder = tmp_path_factory.mktemp("web-browser")
    config = person_on_bikes(0.6, [[0.0, 0.0], [0.25, 0.0], [0.25, 0.2], [0.0, 0.2]])
    with web_agent(folder, config) as running:
        yield running


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    chromium, chromedriver = _install()
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in (
        "--headless=new",
        "--no-sandbox",  # root in a container has no user namespace for the sandbox
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1280,860",
        # the browser talks to the agent only: no updates, sync, metrics or safe browsing
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--no-default-browser-check",
        f"--user-data-dir={tmp_path_factory.mktemp('chromium')}",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(executable_path=chromedriver))
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def _png(data: bytes) -> np.ndarray:
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert image is not None
    return image


def _green_pixels(image: np.ndarray) -> int:
    """Pixels of the boxes' green (0, 200, 0)."""
    b, g, r = (image[..., i].astype(int) for i in range(3))
    return int(((g > 150) & (b < 90) & (r < 90)).sum())


def test_the_page_shows_a_live_view_that_changes_and_events_with_snapshots(
    page: WebAgent, browser: Any
) -> None:
    from selenium.webdriver.common.by import By

    browser.get(f"http://127.0.0.1:{page.port}/")

    def loaded(selector: str) -> Any:
        found = browser.find_elements(By.CSS_SELECTOR, selector)
        ready = [e for e in found if browser.execute_script(
            "return arguments[0].complete && arguments[0].naturalWidth > 0", e)]
        return ready[0] if ready else None

    live = wait_for(lambda: loaded("img.live"), 60, "live view in the page", page.process)
    assert browser.execute_script("return arguments[0].naturalWidth", live) == 640
    first = _png(live.screenshot_as_png)
    assert first.std() > 20, "the live view is blank"

    def changed() -> bool:
        later = _png(live.screenshot_as_png)
        return later.shape == first.shape and float(np.abs(later.astype(int) - first).mean()) > 2

    wait_for(changed, 60, "a change in the live view", page.process)

    snapshot = wait_for(lambda: loaded("#events li img"), 90, "event with its snapshot",
                        page.process)
    item = snapshot.find_element(By.XPATH, "..")
    assert "person" in item.text and "main" in item.text
    assert _png(snapshot.screenshot_as_png).std() > 10
    wait_for(lambda: "online" in browser.find_element(By.ID, "state").text, 10, "online state")
    assert "person" in browser.find_element(By.ID, "model").text

    # for the screenshot (README's picture): a moment with a box in the live view, if one comes
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and _green_pixels(_png(live.screenshot_as_png)) < 400:
        time.sleep(0.3)
    folder = artifacts()
    browser.save_screenshot(str(folder / "web-page.png"))
    shot = cv2.imread(str(folder / "web-page.png"))
    assert shot.std() > 10
    # the small copy for README (docs/web-page.png): the page without the blank below it, 0.6x,
    # 32 levels a channel (PNG then compresses the photo to under 100 KB)
    rows = np.flatnonzero((shot < 250).any(axis=(1, 2)))
    small = cv2.resize(shot[: rows.max() + 12], None, fx=0.6, fy=0.6, interpolation=cv2.INTER_AREA)
    cv2.imwrite(str(folder / "web-page-small.png"), (small >> 3) << 3,
                [cv2.IMWRITE_PNG_COMPRESSION, 9])


TOKEN = "browser-token-0123456789abcdef"


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebAgent]:
    folder = tmp_path_factory.mktemp("web-browser-token")
    config = {
        "source": {"uri": str(BIKES), "fps": 5, "loop": True},
        "model": {"path": str(FACE)},
        "events": {"enabled": False},
    }
    with web_agent(folder, config, token=TOKEN, listen_host="0.0.0.0") as running:
        yield running


def test_with_a_token_the_page_asks_for_it_once_and_then_shows_the_cameras(
    guarded: WebAgent, browser: Any
) -> None:
    from selenium.webdriver.common.by import By

    def live_loaded() -> bool:
        return bool(browser.execute_script(
            "const i = document.querySelector('img.live');"
            "return !!i && i.complete && i.naturalWidth === 640"))

    browser.get(f"http://127.0.0.1:{guarded.port}/")
    browser.execute_script("sessionStorage.clear()")
    browser.refresh()
    form = wait_for(lambda: browser.find_element(By.ID, "login").is_displayed(), 30,
                    "the token form")
    assert form and not live_loaded()
    browser.find_element(By.ID, "token").send_keys(TOKEN)
    browser.find_element(By.CSS_SELECTOR, "#login button").click()
    wait_for(live_loaded, 30, "the live view after the token", guarded.process)
    # handed over in the address: the fragment, never sent to the server, is dropped at once
    browser.execute_script("sessionStorage.clear()")
    browser.get("about:blank")  # a fresh start of the page, as a link opens it
    browser.get(f"http://127.0.0.1:{guarded.port}/#token={TOKEN}")
    wait_for(live_loaded, 30, "the live view with the token from the address", guarded.process)
    assert "#token" not in browser.current_url
    assert not browser.find_element(By.ID, "login").is_displayed()
