"""The live page at `/`, in a real browser: Debian's chromium, headless, driven by
Playwright. It refuses without the service credential, signs in with the link `weir
dashboard` prints or with a connection string, and its numbers move while `weir simulate`
publishes. A screenshot is saved (target/e2e-artifacts/dashboard.png, or
$WEIR_ARTIFACTS)."""

import base64
import os
import shutil
import subprocess
from pathlib import Path

import requests
from conftest import run_weir
from playwright.sync_api import sync_playwright
from weirhub import ROOT, WEIR

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


def number(page, element_id):
    return int(page.text_content(f"#{element_id}"))


def test_the_live_page_refuses_without_the_credential_and_moves_with_traffic(hub):
    # No credential: the sign-in page (401), and no data from the stream or snapshot.
    r = requests.get(hub.api + "/", timeout=10)
    assert r.status_code == 401 and 'name="connection_string"' in r.text and "messages-in" not in r.text
    for path in ("/dashboard/stream", "/dashboard/snapshot", "/?token=SharedAccessSignature%20sr%3Dx"):
        assert requests.get(hub.api + path, timeout=10).status_code == 401, path
    r = requests.get(hub.api + "/dashboard/snapshot", headers=hub.service_headers(), timeout=10)
    assert r.status_code == 200 and r.json()["hub"] == hub.hostname

    link = run_weir("dashboard", "--api", hub.api, "--data-dir", hub.data, "--valid-secs", "600")
    assert link.returncode == 0, link.stderr
    url = link.stdout.strip()
    assert url.startswith(hub.api + "/?token=SharedAccessSignature")

    artifacts = Path(os.environ.get("WEIR_ARTIFACTS", ROOT / "target" / "e2e-artifacts"))
    artifacts.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--headless=new"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1100})
            resp = page.goto(hub.api + "/")
            assert resp.status == 401 and page.locator("#sign-in").is_visible()
            # A connection string with the wrong key does not sign in.
            wrong = base64.b64encode(b"not the hub's key, not at all!!").decode()
            page.fill("#connection_string", f"HostName={hub.hostname};SharedAccessKeyName=iothubowner;SharedAccessKey={wrong}")
            page.click("#sign-in")
            assert "not signed in" in page.text_content("#error")
            assert page.locator("#messages-in").count() == 0

            # The printed link signs in and leaves the address bar without the token.
            page.goto(url)
            page.wait_for_selector("#status.live", timeout=10_000)
            assert "token" not in page.url
            page.wait_for_function("document.getElementById('messages-in').textContent !== '–'", timeout=10_000)
            before = number(page, "messages-in")

            sim = subprocess.Popen(
                [str(WEIR), "simulate", "--api", hub.api, "--data-dir", str(hub.data), "--mqtt", f"127.0.0.1:{hub.mqtt_port}",
                 "--devices", "5", "--messages", "0", "--duration", "10", "--rate", "400", "--quiet"],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            try:
                page.wait_for_function(
                    f"Number(document.getElementById('messages-in').textContent) > {before + 400}", timeout=20_000)
                page.wait_for_function("document.getElementById('rate-in').textContent !== '0'", timeout=10_000)
                page.wait_for_function("Number(document.getElementById('connections-total').textContent) >= 5",
                                       timeout=10_000)
                page.wait_for_function("Number(document.getElementById('archived').textContent) > 0", timeout=20_000)
                # Routes and endpoints from the hub's rules, with counts.
                routes = page.text_content("#routes")
                assert "everything" in routes and "hot" in routes, routes
                assert "archive" in page.text_content("#endpoints")
                assert "mqtt" in page.text_content("#connections")
                page.screenshot(path=str(artifacts / "dashboard.png"), full_page=True)
            finally:
                out, err = sim.communicate(timeout=60)
            assert sim.returncode == 0, err
            after = number(page, "messages-in")
            assert after >= before + 400

            # A connection string signs in too; signing out ends the session.
            other = browser.new_page()
            assert other.goto(hub.api + "/").status == 401
            other.fill("#connection_string", (Path(hub.data) / "iothubowner.connstr").read_text().strip())
            other.click("#sign-in")
            other.wait_for_selector("#status.live", timeout=10_000)
            other.click("text=Sign out")
            other.wait_for_selector("#sign-in", timeout=10_000)
        finally:
            browser.close()
    assert (artifacts / "dashboard.png").stat().st_size > 10_000


def test_signing_in_over_https_sets_a_secure_cookie(tmp_path, rules_dir):
    from weirhub import Hub, free_port

    hub = Hub(tmp_path, rules_dir, fixed_ports={"https": free_port()}).start()
    try:
        link = run_weir("dashboard", "--api", hub.api, "--data-dir", hub.data).stdout.strip()
        token = link.split("?token=", 1)[1]
        https = f"https://localhost:{hub.https_port}"
        r = requests.get(f"{https}/?token={token}", verify=str(hub.ca), allow_redirects=False, timeout=10)
        assert r.status_code == 303 and r.headers["location"] == "/", r.status_code
        cookie = r.headers["set-cookie"]
        for attribute in ("HttpOnly", "SameSite=Strict", "Secure", "Max-Age="):
            assert attribute in cookie, cookie
        name, value = cookie.split(";", 1)[0].split("=", 1)
        page = requests.get(f"{https}/", cookies={name: value}, verify=str(hub.ca), timeout=10)
        assert page.status_code == 200 and 'id="messages-in"' in page.text
        # Over plain HTTP the same sign-in sets no Secure flag (the browser would drop it).
        r = requests.get(link, allow_redirects=False, timeout=10)
        assert r.status_code == 303 and "Secure" not in r.headers["set-cookie"]
        # Signing out clears it.
        r = requests.post(f"{https}/dashboard/sign-out", cookies={name: value}, verify=str(hub.ca),
                          allow_redirects=False, timeout=10)
        assert "Max-Age=0" in r.headers["set-cookie"]
    finally:
        hub.stop()
