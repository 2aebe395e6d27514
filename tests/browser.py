"""A real headless Chromium for the dashboard tests: Debian's `chromium`, driven by Selenium through
Debian's `chromium-driver`.

Why Selenium with Debian's driver rather than Playwright: Debian builds `chromium` and `chromium-driver`
from one source package, so the driver always speaks the installed browser's protocol, and both come
from apt like any other system package. Playwright's Python package pins the browser build it drives;
launched on a system Chromium of another version it may fail in ways no test here could fix, and its
own browser would be a download at run time. Selenium is told where the browser and the driver are, so
its driver manager (which would download them) never runs.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

PACKAGES = ("chromium", "chromium-driver")
APT_TIMEOUT_SECONDS = 900


def browser_paths() -> tuple[str, str] | None:
    """(chromium, chromedriver) when both are installed."""
    browser, driver = shutil.which("chromium"), shutil.which("chromedriver")
    return (browser, driver) if browser and driver else None


def install_chromium() -> tuple[str, str]:
    """Debian's chromium and chromium-driver, installed with apt-get when missing; fails the test run with
    what to do when apt cannot install them."""
    found = browser_paths()
    if found:
        return found
    if shutil.which("apt-get") is None:
        pytest.fail(
            f"no chromium here and no apt-get to install it; install {' and '.join(PACKAGES)} (Debian packages)"
        )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    steps = [["apt-get", "update"], ["apt-get", "install", "-y", "--no-install-recommends", *PACKAGES]]
    for step in steps:
        try:
            done = subprocess.run(step, env=env, capture_output=True, text=True, timeout=APT_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            pytest.fail(f"`{' '.join(step)}` took over {APT_TIMEOUT_SECONDS} s; install {' '.join(PACKAGES)} by hand")
        if done.returncode != 0:
            pytest.fail(
                f"`{' '.join(step)}` failed (exit {done.returncode}), so the dashboard's browser test cannot run; "
                f"install {' and '.join(PACKAGES)} with apt-get as root (apt needs to reach Debian's "
                f"mirrors):\n{done.stderr[-2000:]}"
            )
    found = browser_paths()
    if found is None:
        pytest.fail(f"apt-get installed {' '.join(PACKAGES)} but chromium or chromedriver is not on PATH")
    return found


@contextmanager
def headless_chromium(browser: str, driver: str, log_path: Path) -> Iterator:
    """A Selenium session on a fresh headless Chromium profile, its console kept for `console_errors`."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = browser
    # --no-sandbox: Chromium's sandbox refuses to start as root, which tests and CI run as here.
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1100"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    session = webdriver.Chrome(options=options, service=Service(executable_path=driver, log_output=str(log_path)))
    try:
        yield session
    finally:
        session.quit()


def console_errors(session) -> list[str]:
    """The console's errors since the last call (a script error, a CSP violation, an image that failed)."""
    return [entry["message"] for entry in session.get_log("browser") if entry["level"] == "SEVERE"]
