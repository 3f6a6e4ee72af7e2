"""How fast the studio answers a slider: the server's time per decode (its Server-Timing
header) and the time from the slider's input event to the new face drawn in the browser,
in Debian's headless Chromium on this machine. Optionally saves a screenshot of the page.

    .venv/bin/python benchmarks/studio_latency.py                      # the production model
    .venv/bin/python benchmarks/studio_latency.py --screenshot docs/images/studio.png \\
        --photo data/raw/img_align_celeba/000001.jpg                    # a drawn face, for the picture
"""

from __future__ import annotations

import argparse
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

PROJECT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT))

from tests.browser import chromium  # noqa: E402
from tests.servers import free_ports, stop_group  # noqa: E402

SERVER_TIMES = """
return performance.getEntriesByType("resource")
  .filter((entry) => entry.name.endsWith("/api/face"))
  .flatMap((entry) => entry.serverTiming.filter((t) => t.name === "decode").map((t) => t.duration));
"""


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="models/production/cvae.keras")
    parser.add_argument("--classifier", default="models/production/classifier.keras")
    parser.add_argument("--moves", type=int, default=60, help="slider moves to time (default: %(default)s)")
    parser.add_argument("--screenshot", type=Path, help="save a screenshot of the page here")
    parser.add_argument("--photo", type=Path, help="upload this image before the screenshot")
    args = parser.parse_args()

    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    port = free_ports(1)[0]
    server = subprocess.Popen([str(Path(sys.executable).parent / "cvae"), "studio", "--model", args.model,
                               "--classifier", args.classifier, "--port", str(port)],
                              cwd=PROJECT, start_new_session=True)
    url = f"http://127.0.0.1:{port}/"
    with tempfile.TemporaryDirectory() as profile:
        browser = None
        try:
            deadline = time.monotonic() + 120
            while True:
                try:
                    urllib.request.urlopen(url + "api/model", timeout=2).close()
                    break
                except OSError:
                    if server.poll() is not None or time.monotonic() > deadline:
                        raise SystemExit("the studio did not start") from None
                    time.sleep(0.5)
            browser = chromium(Path(profile))
            wait = WebDriverWait(browser, 60)
            body = browser.find_element

            def renders() -> int:
                return int(body(By.TAG_NAME, "body").get_attribute("data-renders") or 0)

            browser.get(url)
            wait.until(lambda _: body(By.TAG_NAME, "body").get_attribute("data-ready") == "1")
            slider = browser.find_elements(By.CSS_SELECTOR, "#attributes input")[0]
            latencies = []
            for move in range(args.moves + 5):  # the first five warm up
                before = renders()
                slider.send_keys(Keys.ARROW_RIGHT if move % 2 == 0 else Keys.ARROW_LEFT)
                wait.until(lambda _, before=before: renders() > before)
                if move >= 5:
                    latencies.append(float(body(By.TAG_NAME, "body").get_attribute("data-latency-ms")))
            decodes = browser.execute_script(SERVER_TIMES)[5:]
            print(f"studio on {args.model}, {cpu_name()}, {args.moves} slider moves:")
            print(f"  server decode: median {statistics.median(decodes):.1f} ms, 90th percentile "
                  f"{percentile(decodes, 0.9):.1f} ms")
            print(f"  input to new face in the browser: median {statistics.median(latencies):.1f} ms, "
                  f"90th percentile {percentile(latencies, 0.9):.1f} ms")

            if args.screenshot:
                names = [span.text for span in browser.find_elements(By.CSS_SELECTOR, "#attributes label span")]
                if args.photo:
                    before = renders()
                    body(By.ID, "photo").send_keys(str(args.photo.resolve()))
                    wait.until(lambda _: renders() > before)
                for name, presses in (("Smiling", 30), ("Eyeglasses", 30)):
                    if name in names:
                        before = renders()
                        browser.find_elements(By.CSS_SELECTOR, "#attributes input")[names.index(name)].send_keys(
                            *[Keys.ARROW_RIGHT] * presses)
                        wait.until(lambda _, before=before: renders() > before and
                                   body(By.TAG_NAME, "body").get_attribute("data-renders"))
                time.sleep(1)  # let the last coalesced request land
                browser.save_screenshot(str(args.screenshot))
                print(f"  screenshot: {args.screenshot}")
        finally:
            if browser is not None:
                browser.quit()
            stop_group(server)


if __name__ == "__main__":
    main()
