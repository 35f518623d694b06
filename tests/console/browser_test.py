#!/usr/bin/env python3
"""The archivist's console in a real browser (Debian's headless Chromium, driven by Selenium
through Debian's chromedriver).

Starts `target/release/mailgrip serve` with a temporary configuration (the explainable baseline
as the model, so no ONNX Runtime is needed; every mail held for review; relay into a folder;
the console on a free port with one archivist whose password is hashed by
`mailgrip admin hash-password`), sends a mail with HTML markup in its body by SMTP, and then, in
the browser: is sent to the login page, logs in, opens the held copy from the queue, sees the
markup as text together with the scores, top terms and model, decides "archive", and is back on
the queue, which is empty. Finally the archive copy (.eml with its MDTO sidecar) must be on disk,
the held copy gone, the reviewers' audit chain must verify and name the archivist.

Run from the repository root after `scripts/install-browser.sh` and `cargo build --release`:
    tests/console/.venv/bin/python tests/console/browser_test.py
Exit status 0 on success; an AssertionError (with the server's log) otherwise.
"""

import os
import pathlib
import signal
import smtplib
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from email.message import EmailMessage

from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import WebDriverWait

REPO = pathlib.Path(__file__).resolve().parents[2]
MAILGRIP = REPO / "target" / "release" / "mailgrip"
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("CHROMEDRIVER", "/usr/bin/chromedriver")
PASSWORD = "Archiefwet 1995 & AVG: <beide>"
MARKUP = "<script>document.title='pwned'</script><b>vet</b><img src=x onerror=alert(1)>"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port, proc, log, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"mailgrip exited with {proc.returncode}:\n{log.read_text()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"port {port} did not open in {timeout}s:\n{log.read_text()}")


def find(driver, by, value):
    """The element, once the page that has it has loaded (a click does not wait for a form post)."""
    return WebDriverWait(driver, 30).until(EC.presence_of_element_located((by, value)))


def at(driver, url, prefix=False):
    """Wait (bounded) until the browser is at `url` (or a URL starting with it)."""
    try:
        WebDriverWait(driver, 30).until(lambda d: d.current_url.startswith(url) if prefix else d.current_url == url)
    except Exception:
        raise AssertionError(f"expected {url}, browser at {driver.current_url}")


def files(root):
    return sorted(p for p in pathlib.Path(root).rglob("*") if p.is_file())


