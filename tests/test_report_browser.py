"""report.html in a real browser: headless Chromium loads it, every plot decodes and has ink, the page
screenshot is not blank, and the console stays free of errors."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest
from report_samples import sample_report

from titan_conformance.report.write import write_report

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="needs headless Chromium on PATH (Debian package `chromium`; .ci/run installs it)"
)
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--window-size=1200,3000")

# Test-only: the report itself has no scripts. After load, each plot reports its decoded size and
# the fraction of its pixels that are not white (drawn through a canvas).
PROBE = """<script>
window.addEventListener('load', () => {
  for (const img of document.querySelectorAll('img.plot')) {
    const c = document.createElement('canvas');
    c.width = img.naturalWidth; c.height = img.naturalHeight;
    const ctx = c.getContext('2d');
    let ink = 0;
    if (c.width && c.height) {
      ctx.drawImage(img, 0, 0);
      const px = ctx.getImageData(0, 0, c.width, c.height).data;
      for (let i = 0; i < px.length; i += 4) if (px[i] < 240 || px[i + 1] < 240 || px[i + 2] < 240) ink++;
    }
    img.setAttribute('data-probe', `${c.width}x${c.height}:${(ink / Math.max(1, c.width * c.height)).toFixed(4)}`);
  }
});
</script></body>"""


def _chromium(tmp_path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [CHROMIUM, *FLAGS, f"--user-data-dir={tmp_path / 'chromium-profile'}", *args],
        capture_output=True, text=True, timeout=180,
    )


def test_report_html_renders_every_plot_in_chromium(tmp_path):
    from PIL import Image

    page = write_report(sample_report(), tmp_path / "report") / "report.html"
    shot = tmp_path / "shot.png"
    run = _chromium(tmp_path, "--enable-logging=stderr", "--v=0", f"--screenshot={shot}", page.as_uri())
    assert shot.is_file(), run.stderr[-2000:]
    console = [line for line in run.stderr.splitlines() if "CONSOLE" in line or "Failed to load" in line]
    assert not console, console
    image = Image.open(shot).convert("L")
    dark = sum(image.histogram()[:200]) / (image.width * image.height)
    assert image.size == (1200, 3000) and dark > 0.01, f"screenshot looks blank ({dark:.2%} dark pixels)"

    probe = tmp_path / "probe.html"
    probe.write_text(page.read_text().replace("</body>", PROBE))
    dom = _chromium(tmp_path, "--virtual-time-budget=10000", "--dump-dom", probe.as_uri()).stdout
    plots = re.findall(r'<figure id="(\w+)">\s*<figcaption>[^<]*</figcaption>\s*<img class="plot"[^>]*data-probe="(\d+)x(\d+):([\d.]+)"', dom)
    assert [p[0] for p in plots] == [
        "logprob_histogram", "logprob_per_position", "capture_size_diffs", "startup_phases", "step_times"], dom[:3000]  # (no localized failure: no localization image)
    for key, width, height, ink in plots:
        assert int(width) >= 400 and int(height) >= 100, key
        assert 0.01 < float(ink) < 0.9, f"plot {key} looks blank or solid ({ink} of its pixels drawn)"
