"""Debian's Chromium, headless, driven through its own chromedriver by Selenium: for the
studio's tests and its latency benchmark. Nothing is downloaded: both come from Debian."""

from __future__ import annotations

import shutil
from pathlib import Path

from tests.servers import missing

# what a closed network and a fresh machine need: no sandbox as root, no GPU, no calls home
FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage", "--window-size=1280,900")


def chromium(profile: Path, downloads: Path | None = None):
    """A fresh Chromium (its own --user-data-dir) that saves downloads into `downloads`."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver") or next((p for p in ("/usr/bin/chromedriver",) if Path(p).exists()), None)
    if not binary or not driver:
        missing("Chromium and its driver", "Debian: apt-get install chromium chromium-driver")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in (*FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    if downloads is not None:
        options.add_experimental_option("prefs", {"download.default_directory": str(downloads),
                                                  "download.prompt_for_download": False})
    return webdriver.Chrome(service=Service(driver), options=options)
