"""The sign-in example in a real browser (headless Chromium through Selenium): log in, read the code
from the demo mailbox, type it, see "signed in"; five wrong codes; an expired code. Each step's page
is saved as a PNG under --screenshots.

    python signin_browser.py --codewatch target/debug/codewatch --screenshots target/screenshots/signin
"""

import argparse
import atexit
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.common.by import By

ROOT = Path(__file__).resolve().parents[2]
CODE = re.compile(r"Your sign-in code is ([A-Za-z]{3}-\d+-[A-Za-z]{3})")


def start_example(codewatch, workdir, ttl):
    """The example on a free port; its process and URL."""
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "examples/signin/run.py"), "--codewatch", codewatch,
         "--port", "0", "--code-ttl", str(ttl), "--workdir", workdir],
        stdout=subprocess.PIPE,
        text=True,
    )
    line = proc.stdout.readline()
    if not line:
        sys.exit(f"the example did not start (see {workdir}/codewatch.log)")
    return proc, json.loads(line)["url"]


def browser():
    # A throwaway profile, removed when the script ends (after the driver has quit).
    profile = tempfile.mkdtemp(prefix="chromium-")
    atexit.register(shutil.rmtree, profile, ignore_errors=True)
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--window-size=900,700",
                 f"--user-data-dir={profile}"):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)


class Steps:
    def __init__(self, driver, shots):
        self.driver, self.shots, self.n = driver, shots, 0

    def shot(self, name):
        self.n += 1
        self.driver.save_screenshot(str(self.shots / f"{self.n:02d}-{name}.png"))

    def text(self):
        try:
            return self.driver.find_element(By.TAG_NAME, "body").text
        except WebDriverException:  # the page is being replaced: ask again
            return ""

    def wait_for(self, what, timeout=20):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if what in self.text():
                return
            time.sleep(0.2)
        raise AssertionError(f"{what!r} not on the page:\n{self.text()}")

    def log_in(self, url, user, password):
        self.driver.get(url + "/")
        self.driver.find_element(By.ID, "user").send_keys(user)
        self.driver.find_element(By.ID, "password").send_keys(password)
        self.driver.find_element(By.ID, "login").click()
        self.wait_for("We sent a code to")

    def code_from_mailbox(self, url, to, before):
        """The newest code mailed to `to`, once more than `before` mails reached it."""
        deadline = time.time() + 20
        while time.time() < deadline:
            self.driver.get(url + "/mailbox")
            bodies = [
                m.text for m in self.driver.find_elements(By.CLASS_NAME, "mail") if f"To: {to}" in m.text
            ]
            if len(bodies) > before:
                return CODE.search(bodies[0]).group(1)
            time.sleep(0.5)
        raise AssertionError(f"no mail to {to}:\n{self.text()}")

    def type_code(self, url, code):
        if "/code" not in self.driver.current_url:
            self.driver.get(url + "/code")
        box = self.driver.find_element(By.ID, "code")
        box.clear()
        box.send_keys(code)
        self.driver.find_element(By.ID, "submit").click()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--codewatch", required=True)
    parser.add_argument("--screenshots", required=True)
    args = parser.parse_args()
    shots = Path(args.screenshots)
    shots.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="signin-example-"))
    example, url = start_example(args.codewatch, str(work / "long"), 600)
    short, short_url = start_example(args.codewatch, str(work / "short"), 4)
    driver = browser()
    steps = Steps(driver, shots)
    try:
        # Log in, read the mail, type the code: signed in.
        driver.get(url + "/")
        steps.shot("login")
        steps.log_in(url, "alice", "wonderland")
        steps.shot("code-sent")
        code = steps.code_from_mailbox(url, "alice@example.com", 0)
        steps.shot("mailbox")
        steps.type_code(url, code)
        steps.wait_for("Signed in as alice.")
        steps.shot("signed-in")
        driver.find_element(By.ID, "logout").click()
        steps.wait_for("Demo users")

        # Five wrong codes: the code is burned, the user is asked for a new one; the real one fails too.
        steps.log_in(url, "bob", "builder")
        real = steps.code_from_mailbox(url, "bob@example.com", 0)
        for i in range(1, 6):
            steps.type_code(url, "Wro-000-Ngg")
            steps.wait_for("Five wrong codes" if i == 5 else f"Wrong code. {5 - i} tries left.")
        steps.shot("five-wrong-codes")
        driver.find_element(By.ID, "resend").click()
        steps.wait_for("A new code is on its way.")
        new = steps.code_from_mailbox(url, "bob@example.com", 1)
        assert new != real
        steps.type_code(url, new)
        steps.wait_for("Signed in as bob.")
        driver.find_element(By.ID, "logout").click()
        steps.wait_for("Demo users")
        driver.delete_all_cookies()  # the other example shares the host name

        # An expired code (this example's codes live 4 s): the page says so.
        steps.log_in(short_url, "alice", "wonderland")
        code = steps.code_from_mailbox(short_url, "alice@example.com", 0)
        driver.get(short_url + "/code")
        time.sleep(5)
        steps.type_code(short_url, code)
        steps.wait_for("Your code expired. Send a new code.")
        steps.shot("expired")
    except Exception:
        steps.shot("failure")
        raise
    finally:
        driver.quit()
        for proc in (example, short):
            proc.terminate()
            proc.wait(timeout=30)
    print(json.dumps({"screenshots": sorted(p.name for p in shots.glob("*.png"))}))


if __name__ == "__main__":
    main()
