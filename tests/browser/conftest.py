"""Headless Chromium (Debian's chromium + chromium-driver) driven through Selenium WebDriver.

Selenium with Debian's chromedriver: the driver comes from the same Debian source package as the
browser, so their versions always match, and nothing is downloaded at run time (Selenium Manager is
not used when the driver's path is given; Playwright would want its own browser build, which these
machines cannot fetch). Without Chromium the tests are skipped with the reason, except under
CI=true, where scripts/test.sh installs it and its absence is a failure.

Screenshots go to pytest's temporary directory, never into the repository.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

CHROMIUM = os.environ.get("USAGEBOT_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("USAGEBOT_CHROMEDRIVER", "/usr/bin/chromedriver")
FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage", "--window-size=1280,1000")


def _missing() -> str | None:
    for path, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not (Path(path).exists() or shutil.which(path)):
            return (f"{path} not found (Debian package {package}): apt-get install chromium chromium-driver "
                    "(scripts/test.sh does it as root)")
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "the selenium package is not installed (pip install -e '.[test]')"
    return None


@pytest.fixture(scope="session")
def browser() -> Iterator[object]:
    reason = _missing()
    if reason:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true but headless Chromium is unavailable: {reason}", pytrace=False)
        pytest.skip(reason)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="usagebot-chromium-")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in (*FLAGS, f"--user-data-dir={profile}"):
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture
def shots(tmp_path: Path) -> Path:
    d = tmp_path / "screenshots"
    d.mkdir()
    return d
