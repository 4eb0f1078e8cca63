"""Headless Chromium for the tests (Debian's `chromium` and `chromium-driver`, installed by
.ci/run), through Selenium: open a page, wait for its Plotly charts, read back what they
draw, and record every console error and every request that leaves the page's folder."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By

CHARTS = """
return Array.from(document.querySelectorAll('.js-plotly-plot')).map(gd => ({
  id: gd.id,
  drawn: !!gd._fullLayout && gd.querySelectorAll('g.trace, g.hm').length > 0,
  traces: (gd.data || []).map(t => ({
    name: t.name === undefined ? null : t.name, type: t.type || 'scatter',
    x: t.x ? Array.from(t.x) : null, y: t.y ? Array.from(t.y) : null,
    z: t.z ? Array.from(t.z, row => row ? Array.from(row) : row) : null,
    customdata: t.customdata ? Array.from(t.customdata) : null}))
}));
"""
READY = """
const plots = document.querySelectorAll('.js-plotly-plot');
return window.Plotly !== undefined && document.readyState === 'complete'
  && Array.from(plots).every(gd => gd._fullLayout);
"""


class Browser:
    def __init__(self, width: int = 1280, height: int = 1000) -> None:
        chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
        assert chromium and driver, \
            "chromium and chromedriver not found: apt-get install chromium chromium-driver"
        options = webdriver.ChromeOptions()
        options.binary_location = chromium
        for arg in ("--headless=new", "--no-sandbox", "--disable-gpu",
                    "--disable-dev-shm-usage", f"--window-size={width},{height}",
                    "--allow-file-access-from-files"):
            options.add_argument(arg)
        options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
        self.driver = webdriver.Chrome(service=Service(driver), options=options)
        self.width = width
        self.errors: list[str] = []  # console errors, on any page
        self.outside: list[str] = []  # requests to anything but the page's own folder
        self.folder = ""

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc: object) -> None:
        self.driver.quit()

    def open(self, path: Path) -> dict[str, dict]:
        self.folder = path.resolve().parent.parent.as_uri()
        self.driver.get(path.resolve().as_uri())
        return self._charts()

    def follow(self, text: str) -> dict[str, dict]:
        """Click the link that reads `text`; the charts of the page it opens."""
        self.driver.find_element(By.LINK_TEXT, text).click()
        return self._charts()

    def _charts(self, timeout: float = 30) -> dict[str, dict]:
        deadline = time.monotonic() + timeout
        while not self.driver.execute_script(READY):
            assert time.monotonic() < deadline, "the page's charts never finished drawing"
            time.sleep(0.1)
        self._logs()
        return {c["id"]: c for c in self.driver.execute_script(CHARTS)}

    def _logs(self) -> None:
        for entry in self.driver.get_log("browser"):
            if entry["level"] in ("SEVERE", "ERROR"):
                self.errors.append(entry["message"])
        for entry in self.driver.get_log("performance"):
            message = json.loads(entry["message"])["message"]
            if message["method"] == "Network.requestWillBeSent":
                url = message["params"]["request"]["url"]
                if not (url.startswith(self.folder) or url.startswith(("data:", "blob:"))):
                    self.outside.append(url)

    def links(self, selector: str) -> list[str]:
        return [a.text for a in self.driver.find_elements(By.CSS_SELECTOR, selector)]

    def column(self, table: str, name: str) -> list[str]:
        return [td.text for td in self.driver.find_elements(
            By.CSS_SELECTOR, f"{table} td[data-column='{name}']")]

    def fact(self, name: str) -> str:
        return self.driver.find_element(By.CSS_SELECTOR, f"[data-fact='{name}'] b").text

    def screenshot(self, path: Path) -> None:
        """The whole page, however long."""
        self.driver.set_window_size(self.width, 800)
        height = self.driver.execute_script(
            "return Math.max(document.body.scrollHeight, document.documentElement.scrollHeight,"
            " document.body.getBoundingClientRect().bottom + window.scrollY)")
        self.driver.set_window_size(self.width, min(int(height) + 60, 12000))
        # two animation frames: the resized page is laid out and painted before the shot
        self.driver.execute_async_script(
            "const done = arguments[0];"
            " requestAnimationFrame(() => requestAnimationFrame(() => done()));")
        path.parent.mkdir(parents=True, exist_ok=True)
        self.driver.save_screenshot(str(path))
        self._logs()
