"""The web page at ``/``: served without a key, and driven end to end in headless Chromium (Selenium).

The browser test starts the real app with uvicorn on 127.0.0.1 (a free port, in a background thread), types the
API key into the page, enrols two LFW people (one photo each) and searches with another photo of the first.
It skips where Chromium, ChromeDriver or Selenium is missing, but fails under ``CI=true`` (CI installs them:
``apt-get install -y chromium chromium-driver`` and the ``selenium`` dev extra).
"""

from __future__ import annotations

import os
import re
import socket
import threading
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from arcface.gallery import Gallery
from arcface.serve import Settings, create_app
from conftest import require_shared

LFW = "data/lfw/lfw-deepfunneled"
KEY = "web-test-key-0123456789"
CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
FIRST, SECOND = "Colin_Powell", "Tony_Blair"
WAIT_S = 30


def _photo(lfw: Path, person: str, n: int) -> Path:
    return lfw / person / f"{person}_{n:04d}.jpg"


def _require_browser() -> None:
    """Skip without Chromium, ChromeDriver or Selenium; fail instead under CI=true (CI installs them)."""
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("the selenium package")
    if missing:
        msg = f"needs {', '.join(missing)} (apt-get install chromium chromium-driver; pip install selenium)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(msg + "; CI installs them, so this is a failure")
        pytest.skip(msg)


@pytest.fixture(scope="module")
def recognizer():
    from arcface.inference.recognizer import FaceRecognizer

    return FaceRecognizer("default", "mtcnn")


@pytest.fixture
def app(recognizer, tmp_path):
    folder = tmp_path / "gallery"
    settings = Settings(gallery=folder, api_keys=(KEY,), workers=2)
    gallery = Gallery.open(folder, recognizer.contract)
    yield create_app(settings, recognizer=recognizer, gallery=gallery)
    gallery.close()


def test_page_and_static_files_need_no_key(app):
    with TestClient(app) as client:
        r = client.get("/")
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
        for selector in ('id="api-key"', 'id="enrol-form"', 'id="search-form"', 'id="people-list"'):
            assert selector in r.text
        for path, kind in (("/static/app.js", "javascript"), ("/static/style.css", "text/css")):
            r = client.get(path)
            assert r.status_code == 200 and kind in r.headers["content-type"], path
        r = client.get("/static/nothing.js")
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
        assert client.get("/v1/identities").status_code == 401  # the API itself still needs the key
        assert "/" not in client.get("/openapi.json").json()["paths"]


@pytest.fixture
def server(app):
    """The app served by uvicorn on 127.0.0.1 (a free port) in a background thread: yields its base URL."""
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, name="uvicorn-web-test", daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not srv.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        srv.should_exit = True
        thread.join(15)
        sock.close()
        assert not thread.is_alive(), "uvicorn did not stop"


@pytest.fixture
def browser(tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    profile = tmp_path / "chromium-profile"
    profile.mkdir()
    for arg in (
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--window-size=1100,1400",
    ):  # fmt: skip
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=Service(executable_path=str(CHROMEDRIVER)))
    driver.set_page_load_timeout(WAIT_S)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.mark.slow
@pytest.mark.shared
def test_enrol_and_search_in_the_browser(request, tmp_path):
    _require_browser()
    lfw = require_shared(LFW)
    # fixtures only now, so a machine without a browser or LFW skips before loading the model or starting a server
    base = request.getfixturevalue("server")
    driver = request.getfixturevalue("browser")

    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(driver, WAIT_S)
    shot = tmp_path / "web.png"
    try:
        driver.get(base + "/")
        wait.until(EC.text_to_be_present_in_element((By.ID, "health"), "Service up"))  # no model details yet
        driver.find_element(By.ID, "api-key").send_keys(KEY)
        driver.find_element(By.ID, "key-save").click()
        wait.until(EC.text_to_be_present_in_element((By.ID, "health"), "identification threshold"))
        wait.until(EC.text_to_be_present_in_element((By.ID, "people-status"), "Nobody enrolled yet"))

        for person in (FIRST, SECOND):
            name = driver.find_element(By.ID, "enrol-name")
            name.clear()
            name.send_keys(person)
            driver.find_element(By.ID, "enrol-photos").send_keys(str(_photo(lfw, person, 1)))
            driver.find_element(By.ID, "enrol-submit").click()
            wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, "#enrol-result[data-done]")))
            result = driver.find_element(By.ID, "enrol-result")
            assert not result.find_elements(By.CSS_SELECTOR, "li.error"), result.text
            assert f"{person}_0001.jpg: enrolled" in result.text, result.text
            wait.until(EC.text_to_be_present_in_element((By.ID, "people-list"), person))

        people = driver.find_elements(By.CSS_SELECTOR, "#people-list li")
        assert [li.text.split(" — ")[0] for li in people] == [FIRST, SECOND]

        k = driver.find_element(By.ID, "search-k")
        k.clear()
        k.send_keys("2")
        driver.find_element(By.ID, "search-photo").send_keys(str(_photo(lfw, FIRST, 2)))
        driver.find_element(By.ID, "search-submit").click()
        wait.until(EC.visibility_of_element_located((By.CSS_SELECTOR, "#search-results tbody tr")))
        rows = driver.find_elements(By.CSS_SELECTOR, "#search-results tbody tr")
        assert len(rows) == 2, driver.find_element(By.ID, "search-status").text
        cells = [[td.text for td in row.find_elements(By.TAG_NAME, "td")] for row in rows]
        assert cells[0][0] == FIRST, cells
        assert re.fullmatch(r"-?[01]\.\d{3}", cells[0][1]), cells
        assert float(cells[0][1]) > float(cells[1][1]), cells
        assert cells[0][2] in ("yes", "no") and cells[1][2] in ("yes", "no"), cells
        assert "Identification threshold" in driver.find_element(By.ID, "search-status").text
        # the page ran under its Content-Security-Policy with nothing refused
        refused = [e for e in driver.get_log("browser") if "Content Security Policy" in e.get("message", "")]
        assert not refused, refused
    finally:
        driver.save_screenshot(str(shot))
    assert shot.stat().st_size > 0


@pytest.mark.slow
def test_api_docs_render_from_the_service_under_their_csp(request):
    """Swagger UI at /docs loads only from the service (no CDN) and renders the API under its CSP."""
    _require_browser()
    base = request.getfixturevalue("server")
    driver = request.getfixturevalue("browser")

    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(base + "/docs")
    WebDriverWait(driver, WAIT_S).until(
        EC.presence_of_element_located((By.CSS_SELECTOR, ".swagger-ui .opblock-summary-path"))
    )
    paths = {e.text.replace("\u200b", "") for e in driver.find_elements(By.CSS_SELECTOR, ".opblock-summary-path")}
    assert {"/v1/search", "/v1/identities"} <= paths, paths
    loaded = driver.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    assert loaded and all(u.startswith(base) for u in loaded), loaded
    refused = [e for e in driver.get_log("browser") if "Content Security Policy" in e.get("message", "")]
    assert not refused, refused
