"""Render an exported feature page in a real browser (headless Chromium) and check what it shows.

    python benchmarks/browser_check.py [--out DIR]

Builds feature statistics for a small SAE on the default model (30,000 tokens, a few seconds),
writes the self-contained page with `saekit.cards.write_feature_page`, then asks Chromium for

- the DOM after rendering (`--dump-dom`): every card is there, with its title, density line, the
  text of its top example and its interval headings, and the token planted with HTML in its text
  shows as text (escaped), not as markup;
- a screenshot (`--screenshot`): a non-blank image in which the activation shading (orange) shows.

Needs a Chromium binary (`chromium` on Debian/Ubuntu: `apt-get install chromium`); without one it
says so and exits with status 2. Exit status 0: all checks passed; 1: a check failed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from html.parser import HTMLParser
from pathlib import Path

import torch

import saekit
from saekit.cards import write_feature_page
from saekit.features import NO_TOKEN, feature_statistics
from saekit.sae import SAEConfig, create_sae
from saekit.store import collect_activations

HOOK = "blocks.3.hook_resid_post"
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
PLANTED = "<b>planted</b>"


class _Text(HTMLParser):
    """The rendered DOM's text, and how many elements carry each class."""

    def __init__(self):
        super().__init__()
        self.text: list[str] = []
        self.classes: dict[str, int] = {}
        self.skip = 0

    def handle_starttag(self, tag, attrs):
        if tag in ("style", "script"):
            self.skip += 1
        for name in (dict(attrs).get("class") or "").split():
            self.classes[name] = self.classes.get(name, 0) + 1

    def handle_endtag(self, tag):
        if tag in ("style", "script"):
            self.skip -= 1

    def handle_data(self, data):
        if not self.skip:
            self.text.append(data)


def browser_command(browser: str, profile: str) -> list[str]:
    # --no-sandbox: CI containers run as root, where Chromium's sandbox cannot start
    return [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
            f"--user-data-dir={profile}", "--hide-scrollbars"]


def build_page(out: Path) -> tuple[Path, object, list[int]]:
    torch.manual_seed(0)
    model, tokenizer = saekit.load_model()
    store = collect_activations(model, tokenizer, HOOK, 30_000, None, progress=False)
    sae = create_sae(SAEConfig(architecture="topk", d_in=128, d_sae=256, k=8, hook_name=HOOK))
    sae.init_weights(torch.Generator().manual_seed(0))
    stats = feature_statistics(sae, store, model, tokenizer, n_tokens=30_000)
    latents = [int(i) for i in stats.order("density")[:5]]
    stats.token_strings[int(stats.top_tokens[latents[0], 0, stats.left])] = PLANTED
    return write_feature_page(stats, latents, out / "features.html"), stats, latents


def check(stats, latents: list[int], dom: str, png: Path) -> list[str]:
    """What is wrong with the rendered page (an empty list when nothing is)."""
    parser = _Text()
    parser.feed(dom)
    text = "".join(parser.text)
    problems = []
    if parser.classes.get("sk-card") != len(latents):
        problems.append(f"expected {len(latents)} cards in the DOM, found {parser.classes.get('sk-card', 0)}")
    if PLANTED not in text or "<b>planted" in dom:
        problems.append(f"the planted token {PLANTED!r} should render as text, escaped")
    for i in latents:
        if f"Latent {i}" not in text:
            problems.append(f"card title 'Latent {i}' missing")
        if f"density {stats.density[i]:.4%}" not in text:
            problems.append(f"latent {i}: density line missing")
        tokens = [stats.token_str(int(t)) for t in stats.top_tokens[i, 0] if t != NO_TOKEN]
        shown = "".join(tokens).replace("\n", "\u21b5")
        if shown not in text:
            problems.append(f"latent {i}: top example {shown!r} missing")
    if text.count("random samples") < len(latents):
        problems.append("interval samples missing")
    if not png.is_file() or png.read_bytes()[:8] != b"\x89PNG\r\n\x1a\n":
        problems.append(f"no PNG screenshot at {png}")
    else:
        import matplotlib.image

        image = matplotlib.image.imread(png)[..., :3]
        if image.std() < 0.02:
            problems.append("the screenshot is blank")
        orange = (image[..., 0] > 0.9) & (image[..., 1] > 0.45) & (image[..., 1] < 0.85) & (image[..., 2] < 0.55)
        if orange.sum() < 200:
            problems.append(f"no activation shading visible in the screenshot ({int(orange.sum())} orange pixels)")
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    parser.add_argument("--out", default=None, help="folder for features.html and features.png (default: a temp dir)")
    args = parser.parse_args()
    browser = next((b for b in map(shutil.which, BROWSERS) if b), None)
    if browser is None:
        print(f"no Chromium found (looked for {', '.join(BROWSERS)}); install it, e.g. apt-get install chromium")
        return 2
    out = Path(args.out or tempfile.mkdtemp(prefix="saekit-browser-"))
    out.mkdir(parents=True, exist_ok=True)
    page, stats, latents = build_page(out)
    png = out / "features.png"
    with tempfile.TemporaryDirectory() as profile:
        base = browser_command(browser, profile)
        start = time.perf_counter()
        dom = subprocess.run([*base, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120,
                             check=True).stdout
        subprocess.run([*base, f"--screenshot={png}", "--window-size=1200,2400", page.as_uri()],
                       capture_output=True, timeout=120, check=True)
        seconds = time.perf_counter() - start
    problems = check(stats, latents, dom, png)
    print(f"{browser}: rendered {page} ({os.path.getsize(page):,} bytes, {len(latents)} cards) in {seconds:.1f} s; "
          f"screenshot {png}")
    for problem in problems:
        print("FAIL:", problem)
    print("browser check passed" if not problems else f"browser check failed ({len(problems)} problems)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
