"""The upload page as a person meets it: Debian's Chromium, driven by Selenium, against the running system."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from selenium import webdriver
from selenium.common.exceptions import TimeoutException
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.chrome.webdriver import WebDriver
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import WebDriverWait

from launcher.system import System

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
RESULT_WAIT_S = 60
SETTLED = ("done", "failed", "refused")
NOT_A_PHOTO = b"this is a text file with a .jpg name, not a photo\n"

# Installed before the page's scripts: remembers every EventSource, so the test can see that each is closed.
TRACK_EVENT_SOURCES = """
window.__sources = [];
const NativeEventSource = window.EventSource;
window.EventSource = class extends NativeEventSource {
  constructor(...args) { super(...args); window.__sources.push(this); }
};
"""


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[WebDriver]:
    """Headless Chromium with its console log kept; quit when the test ends."""
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    if missing:
        pytest.fail(
            f"{', '.join(missing)} not installed: `make test` installs Chromium and its driver "
            "(scripts/ensure-system-packages.sh test, Debian packages chromium and chromium-driver)"
        )
    options = Options()
    options.binary_location = str(CHROMIUM)
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
        "--window-size=1280,900",
    ):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        driver.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": TRACK_EVENT_SOURCES})
        yield driver
    finally:
        driver.quit()


def test_page_classifies_chosen_photos_live_refuses_a_non_image_and_takes_feedback(
    *,
    running_system: System,
    browser: WebDriver,
    tmp_path: Path,
    output_dir: Path,
    photos: dict[str, bytes],
    expected_labels: dict[str, set[str]],
) -> None:
    paths = write_files(
        tmp_path,
        {
            "chelsea.jpg": photos["chelsea"],
            "coffee.jpg": photos["coffee"],
            "bad.jpg": NOT_A_PHOTO,
        },
    )
    browser.get(running_system.api_url + "/")
    assert browser.find_element(By.ID, "results").get_attribute("aria-live") == "polite"
    browser.find_element(By.TAG_NAME, "body").send_keys(Keys.TAB)
    assert browser.switch_to.active_element.get_attribute("id") == "file", "Tab reaches the drop zone's input"
    assert not browser.find_element(By.ID, "submit").is_displayed(), "with JavaScript, choosing uploads"

    browser.find_element(By.ID, "file").send_keys("\n".join(paths))
    cards = wait_for_settled_cards(browser, 3)

    for photo in ("chelsea", "coffee"):
        card = cards[f"{photo}.jpg"]
        label = card.get_attribute("data-label")
        assert card.get_attribute("data-status") == "done", card.text
        assert label in expected_labels[photo], card.text
        state = card.find_element(By.CLASS_NAME, "state").text
        assert label.replace("_", " ").lower() in state.lower(), state
        assert state.endswith("%"), state
        top = card.find_elements(By.CSS_SELECTOR, ".top li")
        assert len(top) == 5, card.text
        assert all("%" in li.text for li in top), card.text
        thumb = card.find_element(By.CLASS_NAME, "thumb")
        assert (thumb.get_attribute("src") or "").startswith("blob:")
        assert browser.execute_script("return arguments[0].naturalWidth", thumb) > 0, "the thumbnail shows"

    refused = cards["bad.jpg"]
    reason = api_reason(running_system, "bad.jpg", NOT_A_PHOTO)
    assert refused.get_attribute("data-status") == "refused"
    assert reason in refused.find_element(By.CLASS_NAME, "state").text, (reason, refused.text)

    # The models panel: how each model does on live traffic, from the sink's GET /v1/models.
    panel = browser.find_element(By.ID, "models")
    WebDriverWait(browser, 30).until(lambda _: panel.is_displayed())
    rows = [
        [td.text for td in tr.find_elements(By.TAG_NAME, "td")]
        for tr in panel.find_elements(By.CSS_SELECTOR, "tbody tr")
    ]
    primary = [row for row in rows if row[0] == "primary"]
    assert primary and primary[0][1].startswith("efficientnet-lite0"), rows
    assert int(primary[0][2]) >= 2 and primary[0][5].endswith("ms"), rows

    send_feedback(browser, cards["chelsea.jpg"], "a lynx, surely")
    sources = browser.execute_script("return window.__sources.map((s) => [s.url, s.readyState])")
    assert sources, "the page follows the results by EventSource"
    assert all(state == 2 for _url, state in sources), f"every EventSource is closed: {sources}"
    assert all(url.startswith(f"http://localhost:{running_system.sink_port}/") for url, _ in sources), sources
    assert "2 photos classified, 1 refused" in browser.find_element(By.ID, "status").text

    screenshot(browser, output_dir / "browser-page.png")
    errors = console_errors(browser, allowed=("/v1/images", "400"))
    assert not errors, errors


def test_page_works_from_the_localhost_origin_too(
    running_system: System, browser: WebDriver, tmp_path: Path, photos: dict[str, bytes]
) -> None:
    """The results service is on another port either way; CORS allows both names of the API's origin."""
    browser.get(f"http://localhost:{running_system.api_port}/")
    paths = write_files(tmp_path, {"cup.jpg": photos["coffee"]})
    browser.find_element(By.ID, "file").send_keys("\n".join(paths))
    card = wait_for_settled_cards(browser, 1)["cup.jpg"]
    assert card.get_attribute("data-label") == "espresso", card.text
    assert not console_errors(browser, allowed=())


