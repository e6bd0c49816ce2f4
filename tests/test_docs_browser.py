"""The documentation site in a real browser (headless chromium): the built site, served over
loopback, shows its navigation, finds a page by search, and renders a highlighted code block
with its copy button; nothing is fetched from another host. Set
PIXELWATCH_DOCS_SCREENSHOTS=DIR to keep the three pages' screenshots there."""

import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Final

import pytest
import yaml
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver

from browser_harness import wait

REPO: Final = Path(__file__).resolve().parents[1]
MKDOCS: Final = Path(sys.executable).parent / "mkdocs"


class QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # the base class's signature
        pass


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The site as `make docs` builds it, served on a free loopback port; its base URL."""
    root = tmp_path_factory.mktemp("site")
    result = subprocess.run(
        [str(MKDOCS), "build", "--strict", "--site-dir", str(root)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert result.returncode == 0, result.stderr
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(QuietHandler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


def nav_titles() -> list[str]:
    """The top-level titles of mkdocs.yml's nav, as the sidebar should list them."""
    nav = yaml.safe_load((REPO / "mkdocs.yml").read_text())["nav"]
    return [next(iter(entry)) for entry in nav]


def open_page(browser: WebDriver, url: str) -> None:
    browser.get(url)
    wait(browser, lambda b: b.execute_script("return document.readyState") == "complete")


def screenshot(browser: WebDriver, name: str, tmp_path: Path) -> None:
    path = tmp_path / f"{name}.png"
    assert browser.save_screenshot(str(path))
    assert path.stat().st_size > 10_000, f"{name}: an all but empty screenshot"
    keep = os.environ.get("PIXELWATCH_DOCS_SCREENSHOTS")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(keep) / path.name)


def only_loopback_was_fetched(browser: WebDriver, site: str) -> None:
    fetched = browser.execute_script(
        "return performance.getEntriesByType('resource').map((e) => e.name)"
    )
    assert fetched, "the page loaded no resource at all"
    assert [u for u in fetched if not u.startswith(site)] == []


def test_the_home_page_shows_the_navigation_and_the_anomaly_page_picture(
    browser: WebDriver, site: str, tmp_path: Path
) -> None:
    open_page(browser, site)
    links = browser.find_elements(
        By.CSS_SELECTOR, "nav.md-nav--primary > ul > li > a, nav.md-nav--primary > ul > li > label"
    )
    shown = [link.text.strip() for link in links if link.is_displayed()]
    assert shown == nav_titles()
    picture = browser.find_element(By.CSS_SELECTOR, "article img[src$='anomaly-page.png']")
    assert picture.is_displayed()
    # Loaded and decoded, not a broken-image icon.
    assert browser.execute_script("return arguments[0].naturalWidth", picture) > 500
    only_loopback_was_fetched(browser, site)
    screenshot(browser, "home", tmp_path)


def test_search_finds_the_runbooks_on_the_operations_page(
    browser: WebDriver, site: str, tmp_path: Path
) -> None:
    open_page(browser, site + "getting-started/")
    browser.find_element(By.CSS_SELECTOR, "label.md-search__icon, input.md-search__input").click()
    box = browser.find_element(By.CSS_SELECTOR, "input.md-search__input")
    wait(browser, lambda b: box.is_displayed())
    box.send_keys("PixelwatchDeadLetters")

    # The results list is rendered again as the search settles: read it in one script, so
    # that no element read can go stale between finding and reading it.
    def results(b: WebDriver) -> list[str]:
        hrefs: list[str] = b.execute_script(
            "return [...document.querySelectorAll('.md-search-result__item a')].map(a => a.href)"
        )
        return hrefs

    hrefs = wait(browser, results, timeout=60)
    assert any("operations/#pixelwatchdeadletters" in h for h in hrefs), hrefs
    screenshot(browser, "search", tmp_path)

    def open_operations(b: WebDriver) -> bool:
        try:
            found = b.find_elements(By.CSS_SELECTOR, ".md-search-result__item a")
            first = next(a for a in found if "operations/" in (a.get_attribute("href") or ""))
            first.click()
        except StaleElementReferenceException:
            return False  # rendered again meanwhile: find it anew
        return True

    wait(browser, open_operations)
    wait(browser, lambda b: "/operations/" in b.current_url)
    assert browser.find_element(By.CSS_SELECTOR, "article h1").text == "Operations"


def test_a_code_block_renders_highlighted_with_a_copy_button(
    browser: WebDriver, site: str, tmp_path: Path
) -> None:
    open_page(browser, site + "examples/")
    blocks = browser.find_elements(By.CSS_SELECTOR, "article div.highlight pre code")
    [block] = [b for b in blocks if "new KafkaProducer<>" in b.text]  # the Java example
    browser.execute_script("arguments[0].scrollIntoView()", block)
    assert block.is_displayed()
    # Highlighted: the code is split into coloured tokens, not one plain run of text.
    tokens = block.find_elements(By.CSS_SELECTOR, "span[class]")
    assert len(tokens) > 20
    colours = {t.value_of_css_property("color") for t in tokens[:200]}
    assert len(colours) >= 3, colours
    copy = block.find_element(
        By.XPATH, "ancestor::div[contains(@class, 'highlight')]//button[@data-md-type='copy']"
    )
    assert (copy.get_attribute("data-clipboard-target") or "").endswith("> code")
    # The sidebar marks this page as the one shown.
    active = browser.find_elements(By.CSS_SELECTOR, "nav.md-nav--primary .md-nav__link--active")
    assert [a.text.strip() for a in active if a.is_displayed()] == ["Sending images"]
    only_loopback_was_fetched(browser, site)
    screenshot(browser, "examples", tmp_path)
