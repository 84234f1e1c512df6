"""Take docs/explorer.png: the explorer page for toy-llava on held-out scene 0, in headless Chromium.

    PYTHONPATH=src python docs/explorer_screenshot.py [--chromium /usr/bin/chromium] [--out docs/explorer.png]

tau 16: on toy-llava no image token reaches phi 20; sparse visual sinks appear
at tau 16 in layers 23-24, so the page is shown at layer 23, after VAR.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import sinklens as sl
from sinklens.data.scenes import scene


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "explorer.png")
    parser.add_argument("--layer", type=int, default=23)
    parser.add_argument("--token", default=" blue", help="the generated token to pick as the query")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    page_data = sl.explore("toy-llava", scene("heldout", 0).image(), "Describe the image.",
                           find=sl.FindSinks(tau=16.0), max_new_tokens=16)  # fmt: skip
    with tempfile.TemporaryDirectory() as folder, sync_playwright() as playwright:
        path = page_data.save(folder)
        browser = playwright.chromium.launch(executable_path=args.chromium, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1180, "height": 760})
        page.goto(path.as_uri())
        page.wait_for_selector("body[data-state=ready]")
        page.click("#view-var")
        queries = page.query_selector_all("#tokens .tok.query")
        picked = [q for q in queries if q.inner_text() == args.token.strip() or q.text_content() == args.token]
        (picked[0] if picked else queries[-1]).click()
        while int(page.eval_on_selector("#status", "e => e.dataset.layer")) < args.layer:
            page.keyboard.press("ArrowUp")
        page.screenshot(path=str(args.out), full_page=True)
        browser.close()
    print(f"screenshot written to {args.out} (page: {page_data.sizes['html'] / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
