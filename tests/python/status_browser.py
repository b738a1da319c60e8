"""The admin listener's /status page in a real browser (headless Chromium through Selenium): it
renders, loads nothing from elsewhere, shows no code, and its figures are those /metrics gives at the
same moment (read before and after the page). Saves the page as a PNG.

    python status_browser.py --admin http://127.0.0.1:9090 --active 3 --codes a,b,c \
        --screenshot target/screenshots/status/status.png
"""

import argparse
import atexit
import json
import re
import shutil
import sys
import tempfile
import urllib.request
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By

LINE = re.compile(r'^([a-z_]+)(?:\{(.*)\})? (\S+)$')


def metrics(admin):
    """The series of /metrics as {(name, frozenset(labels)): value}."""
    text = urllib.request.urlopen(f"{admin}/metrics", timeout=10).read().decode()
    series = {}
    for line in text.splitlines():
        m = LINE.match(line)
        if m:
            labels = frozenset(re.findall(r'([a-z_]+)="([^"]*)"', m[2] or ""))
            series[(m[1], labels)] = float(m[3])
    return series


def total(series, name, **labels):
    want = set(labels.items())
    return sum(v for (n, l), v in series.items() if n == name and want <= set(l))


def issued(series):
    return sum(v for (n, l), v in series.items()
               if n == "codewatch_http_requests_total"
               and dict(l).get("route") in ("/api/v1/getcode", "/api/v1/codes")
               and dict(l).get("status", "").startswith("2"))


def browser():
    # A throwaway profile, removed when the script ends (after the driver has quit).
    profile = tempfile.mkdtemp(prefix="chromium-")
    atexit.register(shutil.rmtree, profile, ignore_errors=True)
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--window-size=1000,1100",
                 f"--user-data-dir={profile}"):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)


def check(ok, what):
    if not ok:
        sys.exit(f"status page: {what}")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--admin", required=True)
    parser.add_argument("--active", type=int, required=True)
    parser.add_argument("--codes", required=True, help="codes issued, none of which may show")
    parser.add_argument("--screenshot", required=True)
    args = parser.parse_args()
    shot = Path(args.screenshot)
    shot.parent.mkdir(parents=True, exist_ok=True)

    driver = browser()
    try:
        before = metrics(args.admin)
        driver.get(f"{args.admin}/status")
        after = metrics(args.admin)
        driver.save_screenshot(str(shot))

        text = lambda id: driver.find_element(By.ID, id).text.strip()
        both = lambda f: {f(before), f(after)}
        check(driver.title == "codewatch status", f"title {driver.title!r}")
        check(text("ready") == "ready", f"overall {text('ready')!r}")
        for row in driver.find_elements(By.CSS_SELECTOR, "#parts tr"):
            check(row.text.endswith("ready"), f"a dependency is not ready: {row.text!r}")
        check(text("active-codes") == str(args.active), f"active codes {text('active-codes')!r}")
        check(float(text("total-issued")) in both(issued), f"issued {text('total-issued')}")
        for outcome in ("activated", "expired", "poisoned"):
            shown = float(text(f"total-{outcome}"))
            counted = both(lambda s: total(s, "codewatch_messages_total", outcome=outcome))
            check(shown in counted, f"{outcome}: page {shown}, /metrics {counted}")
        rows = driver.find_elements(By.CSS_SELECTOR, "#queues tr.queue")
        check(rows, "no queue row")
        for row in rows:
            queue = row.get_attribute("data-queue")
            length = float(row.find_element(By.CSS_SELECTOR, ".length").text)
            counted = both(lambda s: total(s, "codewatch_queue_length", queue=queue))
            check(length in counted, f"queue {queue}: page {length}, /metrics {counted}")
            age = row.find_element(By.CSS_SELECTOR, ".age").text
            ages = {f"{a:.0f}" for a in both(lambda s: total(s, "codewatch_queue_oldest_visible_age_seconds",
                                                           queue=queue))}
            if queue.endswith("-poison"):
                check(age == "–", f"a poison queue has no age: {age}")
            else:
                check(age in ages, f"queue {queue} oldest: page {age}, /metrics {ages}")
        for quantile, id in (("0.5", "lag-p50"), ("0.99", "lag-p99")):
            shown = text(id)
            counted = {f"{v * 1000:.1f}" for v in
                       both(lambda s: total(s, "codewatch_activation_lag_seconds", quantile=quantile))}
            check(shown in counted, f"lag p{quantile}: page {shown}, /metrics {counted}")
        for series in ("issued", "activated", "expired", "poisoned"):
            chart = driver.find_element(By.ID, f"chart-{series}")
            check(chart.size["width"] > 100 and chart.size["height"] > 20, f"chart {series} not drawn")
        bars = driver.find_elements(By.CSS_SELECTOR, "#chart-activated rect title")
        check(sum(float(b.get_attribute("textContent")) for b in bars) == float(text("total-activated")),
              "the activated chart's bars do not add up to the total")
        problems = [li.text for li in driver.find_elements(By.CSS_SELECTOR, "#problems li")]
        check(any("message set aside" in p for p in problems), f"no poison reason among {problems}")
        check(not driver.find_elements(By.CSS_SELECTOR, "script, link, img, iframe, object, embed"),
              "the page loads something")
        source = driver.page_source
        for code in args.codes.split(","):
            check(code not in source, "a code is shown")
        check("<b>" not in source, "a poisoned message's markup reached the page")
        print(json.dumps({"screenshot": str(shot), "problems": len(problems), "queues": len(rows)}))
    finally:
        driver.quit()


if __name__ == "__main__":
    main()
