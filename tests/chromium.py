"""A real headless Chromium for the tests that check what a page draws, and a PNG reader
(stdlib: zlib and struct) to look at its screenshots.

Debian's `chromium` package; `make test` installs it (the Makefile's system-deps). A test
skips only where it cannot be installed (not root); as root a missing browser fails, so a
CI run cannot pass without looking. The browser is kept off every network: no proxy, no
background requests (updates, safe browsing, metrics), a fresh profile each run, and the
pages it is given reference nothing outside themselves.
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import struct
import subprocess
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

NAMES = ("chromium", "chromium-browser")
TIMEOUT = 120.0
#: Flags that keep the browser to the file it is given: nothing it does reaches a network.
QUIET_FLAGS = (
    "--headless",
    "--disable-gpu",
    "--no-sandbox",
    "--no-proxy-server",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-default-apps",
    "--disable-extensions",
    "--disable-sync",
    "--disable-breakpad",
    "--disable-domain-reliability",
    "--disable-client-side-phishing-detection",
    "--no-first-run",
    "--no-default-browser-check",
    "--metrics-recording-only",
    "--mute-audio",
    "--hide-scrollbars",
    "--force-device-scale-factor=1",
    "--force-color-profile=srgb",
)


def find_chromium() -> str | None:
    for name in NAMES:
        if path := shutil.which(name):
            return path
    return None


def require_chromium() -> str:
    """The browser's path; skips where it cannot be installed, fails where it could be."""
    path = find_chromium()
    if path is not None:
        return path
    if os.geteuid() != 0:
        pytest.skip(
            "needs Debian's chromium package, which only root can install: "
            "sudo apt-get install chromium (make system-deps does it as root)"
        )
    pytest.fail(
        "chromium is not installed: `make system-deps` installs it (apt-get install chromium)"
    )


def _run(args: list[str]) -> subprocess.CompletedProcess[str]:
    with tempfile.TemporaryDirectory(prefix="tailwatch-chromium-") as profile:
        env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")} | {
            "HOME": profile
        }
        done = subprocess.run(
            [require_chromium(), *QUIET_FLAGS, f"--user-data-dir={profile}", *args],
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            check=False,
            env=env,
        )
    return done


def dump_dom(page: Path, width: int = 1280, height: int = 900) -> str:
    """The page's DOM once loaded and laid out (scripts in it have run)."""
    done = _run([f"--window-size={width},{height}", "--dump-dom", page.resolve().as_uri()])
    assert done.returncode == 0 and done.stdout, done.stderr[-2000:]
    return done.stdout


def screenshot(page: Path, out: Path, width: int = 1280, height: int = 900) -> Path:
    """A PNG of the page's first `width` x `height` pixels."""
    done = _run([f"--window-size={width},{height}", f"--screenshot={out}", page.resolve().as_uri()])
    assert done.returncode == 0 and out.is_file(), done.stderr[-2000:]
    return out


#: Run in Chromium after layout: where each drawn thing landed, relative to its SVG, as
#: JSON in the DOM that --dump-dom prints. Added to a copy of the page: the report itself
#: has no script.
MEASURE = """
<script>
addEventListener("load", () => {
  const out = [...document.querySelectorAll("svg.timeline")].map(svg => {
    const box = svg.getBoundingClientRect();
    const centre = el => { const b = el.getBoundingClientRect();
                           return (b.left + b.right) / 2 - box.left; };
    return {
      service: svg.dataset.service, left: box.left, top: box.top,
      title: svg.querySelector("title").textContent,
      desc: svg.querySelector("desc").textContent,
      bands: [...svg.querySelectorAll("rect.band")].map(r => {
        const b = r.getBoundingClientRect();
        return [b.left - box.left, b.right - box.left]; }),
      markers: [...svg.querySelectorAll("g.marker")].map(g => [g.dataset.kind, centre(g)]),
      recoveries: [...svg.querySelectorAll("g.recovery line")].map(centre),
      lines: [...svg.querySelectorAll("path.line")].map(p => p.getTotalLength()),
    };
  });
  const pre = document.createElement("pre");
  pre.id = "measured";
  pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
});
</script>
"""


def measured(page: Path, tmp_path: Path) -> list[dict[str, Any]]:
    """Where Chromium drew each timeline's bands, markers, recoveries and lines (MEASURE),
    one dict per SVG, in page order."""
    probe = tmp_path / "measure.html"
    probe.write_text(page.read_text().replace("</body>", MEASURE + "</body>"))
    dom = dump_dom(probe)
    found = re.search(r'<pre id="measured">(.*?)</pre>', dom, re.S)
    assert found, dom[-2000:]
    return list(json.loads(html.unescape(found.group(1))))


@dataclass(frozen=True)
class Image:
    width: int
    height: int
    rows: list[bytes]  # RGB, 3 bytes a pixel

    def pixel(self, x: int, y: int) -> tuple[int, int, int]:
        row = self.rows[y]
        return row[3 * x], row[3 * x + 1], row[3 * x + 2]


def _paeth(a: int, b: int, c: int) -> int:
    p = a + b - c
    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
    if pa <= pb and pa <= pc:
        return a
    return b if pb <= pc else c


def read_png(path: Path) -> Image:
    """An 8-bit RGB or RGBA, non-interlaced PNG (what Chromium writes), as RGB rows."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat = 8, b""
    width = height = depth = colour = interlace = 0
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        body = data[pos + 8 : pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat += body
        elif kind == b"IEND":
            break
    assert depth == 8 and colour in (2, 6) and interlace == 0, (depth, colour, interlace)
    channels = 3 if colour == 2 else 4
    stride = width * channels
    raw = zlib.decompress(idat)
    rows: list[bytes] = []
    previous = bytearray(stride)
    for y in range(height):
        filtering = raw[y * (stride + 1)]
        line = bytearray(raw[y * (stride + 1) + 1 : (y + 1) * (stride + 1)])
        for i in range(stride):
            left = line[i - channels] if i >= channels else 0
            up = previous[i]
            corner = previous[i - channels] if i >= channels else 0
            if filtering == 1:
                line[i] = (line[i] + left) & 0xFF
            elif filtering == 2:
                line[i] = (line[i] + up) & 0xFF
            elif filtering == 3:
                line[i] = (line[i] + (left + up) // 2) & 0xFF
            elif filtering == 4:
                line[i] = (line[i] + _paeth(left, up, corner)) & 0xFF
        previous = line
        if channels == 4:
            rgb = bytearray()
            for i in range(0, stride, 4):
                rgb += line[i : i + 3]
            rows.append(bytes(rgb))
        else:
            rows.append(bytes(line))
    return Image(width, height, rows)
