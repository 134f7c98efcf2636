"""The web console in a real headless browser (Debian's chromium, driven by selenium): an
admin logs in, finds a study, presses reprocess and sees it done, its mask overlays drawn; a
viewer sees no patient data and no actions; a form posted without its XSRF token is refused.

With UMSREP_SCREENSHOTS=<folder> the screenshots are also written there (the README's, in
docs/, were made so).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest

from tests.conftest import UMSREP, free_port, node_config, storescu, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

CHROMEDRIVER, CHROMIUM = Path("/usr/bin/chromedriver"), Path("/usr/bin/chromium")
PASSWORDS = {"ada": "ada-the-admin-0123", "vic": "vic-the-viewer-0123"}


@pytest.fixture
def browser() -> Iterator[Any]:
    if not (CHROMEDRIVER.exists() and CHROMIUM.exists()):
        pytest.skip("Debian's chromium and chromium-driver are needed (make install "
                    "installs them)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                     "--window-size=1360,900"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.implicitly_wait(5)
    yield driver
    driver.quit()


def add_user(users: Path, name: str, role: str) -> None:
    added = subprocess.run([*UMSREP, "user", "add", name, "--role", role, "--users-file",
                            str(users)], input=PASSWORDS[name] + "\n", capture_output=True,
                           text=True, timeout=60)
    assert added.returncode == 0, added.stderr


def log_in(driver: Any, base: str, name: str) -> None:
    from selenium.webdriver.common.by import By

    driver.get(f"{base}/console/")
    assert "/console/login" in driver.current_url  # not logged in: the login page
    driver.find_element(By.ID, "name").send_keys(name)
    driver.find_element(By.ID, "password").send_keys(PASSWORDS[name])
    driver.find_element(By.ID, "login").click()
    wait_until(lambda: driver.find_elements(By.ID, "studies"), timeout=10)


def shoot(driver: Any, tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    driver.save_screenshot(str(path))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    if os.environ.get("UMSREP_SCREENSHOTS"):
        shutil.copy(path, Path(os.environ["UMSREP_SCREENSHOTS"]) / name)


def test_an_admin_reprocesses_a_study_and_a_viewer_only_looks(
        serve: Any, study_files: Any, browser: Any, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    token, users = tmp_path / "token", tmp_path / "users.yaml"
    token.write_text("a-token-of-the-test-0123456789")
    add_user(users, "ada", "admin")
    add_user(users, "vic", "viewer")
    port = free_port()
    node = serve(node_config(
        tmp_path / "data", 0, routing={"quiet_seconds": 2, "rules": [
            {"name": "chest", "match": {"modality": ["CR"]},
             "process": {"pipeline": "cxr", "destinations": ["results"]}}]},
        api={"port": port, "token_file": str(token), "users_file": str(users)}))
    files = study_files("cr", count=2, seed=3)
    assert storescu(node.port, files).returncode == 0
    key = f"{pydicom.dcmread(files[0]).StudyInstanceUID}@1"
    patient = str(pydicom.dcmread(files[0]).PatientName)
    base = f"http://127.0.0.1:{port}"

    log_in(browser, base, "ada")

    def state() -> str:
        browser.refresh()
        return str(browser.find_element(By.ID, "state").text)

    browser.find_element(By.LINK_TEXT, key).click()  # found in the list
    wait_until(lambda: state() == "done", timeout=120, interval=1)
    assert patient in browser.page_source  # an admin sees the patient
    browser.find_element(By.ID, "reprocess").click()
    assert "reprocess: done, the study is receiving" in browser.find_element(
        By.ID, "message").text
    wait_until(lambda: state() == "done", timeout=120, interval=1)  # routed and run again
    assert not browser.find_elements(By.ID, "message")  # shown once, not on each reload
    events = browser.find_element(By.ID, "events").text
    assert "reprocessing asked" in events and events.count("job chest done") == 2
    overlays = browser.find_elements(By.CSS_SELECTOR, "img.overlay")
    assert len(overlays) == 2 and all(
        browser.execute_script("return arguments[0].complete && arguments[0].naturalWidth",
                               img) > 0 for img in overlays)
    shoot(browser, tmp_path, "console-study.png")
    browser.get(f"{base}/console/")
    shoot(browser, tmp_path, "console-studies.png")
    table = browser.find_element(By.ID, "studies")
    header = [th.text for th in table.find_elements(By.TAG_NAME, "th")]
    row = table.find_element(By.XPATH, f".//tr[td/a[text()='{key}']]")
    listed = dict(zip(header, (td.text for td in row.find_elements(By.TAG_NAME, "td")),
                      strict=True))
    assert (listed["Modalities"], listed["Instances"]) == ("CR", "2")  # counted for the page
    browser.get(f"{base}/console/?message=Your+session+ended:+call+555-0100")
    assert not browser.find_elements(By.ID, "message")  # a link cannot make one up

    session = {c["name"]: c["value"] for c in browser.get_cookies()}
    forged = urllib.request.Request(f"{base}/console/studies/{key}/discard", data=b"",
                                    method="POST")
    forged.add_header("Cookie", f"umsrep_user={session['umsrep_user']}")  # no XSRF token
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(forged, timeout=10)
    assert refused.value.code == 403

    browser.find_element(By.CSS_SELECTOR, "header form button").click()  # log out
    log_in(browser, base, "vic")
    browser.find_element(By.LINK_TEXT, key).click()
    assert browser.find_element(By.ID, "state").text == "done"
    assert patient not in browser.page_source  # a viewer sees no patient data
    assert not browser.find_elements(By.ID, "reprocess")  # nor any action