def main():
    assert MAILGRIP.is_file(), f"{MAILGRIP} missing: run `cargo build --release` first"
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="mailgrip-browser-"))
    hashed = subprocess.run(
        [str(MAILGRIP), "admin", "hash-password"], input=PASSWORD + "\n", capture_output=True, text=True, check=True
    ).stdout.strip()
    assert hashed.startswith("$argon2id$"), hashed
    smtp_port, admin_port = free_port(), free_port()
    costs = "".join(
        f"[policy.costs.{c}]\nreview = 0.0\n\n"
        for c in ["functioneel", "prive", "niet_functioneel", "personeelsvertrouwelijk", "partijpolitiek"]
    )
    config = tmp / "mailgrip.toml"
    config.write_text(
        f"""[smtp]
listen = "127.0.0.1:{smtp_port}"

[relay]
mode = "dir"
dir = "{tmp}/outbox"

[archive]
dir = "{tmp}/archive"
restricted_dir = "{tmp}/archive-restricted"

[review]
dir = "{tmp}/review"

[audit]
path = "{tmp}/audit/audit.jsonl"
review_path = "{tmp}/audit/review.jsonl"

[model]
dir = "{REPO}/models/mailgrip-baseline"

[metrics]
listen = ""

{costs}[admin]
listen = "127.0.0.1:{admin_port}"
explain_model = "{REPO}/models/mailgrip-baseline"

[[admin.users]]
name = "a.jansen"
role = "archivist"
password_hash = "{hashed}"
"""
    )
    log = tmp / "mailgrip.log"
    with open(log, "w") as out:
        server = subprocess.Popen([str(MAILGRIP), "--config", str(config), "serve"], stdout=out, stderr=out, cwd=tmp)
    driver = None
    try:
        wait_for_port(smtp_port, server, log)
        wait_for_port(admin_port, server, log)
        base = f"http://127.0.0.1:{admin_port}"

        msg = EmailMessage()
        msg["From"] = "Jan de Vries <j.devries@minbzk.nl>"
        msg["To"] = "a.bakker@minfin.nl"
        msg["Subject"] = "Advies wetsvoorstel Woo-termijnen"
        msg["Message-ID"] = "<browser-test@minbzk.nl>"
        msg.set_content(
            "Beste Anna,\n\nhierbij ons advies over de beslistermijnen van het wetsvoorstel.\n"
            f"{MARKUP}\nGraag uw reactie voor vrijdag.\n\nMet vriendelijke groet,\nJan\n"
        )
        with smtplib.SMTP("127.0.0.1", smtp_port, timeout=60) as s:
            s.send_message(msg)
        held = [p for p in files(tmp / "review") if p.suffix == ".eml"]
        assert len(held) == 1, f"one held copy expected after 250: {held}"
        item_id = held[0].stem

        # The security headers, as the browser receives them.
        with urllib.request.urlopen(f"{base}/login", timeout=30) as r:
            csp = r.headers["Content-Security-Policy"]
            assert "default-src 'none'" in csp and "frame-ancestors 'none'" in csp, csp
            assert r.headers["X-Frame-Options"] == "DENY" and r.headers["Cache-Control"] == "no-store"

        opts = Options()
        opts.binary_location = CHROMIUM
        for arg in ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--no-first-run"]:
            opts.add_argument(arg)
        driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=opts)
        driver.set_page_load_timeout(60)

        driver.get(base + "/")
        at(driver, base + "/login")
        driver.find_element(By.ID, "user").send_keys("a.jansen")
        driver.find_element(By.ID, "password").send_keys("wrong")
        driver.find_element(By.ID, "login").click()
        assert "Unknown name or wrong password" in find(driver, By.ID, "login-error").text
        driver.find_element(By.ID, "user").send_keys("a.jansen")
        driver.find_element(By.ID, "password").send_keys(PASSWORD)
        driver.find_element(By.ID, "login").click()
        at(driver, base + "/")
        # The default secure_cookies = true: browsers accept Secure cookies from http://127.0.0.1
        # (loopback counts as a secure context), so the production setting is what is tested.
        cookie = driver.get_cookie("__Host-mailgrip")
        assert cookie and cookie["httpOnly"] and cookie["secure"] and cookie["sameSite"] == "Strict", cookie
        assert "1 of 1 held copies match" in find(driver, By.ID, "count").text

        links = driver.find_elements(By.CSS_SELECTOR, "a.item")
        assert len(links) == 1 and links[0].text == "Advies wetsvoorstel Woo-termijnen", [a.text for a in links]
        links[0].click()
        at(driver, f"{base}/item/{item_id}")

        body = find(driver, By.ID, "body").text
        assert MARKUP in body, f"the markup must show as text: {body!r}"
        assert "hierbij ons advies" in body
        assert driver.title != "pwned" and not driver.find_elements(By.TAG_NAME, "script"), "a script ran or exists"
        assert not driver.find_elements(By.CSS_SELECTOR, "#body b, #body img"), "mail markup became elements"
        scores = driver.find_elements(By.CSS_SELECTOR, "#scores tr")
        assert len(scores) == 6, f"header + five classes: {[r.text for r in scores]}"
        assert driver.find_element(By.ID, "model").text == "mailgrip-baseline@1.0.0"
        assert driver.find_elements(By.CSS_SELECTOR, "#terms tr"), "top terms"
        predicted = driver.find_element(By.ID, "class").text
        print(f"browser: held copy {item_id} predicted {predicted}; top terms: "
              + ", ".join(t.text for t in driver.find_elements(By.CSS_SELECTOR, "#terms code")[:5]))

        driver.find_element(By.ID, "action-archive").click()
        driver.find_element(By.ID, "decide").click()
        at(driver, base + "/?decided=", prefix=True)
        assert item_id in find(driver, By.ID, "flash").text
        assert "0 of 0 held copies match" in driver.find_element(By.ID, "count").text

        archived = {p.name for p in files(tmp / "archive")}
        assert f"{item_id}.eml" in archived, f"archive copy missing: {archived}"
        assert any(n.startswith(item_id) and n.endswith(".xml") for n in archived), f"no MDTO sidecar: {archived}"
        assert not (tmp / "review" / f"{item_id}.eml").exists(), "still in the queue"
        chain = (tmp / "audit" / "review.jsonl").read_text()
        assert '"reviewer":"a.jansen"' in chain and '"action":"archive"' in chain, chain
        verify = subprocess.run([str(MAILGRIP), "audit", "verify", str(tmp / "audit" / "review.jsonl")],
                                capture_output=True, text=True)
        assert verify.returncode == 0, verify.stdout + verify.stderr

        # Log out: the session ends, the queue sends the browser to the login page again.
        driver.find_element(By.CSS_SELECTOR, "header form button").click()
        at(driver, base + "/login")
        find(driver, By.ID, "login")
        driver.get(base + "/")
        at(driver, base + "/login")
        print(f"browser: ok ({driver.capabilities.get('browserVersion')}): login, held copy shown escaped, "
              f"decided archive, {item_id}.eml archived, queue empty, review chain verifies")
    except Exception:
        print(f"--- mailgrip log ({log}):\n{log.read_text()}", file=sys.stderr)
        raise
    finally:
        if driver is not None:
            driver.quit()
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=40)
        except subprocess.TimeoutExpired:
            server.kill()
            raise AssertionError("mailgrip did not stop within 40 s of SIGTERM")
    assert server.returncode == 0, f"mailgrip exited with {server.returncode}:\n{log.read_text()}"


if __name__ == "__main__":
    main()
