"""The HTML report as a person sees it: rendered by a real headless Chromium.

Needs Debian's ``chromium`` package (``apt-get install -y chromium``); the test FAILS without it
(it is part of the test setup, not optional).

How the page is checked, in one Chromium run per page (``--screenshot`` and ``--dump-dom``):

* A copy of the page gets a probe ``<script>`` as the first element of ``<head>``. The report
  itself has no script and a Content-Security-Policy meta tag that forbids scripts; a script
  placed *before* that tag still runs (a meta CSP applies to what follows it). The probe records
  uncaught errors, failed resource loads, CSP violations and ``console.error`` calls, and on
  ``load`` writes them into ``document.title`` as JSON together with every ``<img>``'s
  ``naturalWidth`` / ``naturalHeight``, the resources the page fetched and its scroll width.
  ``--dump-dom`` prints the DOM after load, so the title is read back from stdout.
* Chromium's own log (``--enable-logging=stderr --v=0``) must not contain a ``CONSOLE`` line
  (console messages, CSP violations) or ``Uncaught``.
* The screenshot (1280 x 2000) is decoded with Pillow: right size, not a single colour.

A deliberately broken page checks that the probe does report errors (so a pass is meaningful).
"""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

WIDTH, HEIGHT = 1280, 2000
INSTALL = "apt-get install -y chromium"

PROBE = """
(function () {
  var errors = [];
  window.addEventListener("error", function (ev) {
    var t = ev.target;
    if (t && t !== window && t.tagName) {
      errors.push("failed to load " + t.tagName + " " + String(t.src || t.href || "").slice(0, 80));
    } else {
      errors.push("uncaught: " + ev.message);
    }
  }, true);
  window.addEventListener("unhandledrejection", function (ev) { errors.push("unhandled rejection: " + ev.reason); });
  document.addEventListener("securitypolicyviolation", function (ev) {
    errors.push("CSP violation: " + ev.violatedDirective + " " + ev.blockedURI);
  });
  var original = console.error;
  console.error = function () {
    errors.push("console.error: " + Array.prototype.join.call(arguments, " "));
    return original.apply(console, arguments);
  };
  window.addEventListener("load", function () {
    var images = Array.prototype.map.call(document.images, function (i) { return [i.naturalWidth, i.naturalHeight]; });
    var resources = performance.getEntriesByType("resource").map(function (r) { return r.name.slice(0, 120); });
    var root = document.documentElement;
    document.title = "PROBE" + JSON.stringify({errors: errors, images: images, resources: resources,
      scrollWidth: root.scrollWidth, clientWidth: root.clientWidth});
  });
})();
"""


def chromium() -> str:
    path = shutil.which("chromium")
    if path is None:
        pytest.fail(f"Chromium is needed to test the HTML report; install it with '{INSTALL}'")
    return path


def with_probe(page: str) -> str:
    head = page.index("<head>") + len("<head>")
    return page[:head] + "\n<script>" + PROBE + "</script>" + page[head:]


def render(page: str, tmp: Path, name: str) -> tuple[dict[str, Any], Path, str]:
    """Load ``page`` (with the probe) in headless Chromium: (probe result, screenshot, Chromium log)."""
    source = tmp / f"{name}.html"
    source.write_text(with_probe(page), encoding="utf-8")
    shot = tmp / f"{name}.png"
    cmd = [
        chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars",
        f"--user-data-dir={tmp / 'chromium-profile'}", f"--window-size={WIDTH},{HEIGHT}",
        "--enable-logging=stderr", "--v=0", "--virtual-time-budget=15000",
        f"--screenshot={shot}", "--dump-dom", source.resolve().as_uri(),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, f"chromium failed ({proc.returncode}): {proc.stderr[-2000:]}"
    match = re.search(r"<title>PROBE(.*?)</title>", proc.stdout, re.S)
    assert match, f"the probe did not report (page not loaded?): {proc.stdout[:500]!r}"
    return json.loads(html.unescape(match.group(1))), shot, proc.stderr


def console_lines(log: str) -> list[str]:
    return [line for line in log.splitlines() if ":CONSOLE" in line or "Uncaught" in line]


def check_screenshot(shot: Path) -> None:
    assert shot.is_file() and shot.stat().st_size > 10_000
    with Image.open(shot) as img:
        assert img.size == (WIDTH, HEIGHT)
        colours = img.convert("RGB").getcolors(maxcolors=1 << 18)
    assert colours is None or len(colours) > 50, "the screenshot is (nearly) a single colour"


@pytest.fixture(scope="module")
def demo_html(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The report.html that `quant run` writes for the embedded demo with its default options
    (--method auto; matplotlib is a core dependency), on smaller data to stay fast."""
    from quant import api
    from quant.config import DataOptions

    out = tmp_path_factory.mktemp("demo")
    api.run(
        out=out,
        calib_data=DataOptions("demo:calib", max_samples=100),
        eval_data=DataOptions("demo:eval", max_samples=96, batch_size=32),
    )
    return (out / "report.html").read_text(encoding="utf-8")


def test_demo_report_loads_without_errors_and_every_image_shows(demo_html: str, tmp_path: Path) -> None:
    # the default install draws the charts: no "Charts need matplotlib" note, the per-layer chart,
    # the histograms, and the methods-against-fidelity table of the default --method auto
    assert "Charts need matplotlib" not in demo_html
    alts = re.findall(r'<img src="data:image/png;base64,[^"]+" alt="([^"]*)"', demo_html)
    assert "bar chart of SQNR per layer" in alts
    assert sum(a.startswith("histogram of ") for a in alts) >= 2
    assert 'id="methods"' in demo_html and "auto (per tensor)" in demo_html
    result, shot, log = render(demo_html, tmp_path, "demo")
    assert result["errors"] == []
    assert console_lines(log) == []
    expected = demo_html.count("<img ")
    assert expected >= 3  # the per-layer chart and the worst layers' histograms
    assert len(result["images"]) == expected
    assert all(w > 0 and h > 0 for w, h in result["images"]), result["images"]
    assert result["resources"] == []  # self-contained: nothing fetched
    assert result["scrollWidth"] <= result["clientWidth"], "the page scrolls sideways at 1280 px"
    check_screenshot(shot)


def test_partial_report_renders_too(tmp_path: Path) -> None:
    from report_fixtures import make_report

    from quant.report.html import render_html

    result, shot, log = render(render_html(make_report()), tmp_path, "partial")
    assert result["errors"] == [] and console_lines(log) == []
    assert result["images"] == []
    check_screenshot(shot)


def test_probe_reports_a_broken_page(demo_html: str, tmp_path: Path) -> None:
    broken = demo_html.replace(
        "<main>", '<main><img src="missing.png" alt="missing"><script>noSuchFunction();</script>', 1
    )
    result, _, log = render(broken, tmp_path, "broken")
    assert any("failed to load IMG" in e for e in result["errors"])
    assert any("CSP violation" in e for e in result["errors"])  # the inline script is refused
    assert [0, 0] in result["images"]
    assert console_lines(log)
