"""``t5peft report --html``: one self-contained page from the real 13-method smoke results (docs/smoke), checked
as a file (nothing loaded from outside, every figure embedded, every method and run present) and, opt-in with
``-m browser``, rendered in headless Chromium with a screenshot in which every method's colour shows.

Why the browser test is opt-in rather than part of ``.ci/run``: Chromium is a system package (Debian's
``chromium``, some 300 MB with its libraries, minutes to install as root), which a CI that builds a fresh venv
should not install on every run; the file checks below run everywhere and the screenshot is taken where a
browser is (``docs/report/``, refreshed by ``-m browser`` with ``T5PEFT_SCREENSHOT=docs/report/report.png``).
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest
from PIL import Image

from t5peft.cli import main
from t5peft.experiments.figures import method_styles
from t5peft.experiments.html import HTML_FILE

REPO = Path(__file__).resolve().parent.parent
SMOKE = REPO / "docs" / "smoke" / "t5_peft_results.json"
CHROMIUM = next((p for p in ("/usr/bin/chromium", shutil.which("chromium") or "") if p and Path(p).is_file()), None)


class Page(HTMLParser):
    """What the page holds: every URL it would load, its images, its elements' ids, its open/close balance."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []
        self.images: list[str] = []
        self.ids: list[str] = []
        self.details = 0
        self.open: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        values = dict(attrs)
        for key in ("src", "href", "data", "poster"):
            if key in values:
                self.urls.append(values[key])
        if tag == "img":
            self.images.append(values["src"])
        if "id" in values:
            self.ids.append(values["id"])
        self.details += tag == "details"
        if tag not in ("meta", "img", "br", "link"):
            self.open.append(tag)

    def handle_endtag(self, tag):
        assert self.open and self.open[-1] == tag, (tag, self.open[-3:])
        self.open.pop()

    def handle_data(self, data):
        self.text.append(data)


@pytest.fixture(scope="module")
def page(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("html")
    shutil.copyfile(SMOKE, folder / SMOKE.name)
    assert main(["report", str(folder / SMOKE.name), "--html"]) == 0
    return folder / HTML_FILE


def test_page_is_self_contained_and_holds_every_method_and_run(page):
    text = page.read_text(encoding="utf-8")
    results = json.loads(SMOKE.read_text())
    parsed = Page()
    parsed.feed(text)
    parsed.close()
    assert parsed.open == [], "every element is closed"
    assert all(url.startswith("data:image/png;base64,") for url in parsed.urls), "nothing loaded from outside"
    assert not re.search(r"<script|<link|@import|url\(", text)
    assert len(parsed.images) == 2 + len(results["summary"])  # figures 1 and 2, one curve figure per method
    for uri in parsed.images:
        Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))).verify()
    assert parsed.ids == [f"method-{m}" for m in results["summary"]]
    assert parsed.details == len(results["runs"]) + 1  # every run's settings, and the plan
    words = " ".join(parsed.text)
    for run in results["runs"]:
        assert f"{run['method']} seed {run['seed']}, lr {run['learning_rate']:g}: test accuracy " in words
        assert f"{100 * run['test_accuracy']:.2f}%" in words
    assert results["environment"]["device_name"] in words and results["environment"]["git_commit"] in words
    assert text.index("Weights: <strong>random-init</strong>") < text.index("<h2>Results")  # before any number


@pytest.mark.browser
@pytest.mark.skipif(CHROMIUM is None, reason="no chromium (Debian package `chromium`); this test is opt-in")
def test_page_renders_in_headless_chromium_with_every_method_visible(page, tmp_path):
    shot = Path(os.environ.get("T5PEFT_SCREENSHOT") or tmp_path / "report.png").resolve()
    shot.parent.mkdir(parents=True, exist_ok=True)
    command = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--hide-scrollbars",
        "--window-size=1400,7000",
        f"--screenshot={shot}",
        page.resolve().as_uri(),
    ]
    subprocess.run(command, check=True, capture_output=True, timeout=120)
    image = Image.open(shot).convert("RGB")
    assert image.size == (1400, 7000)
    styles = method_styles(list(json.loads(SMOKE.read_text())["summary"]))
    counts: dict[tuple, int] = {}
    for pixel in image.getdata():
        counts[pixel] = counts.get(pixel, 0) + 1
    for method, style in styles.items():
        rgb = tuple(int(style["color"][i : i + 2], 16) for i in (1, 3, 5))
        assert counts.get(rgb, 0) >= 150, f"{method}'s colour {style['color']} is hardly on the page"
    # the page is drawn (not blank): white background, but text and figures on a good share of it
    white = counts.get((255, 255, 255), 0)
    assert white < 0.9 * image.size[0] * image.size[1]
    if os.environ.get("T5PEFT_SCREENSHOT"):  # the copy kept in docs/: palette PNG, a fraction of the size
        image.quantize(colors=128).save(shot, optimize=True)
