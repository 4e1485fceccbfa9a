"""The attention page in a real browser: headless Chromium (Debian's package) driven by Selenium.

Checks: the page loads from a file with no console errors and no request but itself; clicking
(or hovering) token i shades every earlier token with row i of the attention tensor (read back
from the DOM), for the averaged maps and for one layer and head picked in the selectors; a
generated token shows the sampler's candidates; a screenshot is a picture, not a blank page.

Chromium is never downloaded: ``apt-get install chromium chromium-driver`` (``.ci/run`` does it).
The tests skip, saying why, only where that binary or its driver is missing.
"""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import random_model
from data.tokenizer import CharTokenizer
from model import GPTConfig
from viz.picture import attention_view, write_picture
from viz.record import NextTokenRecorder

CHROME_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-dev-shm-usage", "--window-size=1300,900")
PROMPT = "ROMEO:\nwhat </b> & 'tis <i>"


def find_binary(*names: str) -> str | None:
    for name in names:
        path = shutil.which(name) or (name if Path(name).is_file() else None)
        if path:
            return path
    return None


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    """A headless Chromium under Selenium, shared by the module's tests."""
    chromium = find_binary("chromium", "chromium-browser", "/usr/bin/chromium")
    driver_path = find_binary("chromedriver", "/usr/bin/chromedriver")
    if chromium is None or driver_path is None:
        pytest.skip("Chromium or its driver is not installed (apt-get install chromium chromium-driver)")
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is missing: pip install -e '.[dev]'")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in (*CHROME_FLAGS, f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def page(tmp_path_factory) -> dict:
    """An attention page of a random 3-layer, 2-head model: prompt + 24 sampled tokens, and its tensor."""
    tok = CharTokenizer(sorted(set(PROMPT + "abcdefghijklmnopqrstuvwxyz ")))
    model = random_model(GPTConfig.modern(block_size=64, vocab_size=tok.vocab_size, n_layer=3, n_head=2, n_embd=16),
                         seed=2, std=0.4)
    ids = tok.encode(PROMPT)
    rec = NextTokenRecorder(temperature=0.8, top_k=10)
    out = model.generate(torch.tensor([ids]), 24, seed=0, temperature=0.8, top_k=10, on_step=rec)[0].tolist()
    view = attention_view(model, tok, out, len(ids), rec.steps, rec.settings(), title="browser test")
    path = tmp_path_factory.mktemp("page") / "attention.html"
    write_picture(path, view)
    return dict(path=path, maps=view.maps, view=view, n_prompt=len(ids))


def open_page(browser, path: Path) -> list[str]:
    """Load the page; returns the URLs requested on its behalf (Chromium's own chrome:// pages left out)."""
    browser.get_log("performance")  # empties the log
    browser.get(path.as_uri())
    requests = []
    for entry in browser.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            params = message["params"]
            if not params.get("documentURL", "").startswith("chrome://"):
                requests.append(params["request"]["url"])
    return requests


def shown_weights(browser) -> list[str]:
    return browser.execute_script("return [...document.querySelectorAll('#text .tok')].map(s => s.dataset.w);")


def assert_row(weights: list[str], row: np.ndarray, i: int) -> None:
    """Token spans 0..i show row i (4 decimals, from weights stored to 1/10000); later ones show nothing."""
    shown = np.array([float(w) for w in weights[:i + 1]])
    np.testing.assert_allclose(shown, row[:i + 1], atol=1.01e-4)
    assert all(w == "" for w in weights[i + 1:])


def test_page_loads_from_disk_with_no_errors_and_no_requests(browser, page) -> None:
    requests = open_page(browser, page["path"])
    assert requests == [page["path"].as_uri()]  # the file itself, nothing else
    assert browser.title == "browser test"
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert errors == []
    labels = browser.execute_script("return [...document.querySelectorAll('#text .tok')].map(s => s.textContent);")
    assert labels == page["view"].labels
    assert browser.execute_script("return document.querySelectorAll('img, iframe, link, script[src]').length;") == 0


def test_clicking_token_i_shows_row_i(browser, page) -> None:
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    open_page(browser, page["path"])
    maps = page["maps"]  # (L, H, T, T)
    spans = browser.find_elements(By.CSS_SELECTOR, "#text .tok")
    T = len(spans)
    assert T == maps.shape[-1]
    for i in (0, 7, page["n_prompt"], T - 1):  # averaged over every layer and head: the default view
        spans[i].click()
        assert "sel" in spans[i].get_attribute("class")
        assert_row(shown_weights(browser), maps.mean(axis=(0, 1))[i], i)
    Select(browser.find_element(By.ID, "layer")).select_by_value("2")
    Select(browser.find_element(By.ID, "head")).select_by_value("1")
    for i in (3, T - 2):
        spans[i].click()
        assert_row(shown_weights(browser), maps[2, 1, i], i)
    ActionChains(browser).move_to_element(spans[10]).perform()  # hovering previews another row
    assert_row(shown_weights(browser), maps[2, 1, 10], 10)
    Select(browser.find_element(By.ID, "head")).select_by_value("avg")
    spans[12].click()
    assert_row(shown_weights(browser), maps[2].mean(axis=0)[12], 12)
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert errors == []


def test_generated_token_shows_the_samplers_candidates(browser, page) -> None:
    from selenium.webdriver.common.by import By

    open_page(browser, page["path"])
    i = page["n_prompt"] + 5
    browser.find_elements(By.CSS_SELECTOR, "#text .tok")[i].click()
    rows = browser.find_elements(By.CSS_SELECTOR, "#cand tr")
    cand = page["view"].candidates[i]
    shown = [r.find_elements(By.TAG_NAME, "td")[1].text for r in rows[1:6]]
    assert shown == cand["labels"]
    chosen = browser.find_elements(By.CSS_SELECTOR, "#cand tr.chosen td")
    assert chosen[1].text == cand["chosen_label"] and "drawn" in chosen[-1].text
    p_model = [r.find_elements(By.TAG_NAME, "td")[3].text for r in rows[1:6]]
    assert [float(p.rstrip("%")) for p in p_model] == pytest.approx([100 * p for p in cand["p_model"]], abs=0.06)
    browser.find_elements(By.CSS_SELECTOR, "#text .tok")[1].click()
    assert "part of the prompt" in browser.find_element(By.ID, "cand").text


def test_screenshot_is_not_blank(browser, page) -> None:
    from PIL import Image
    from selenium.webdriver.common.by import By

    open_page(browser, page["path"])
    browser.find_elements(By.CSS_SELECTOR, "#text .tok")[page["n_prompt"] + 3].click()
    img = Image.open(io.BytesIO(browser.get_screenshot_as_png())).convert("RGB")
    assert img.width >= 1000 and img.height >= 600
    colours = img.getcolors(maxcolors=1 << 22)
    assert len(colours) > 100  # text, shades, the map: many colours
    assert max(count for count, _ in colours) < 0.9 * img.width * img.height  # no single colour fills the page
