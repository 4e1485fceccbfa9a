"""A real run's TensorBoard in a real browser: `tensorboard --logdir <run>` on the loopback, opened in
headless Chromium (Debian's package, as tests/test_viz_browser.py), which must show the run's series.

Skips, saying why, where Chromium or its driver is missing or the loopback server cannot start.
Set QUILLGPT_TENSORBOARD_PNG=docs/tensorboard.png to keep the screenshot (the README's picture).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

import train
from test_train import POEM, TINY
from test_viz_browser import browser  # noqa: F401  (the shared headless Chromium fixture)

SERVER_START_S = 120  # a deadline for the server to answer, not a measurement


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def tensorboard_run(tmp_path: Path):
    """A short run logged with --report_to=tensorboard, served by tensorboard on a free loopback port."""

    pytest.importorskip("tensorboard", reason="tensorboard is missing: pip install -e '.[dev]'")
    text = tmp_path / "poem.txt"
    text.write_text(POEM * 20, encoding="utf-8")
    out = tmp_path / "out"
    train.train(train.load_config(["--dataset=poem", f"--input={text}", f"--data_dir={tmp_path / 'data'}", *TINY,
                                   f"--out_dir={out}", "--max_iters=30", "--eval_interval=10",
                                   "--report_to=tensorboard"]), log_to_console=False)
    port = free_port()
    log = open(tmp_path / "tensorboard.log", "w+", encoding="utf-8")
    server = subprocess.Popen([sys.executable, "-m", "tensorboard.main", "--logdir", str(out), "--host", "127.0.0.1",
                               "--port", str(port)], stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # the loopback, never a proxy
    try:
        deadline = time.monotonic() + SERVER_START_S
        while True:
            if server.poll() is not None:
                log.seek(0)
                pytest.skip(f"tensorboard could not serve on 127.0.0.1:{port}: {log.read()[-300:]}")
            try:
                with direct.open(f"{url}/data/logdir", timeout=5):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.skip(f"tensorboard did not answer on 127.0.0.1:{port}")
                time.sleep(0.5)
        yield url
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()


def test_tensorboard_shows_the_runs_loss_series(browser, tensorboard_run: str, tmp_path: Path) -> None:  # noqa: F811
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(tensorboard_run)  # its default dashboard: every scalar tag as a card

    def lines(driver) -> set[str]:
        return {line.strip() for line in driver.find_element(By.TAG_NAME, "body").text.splitlines()}

    # the tags of metrics.jsonl's log and eval events, each a card of the dashboard
    wanted = {"loss", "val_loss", "val_bpb", "grad_norm"}
    WebDriverWait(browser, 90, poll_frequency=0.5).until(lambda d: wanted <= lines(d))
    # the tag filter leaves the loss series only (and the picture shows them)
    browser.find_element(By.CSS_SELECTOR, "input[placeholder^='Filter tags']").send_keys("loss", Keys.ESCAPE)
    WebDriverWait(browser, 60, poll_frequency=0.5).until(
        lambda d: {"loss", "train_loss", "val_loss"} <= lines(d) and not {"grad_norm", "flops_per_sec"} & lines(d))
    shot = Path(os.environ.get("QUILLGPT_TENSORBOARD_PNG") or tmp_path / "tensorboard.png")
    browser.save_screenshot(str(shot))
    from PIL import Image

    with Image.open(shot) as im:
        assert im.size[0] >= 800 and len(im.convert("RGB").getcolors(1 << 24) or ()) > 20  # a page, not a blank
