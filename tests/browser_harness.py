"""Debian's chromium, headless, driven by Selenium through Debian's chromedriver.

`make test` installs both (deploy/browser-setup.sh). Selenium is given the driver's path, so
Selenium Manager never runs and nothing is downloaded; every profile is fresh and the flags
keep the browser from calling home.
"""

from collections.abc import Callable, Iterator
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any, Final, TypeVar

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

CHROMIUM: Final = Path("/usr/bin/chromium")
CHROMEDRIVER: Final = Path("/usr/bin/chromedriver")
FLAGS: Final = (
    "--headless",
    "--no-sandbox",  # the tests run as root, where chromium's sandbox refuses to start
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--window-size=1280,960",
)

T = TypeVar("T")

# What the page shows, read in the browser: every card's texts, and its three canvases as
# RGB triples per image pixel.
READ_CARDS: Final = """
const pixels = (canvas) => {
  const data = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
  const rgb = [];
  for (let i = 0; i < data.length; i += 4) rgb.push([data[i], data[i + 1], data[i + 2]]);
  return rgb;
};
return [...document.querySelectorAll("#anomalies > li")].map((card) => {
  const text = (name) => card.querySelector("." + name).textContent;
  return {
    id: text("id"), similarity: text("similarity"), threshold: text("threshold"),
    model: text("model"), source: text("source"), time: text("time"),
    detected: text("detected"),
    sha256: card.querySelector(".model").title, topic: card.querySelector(".source").title,
    input: pixels(card.querySelector("canvas.input")),
    reconstruction: pixels(card.querySelector("canvas.reconstruction")),
    difference: pixels(card.querySelector("canvas.difference")),
  };
});
"""


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[WebDriver]:
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.is_file()]
    assert not missing, f"{missing} missing: run `make browser` (deploy/browser-setup.sh)"
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path / 'chromium-profile'}")
    service = Service(
        executable_path=str(CHROMEDRIVER), log_output=str(tmp_path / "chromedriver.log")
    )
    driver = webdriver.Chrome(service=service, options=options)
    try:
        yield driver
    finally:
        driver.quit()


def wait(browser: WebDriver, condition: Callable[[WebDriver], T], timeout: float = 90.0) -> T:
    """Poll `condition` until it returns something truthy (then return that)."""
    return WebDriverWait(browser, timeout, poll_frequency=0.2).until(condition)


def cards(browser: WebDriver) -> list[dict[str, Any]]:
    result = browser.execute_script(READ_CARDS)
    assert isinstance(result, list)
    return result


def wait_for_cards(browser: WebDriver, count: int, timeout: float = 90.0) -> list[dict[str, Any]]:
    """The cards, once there are exactly `count` of them."""
    shown: list[dict[str, Any]] = []

    def counted(b: WebDriver) -> bool:
        nonlocal shown
        shown = cards(b)
        return len(shown) == count

    wait(browser, counted, timeout)
    return shown


def text(browser: WebDriver, element_id: str) -> str:
    value = browser.execute_script(f"return document.getElementById('{element_id}').textContent")
    assert isinstance(value, str)
    return value


def js_fixed(value: float, digits: int) -> str:
    """JavaScript's `value.toFixed(digits)`: the exact binary value, ties rounded up."""
    return str(Decimal(value).quantize(Decimal(1).scaleb(-digits), rounding=ROUND_HALF_UP))


def ink(value: float) -> list[int]:
    """The page's colour for a pixel value: 1 is black, 0 white."""
    level = int(Decimal(255 * (1 - value)).quantize(Decimal(1), rounding=ROUND_HALF_UP))
    return [level, level, level]


def heat(value: float) -> list[int]:
    """The page's colour for a difference: white for none, red for 1."""
    level = int(Decimal(255 * (1 - value)).quantize(Decimal(1), rounding=ROUND_HALF_UP))
    return [255, level, level]
