"""Open a clue explorer in headless Chromium and take a screenshot: `python -m gemkr_lab.report.browser PAGE --out PNG`.

Uses Debian's `chromium` and `chromium-driver` packages (`apt-get install -y chromium chromium-driver`) driven
by selenium (the dev extra), with the Debian chromedriver passed explicitly: nothing is downloaded (selenium's
own driver manager would try to). Run as root, Chromium needs `--no-sandbox`; `--disable-dev-shm-usage` keeps
it working where /dev/shm is small (containers).
"""

import argparse
import shutil
import sys
from pathlib import Path

from gemkr_lab.io import write_bytes

CHROMEDRIVER = "/usr/bin/chromedriver"
CHROMIUM = "/usr/bin/chromium"
INSTALL = "apt-get install -y chromium chromium-driver (and pip install selenium: the dev extra)"


def browser_missing() -> str | None:
    """Why headless Chromium cannot be driven here, or None when it can."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return f"selenium is not installed; {INSTALL}"
    for path in (CHROMIUM, CHROMEDRIVER):
        if not Path(path).is_file() and not shutil.which(Path(path).name):
            return f"{path} is missing; {INSTALL}"
    return None


def chromium(width: int = 1400, height: int = 1000):
    """A headless Chromium WebDriver (quit it when done)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    missing = browser_missing()
    if missing:
        raise RuntimeError(missing)
    options = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--hide-scrollbars"):
        options.add_argument(arg)
    options.add_argument(f"--window-size={width},{height}")
    options.binary_location = shutil.which("chromium") or CHROMIUM
    return webdriver.Chrome(service=Service(shutil.which("chromedriver") or CHROMEDRIVER), options=options)


def open_explorer(driver, page: str | Path, timeout: float = 30.0) -> None:
    """Load an explorer page from disk and wait until it has rendered its first page of queries."""
    driver.get(Path(page).resolve().as_uri())
    wait_ready(driver, timeout)


def wait_ready(driver, timeout: float = 30.0) -> None:
    """Wait until the page has applied its filters and rendered (body[data-ready=true])."""
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, timeout).until(lambda d: d.execute_script("return document.body.dataset.ready") == "true")


def choose(driver, select_id: str, value: str) -> None:
    """Pick an option of one of the page's selects by value (fires its change event)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    select = Select(driver.find_element(By.ID, select_id))
    if select.first_selected_option.get_attribute("value") == value:
        return  # no change event would come
    driver.execute_script("document.body.dataset.ready = 'false'")
    select.select_by_value(value)
    wait_ready(driver)


def full_page_screenshot(driver, out: str | Path, max_height: int = 6000) -> Path:
    """Save a PNG of the whole page, not only the window (up to `max_height` CSS pixels tall), via Chromium's CDP."""
    import base64

    size = driver.execute_cdp_cmd("Page.getLayoutMetrics", {})["cssContentSize"]
    clip = {"x": 0, "y": 0, "width": size["width"], "height": min(size["height"], max_height), "scale": 1}
    shot = driver.execute_cdp_cmd(
        "Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True, "clip": clip}
    )
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_bytes(out, base64.b64decode(shot["data"]))
    return out


def main(argv: list[str] | None = None) -> int:
    """Screenshot an explorer page, optionally with the comparison filter set."""
    parser = argparse.ArgumentParser(prog="python -m gemkr_lab.report.browser", description=__doc__)
    parser.add_argument("page", help="the explorer's index.html")
    parser.add_argument("--out", required=True, help="PNG to write")
    parser.add_argument("--compare", default="all", choices=["all", "a-not-b", "b-not-a", "both", "neither"])
    parser.add_argument("--cell-a", help="cell A (default: the sweep's reference)")
    parser.add_argument("--cell-b", help="cell B")
    parser.add_argument("--page-size", default="10", choices=["10", "25", "50", "100"])
    parser.add_argument("--width", type=int, default=1600)
    args = parser.parse_args(argv)
    missing = browser_missing()
    if missing:
        print(f"error: {missing}", file=sys.stderr)
        return 2
    driver = chromium(args.width)
    try:
        open_explorer(driver, args.page)
        for select_id, value in (("cell-a", args.cell_a), ("cell-b", args.cell_b), ("compare", args.compare)):
            if value:
                choose(driver, select_id, value)
        choose(driver, "page-size", args.page_size)
        print(f"{full_page_screenshot(driver, args.out)}")
    finally:
        driver.quit()
    return 0


if __name__ == "__main__":
    sys.exit(main())