def write_files(folder: Path, files: dict[str, bytes]) -> list[str]:
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return [str(folder / name) for name in files]


def wait_for_settled_cards(browser: WebDriver, count: int) -> dict[str, WebElement]:
    """Wait until `count` cards have their outcome; return them by file name."""

    def settled(driver: WebDriver) -> list[WebElement] | bool:
        cards = driver.find_elements(By.CSS_SELECTOR, "#results .card")
        done = len(cards) == count and all(c.get_attribute("data-status") in SETTLED for c in cards)
        return cards if done else False

    try:
        cards = WebDriverWait(browser, RESULT_WAIT_S, poll_frequency=0.2).until(settled)
    except TimeoutException as e:
        page = browser.find_element(By.ID, "results").text
        raise AssertionError(f"no outcome on every card after {RESULT_WAIT_S} s; the page:\n{page}") from e
    assert isinstance(cards, list)
    return {card.find_element(By.CLASS_NAME, "name").text: card for card in cards}


def api_reason(system: System, name: str, data: bytes) -> str:
    """What the API itself says of this file, so the test checks that the page shows the API's words."""
    response = httpx.post(f"{system.api_url}/v1/images", files={"file": (name, data)}, timeout=30)
    assert response.status_code == 400, response.text
    reason: str = response.json()["reason"]
    return reason


def send_feedback(browser: WebDriver, card: WebElement, text: str) -> None:
    card.find_element(By.CSS_SELECTOR, ".feedback summary").click()
    card.find_element(By.NAME, "report").send_keys(text)
    card.find_element(By.CSS_SELECTOR, ".feedback button").click()
    said = card.find_element(By.CLASS_NAME, "feedback-state")
    WebDriverWait(browser, 15).until(lambda _d: said.text)
    assert said.text.startswith("Feedback sent"), said.text


def screenshot(browser: WebDriver, path: Path) -> None:
    """The whole page, as a person would see it in a window that tall."""
    for _ in range(2):  # the window's size includes its frame: grow it until the viewport holds the page
        missing = browser.execute_script("return document.documentElement.scrollHeight - window.innerHeight")
        if int(missing) <= 0:
            break
        size = browser.get_window_size()
        browser.set_window_size(size["width"], size["height"] + int(missing) + 16)
    browser.execute_script("window.scrollTo(0, 0)")
    assert browser.save_screenshot(str(path)), path


def console_errors(browser: WebDriver, allowed: tuple[str, ...]) -> list[dict[str, Any]]:
    """Console errors, but the one the test causes on purpose (a message containing every `allowed` part)."""
    log: list[dict[str, Any]] = browser.get_log("browser")  # type: ignore[no-untyped-call]
    errors = [entry for entry in log if entry["level"] == "SEVERE"]
    return [e for e in errors if not (allowed and all(part in e["message"] for part in allowed))]
