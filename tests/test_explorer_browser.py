"""The explorer page in a real headless browser: Debian's Chromium driven by Playwright.

Skips, saying why, where Playwright or Chromium is missing (`.ci/run` installs
Chromium with apt-get, tolerating failure); tests/test_explorer.py still checks
the page's data against the runs in Python. Never runs `playwright install`.
"""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest
import torch

import sinklens as sl
from conftest import QUESTION, loaded
from explorer_oracle import oracle_run
from sinklens.explorer import read_data
from sinklens.explorer.pack import decode_view
from sinklens.builtin import demo_scene

STEPS = 3
CHROMIUM = os.environ.get("SINKLENS_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")

pytestmark = pytest.mark.slow  # a real browser

sync_api = pytest.importorskip(
    "playwright.sync_api", reason="Playwright is not installed (pip install -c constraints.txt playwright); "
    "the page's data is still checked by tests/test_explorer.py"
)  # fmt: skip
if CHROMIUM is None:
    pytest.skip(
        "Chromium is not installed (apt-get install chromium; .ci/run tries to); "
        "the page's data is still checked by tests/test_explorer.py",
        allow_module_level=True,
    )


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield browser
        browser.close()


def _open(browser, path):
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    errors = []
    page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.on("request", lambda request: errors.append(f"request {request.url}") if not request.url.startswith(("file:", "data:")) else None)
    page.goto(path.as_uri())
    page.wait_for_selector("body[data-state=ready]", timeout=20_000)
    return page, errors


def _status(page):
    return page.eval_on_selector("#status", "e => ({...e.dataset})")


def _cells(page):
    """Per visual key (in key order): the value the cell holds, its fill opacity, and whether it is outlined."""
    cells = page.eval_on_selector_all(
        "rect.cell", "els => els.map(e => [+e.dataset.key, +e.dataset.v, +e.getAttribute('fill-opacity'), e.classList.contains('sink')])"
    )
    cells.sort()
    return np.array([c[1] for c in cells]), np.array([c[2] for c in cells]), np.array([c[3] for c in cells])


def _set_layer(page, layer):
    while int(_status(page)["layer"]) < layer:
        page.keyboard.press("ArrowUp")
    while int(_status(page)["layer"]) > layer:
        page.keyboard.press("ArrowDown")


@pytest.fixture(scope="module")
def tiny_page(tmp_path_factory):
    lm = loaded("tiny-llava")
    image = demo_scene("tiny-llava")
    explorer = sl.explore(lm, image, QUESTION, max_new_tokens=STEPS)
    path = explorer.save(tmp_path_factory.mktemp("explore"))
    inputs = lm.prepare(image, QUESTION)
    oracles = {"base": oracle_run(lm, inputs, max_new_tokens=STEPS),
               "var": oracle_run(lm, inputs, var=sl.VAR(), max_new_tokens=STEPS)}  # fmt: skip
    return lm, path, read_data(explorer.html), oracles


def _check_map(page, data, oracles, view, q, layer, head):
    values, opacity, outlined = _cells(page)
    slot = head if head is not None else data["n_heads"]
    expected = decode_view(data, view)["image"][q, layer, slot]
    np.testing.assert_allclose(values, expected, rtol=1e-6, atol=1e-9)  # what is drawn is the page's data
    position = data["views"][view]["queries"][q]
    row = oracles[view].row(position, layer)  # and the run's numbers, within the stated quantisation bound
    run = (row[head] if head is not None else row.mean(0))[data["visual_keys"]].numpy()
    assert np.all(np.abs(values - run) <= run.max() / 510 * (1 + 1e-5) + 1e-8)
    if not page.is_checked("#shared-scale"):
        np.testing.assert_allclose(opacity, 0.85 * values / values.max(), atol=1e-4)
    np.testing.assert_array_equal(outlined, oracles[view].sinks[layer][data["visual_keys"]].numpy())
    return values


def test_page_loads_and_shows_the_data(browser, tiny_page):
    lm, path, data, oracles = tiny_page
    page, errors = _open(browser, path)
    assert len(page.query_selector_all("rect.cell")) == len(data["visual_keys"])
    # pick a token and a layer: the overlay holds that query's row of that layer
    page.click('#tokens .tok[data-q="2"]')
    _set_layer(page, 3)
    status = _status(page)
    assert (status["query"], status["layer"], status["head"], status["view"]) == ("2", "3", "mean", "base")
    first = _check_map(page, data, oracles, "base", 2, 3, None)
    page.click('#tokens .tok[data-q="4"]')
    _set_layer(page, 1)
    second = _check_map(page, data, oracles, "base", 4, 1, None)
    assert not np.allclose(first, second)
    page.select_option("#head", "2")
    _check_map(page, data, oracles, "base", 4, 1, 2)
    # arrow keys move the query
    page.keyboard.press("ArrowRight")
    assert _status(page)["query"] == "5"
    _check_map(page, data, oracles, "base", 5, 1, 2)
    assert errors == []
    page.close()


def test_var_toggle_changes_the_map_where_var_edited(browser, tiny_page):
    lm, path, data, oracles = tiny_page
    edited = decode_view(data, "var")["edited"]
    n_prompt = sum(1 for q in data["views"]["base"]["queries"] if q < data["prompt_length"])
    q, layer, head = (int(i) for i in np.argwhere(edited[:n_prompt])[0])  # a prompt query: the same token in both runs
    page, errors = _open(browser, path)
    page.click(f'#tokens .tok[data-q="{q}"]')
    _set_layer(page, layer)
    page.select_option("#head", str(head))
    before = _check_map(page, data, oracles, "base", q, layer, head)
    page.click("#view-var")
    assert _status(page)["view"] == "var" and _status(page)["query"] == str(q)
    after = _check_map(page, data, oracles, "var", q, layer, head)
    assert not np.allclose(before, after)
    assert "VAR edited this row" in page.inner_text("#stats") and "yes" in page.inner_text("#stats")
    page.keyboard.press("v")
    assert _status(page)["view"] == "base"
    np.testing.assert_array_equal(_cells(page)[0], before)
    page.check("#shared-scale")  # both views' maps on one scale: the larger maximum
    shared = max(before.max(), after.max())
    np.testing.assert_allclose(_cells(page)[1], 0.85 * before / shared, atol=1e-4)
    assert float(_status(page)["max"]) == pytest.approx(shared, rel=1e-6)
    assert errors == []
    page.close()


def test_tiles_of_llava_next_are_drawn(browser, tmp_path):
    lm = loaded("tiny-llava-next")
    explorer = sl.explore(lm, demo_scene("tiny-llava-next"), QUESTION, max_new_tokens=2)
    page, errors = _open(browser, explorer.save(tmp_path))
    tiles = page.eval_on_selector_all("svg.tile", "els => els.map(e => [e.dataset.tile, e.querySelectorAll('rect.cell').length])")
    assert tiles == [[t["name"], t["rows"] * t["cols"]] for t in explorer.data["images"][0]["tiles"]] == [["base", 36], ["tiles", 72]]
    assert errors == []
    page.close()
