"""`evs ui` in a real browser (Chromium through Selenium and chromedriver): upload a clip, change knobs, read the plan,
run a toy composition, check the measures shown and download the spec, then run that spec with `evs run` and get the
same output video, byte for byte.

Needs `chromium` and `chromedriver` on PATH (Debian: apt-get install chromium chromium-driver; .ci/run installs them).
`EVS_UI_SCREENSHOT=docs/ui.png pytest tests/test_ui_browser.py` also writes the README's screenshot.
"""

from __future__ import annotations

import os
import select
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
CLIP = REPO / "examples" / "toy" / "toy_clip_1.mp4"
PROMPT = "a yellow striped square drifting slowly left over a blue gradient"
CHROMIUM = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)
CHROMEDRIVER = shutil.which("chromedriver")
START_SECONDS, RUN_SECONDS = 90, 180  # limits on waits that end as soon as their condition holds

# CI installs Chromium (.ci/run): there a missing one fails the test instead of skipping it
pytestmark = pytest.mark.skipif(not CHROMIUM and not os.environ.get("CI"),
                                reason="no Chromium on PATH: apt-get install chromium chromium-driver")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _environment() -> dict:
    """The test's environment with this checkout first on the path, for the `evs` processes it starts."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, (str(REPO), os.environ.get("PYTHONPATH")))),
            "PYTHONUNBUFFERED": "1", "GRADIO_ANALYTICS_ENABLED": "False"}


def _served_url(process: subprocess.Popen, log: list[str]) -> str:
    """The URL `evs ui` says it serves on, read from its output as it comes; the rest of its output is kept in `log`
    (read on, so that the process never waits on a full pipe)."""
    deadline = time.monotonic() + START_SECONDS
    while time.monotonic() < deadline:
        ready, _, _ = select.select([process.stdout], [], [], deadline - time.monotonic())
        line = process.stdout.readline() if ready else ""
        if not line and process.poll() is not None:
            break
        log.append(line)
        if "Running on local URL:" in line:
            threading.Thread(target=lambda: log.extend(process.stdout), daemon=True).start()
            return line.split("URL:", 1)[1].strip()
    raise AssertionError("evs ui did not start:\n" + "".join(log))


@pytest.fixture
def served(tmp_path):
    """`evs ui` starting on a free port (the browser starts meanwhile): (its process, its output folder, its output so
    far, shown when the test fails)."""
    out, log = tmp_path / "ui", []
    process = subprocess.Popen([sys.executable, "-m", "evs_framework.cli", "ui", "--port", str(_free_port()),
                                "--output-dir", str(out), "-q"], env=_environment(), stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    try:
        yield process, out, log
    finally:
        process.terminate()
        process.wait(timeout=30)
        print("evs ui's output:\n" + "".join(log))


@pytest.fixture
def browser(tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    if not (CHROMIUM and CHROMEDRIVER):
        pytest.fail("the browser test needs Chromium and its chromedriver on PATH: apt-get install chromium "
                    "chromium-driver")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1900"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    driver.execute_cdp_cmd("Page.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)})
    driver.downloads = downloads
    try:
        yield driver
    finally:
        driver.quit()


def test_a_toy_run_in_the_browser_is_the_run_of_the_spec_it_downloads(served, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    process, out, log = served
    page = WebDriverWait(browser, START_SECONDS)

    def element(selector: str):
        return browser.find_element(By.CSS_SELECTOR, selector)

    def text_of(selector: str) -> str:
        return element(selector).text

    def set_number(selector: str, value: str) -> None:
        box = element(f"{selector} input[type=number]")
        box.send_keys(Keys.CONTROL, "a")
        box.send_keys(value, Keys.TAB)

    browser.get(_served_url(process, log))
    page.until(lambda _: "UNet calls" in text_of("#evs-plan-summary"))
    element("#evs-source input[value='upload']").click()
    page.until(lambda _: element("#evs-upload").is_displayed())

    not_a_video = tmp_path / "notes.mp4"
    not_a_video.write_text("these are notes, not a video\n")
    element("#evs-upload input[type=file]").send_keys(str(not_a_video))
    page.until(lambda _: element("#evs-message").is_displayed())
    message = element("#evs-message textarea").get_attribute("value")
    assert message.startswith("cannot read video ") and "check it is a playable video file" in message

    element("#evs-upload input[type=file]").send_keys(str(CLIP))
    page.until(lambda _: "toy_clip_1.mp4" in text_of("#evs-clip-note"))
    assert not any(box.is_displayed() for box in browser.find_elements(By.CSS_SELECTOR, "#evs-message"))
    prompt = element("#evs-prompt textarea")
    prompt.send_keys(Keys.CONTROL, "a")
    prompt.send_keys(PROMPT)
    element("#evs-composition input").click()
    element("li[role=option][aria-label='VDM']").click()
    set_number("#evs-frames", "8")
    page.until(lambda _: "vdm toyV: 4 denoising steps, 4 unet calls" in text_of("#evs-plan"))
    set_number("#evs-vdm-strength", "0.25")
    page.until(lambda _: "vdm toyV: 2 denoising steps, 2 unet calls" in text_of("#evs-plan"))
    assert "for 8 frames of 128x128" in text_of("#evs-plan-summary")
    assert "no earlier runs" in text_of("#evs-plan-summary")

    element("#evs-run").click()
    WebDriverWait(browser, RUN_SECONDS).until(lambda _: "Done" in text_of("#evs-progress"))
    page.until(lambda _: element("#evs-view video").get_attribute("src"))
    output = out / "runs" / "run-001" / "toy_clip_1.VDM.mp4"
    shown = _table(element("#evs-scores"))
    assert float(shown["temporal_flickering"][2]) == pytest.approx(_temporal_flickering(output), abs=1e-4)
    page.until(lambda _: "from 1 earlier run" in text_of("#evs-plan-summary"))  # the sidecar now estimates

    assert "evs run run-001.yaml" in text_of("#evs-reproduce")
    element("#evs-spec").click()
    spec = page.until(lambda _: _downloaded(browser.downloads, ".yaml"))
    assert spec.name == "run-001.yaml"
    _screenshot(browser, tmp_path / "ui.png")

    subprocess.run([sys.executable, "-m", "evs_framework.cli", "run", str(spec), "--output-dir",
                    str(tmp_path / "again"), "-q"], env=_environment(), check=True, capture_output=True)
    assert (tmp_path / "again" / output.name).read_bytes() == output.read_bytes()


def _table(table) -> dict[str, list[str]]:
    """A gradio Dataframe's rows (its rendered ones) by their first cell."""
    from selenium.webdriver.common.by import By

    rows = [[cell.text for cell in row.find_elements(By.CSS_SELECTOR, "[role=gridcell]")]
            for row in table.find_elements(By.CSS_SELECTOR, "[role=row].virtual-row")]
    return {row[0]: row for row in rows if row}


def _temporal_flickering(video: Path) -> float:
    from evs_framework.evaluation.metrics import ClipInfo, read_frames
    from evs_framework.plugins import load_plugins

    frames, fps = read_frames(video)
    return load_plugins().catalogue.get("metrics", "temporal_flickering").compute(frames, ClipInfo(fps, PROMPT)).value


def _downloaded(folder: Path, suffix: str) -> Path | None:
    done = [path for path in folder.iterdir() if path.suffix == suffix]
    return done[0] if done else None


def _screenshot(browser, path: Path) -> None:
    """The whole page as the run left it, in 128 colours (the README's copy stays small)."""
    browser.set_window_size(1400, browser.execute_script("return document.documentElement.scrollHeight") + 300)
    browser.execute_script("window.scrollTo(0, 0)")
    browser.save_screenshot(str(path))
    Image.open(path).convert("RGB").quantize(128).save(path, optimize=True)
    if os.environ.get("EVS_UI_SCREENSHOT"):
        shutil.copyfile(path, REPO / os.environ["EVS_UI_SCREENSHOT"])
