"""The HTML reports in a real browser: headless Chromium driven by selenium loads each page from disk.

Skipped, with the reason, where Chromium, its chromedriver or selenium is missing; CI (.ci/run)
installs Debian's chromium and chromium-driver so that these always run there.
"""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
import pytest
from _report_helpers import CLASSES, page_data, tiny_config, write_mask_folders

CHROMIUM = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
CHROMEDRIVER = shutil.which("chromedriver")
if CHROMIUM is None or CHROMEDRIVER is None:
    pytest.skip("headless Chromium and its chromedriver are not installed (Debian: apt-get install chromium chromium-driver; "
                ".ci/run installs them)", allow_module_level=True)
webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install 'segkit[test]')")

from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402

# What each page must show, with a size: the chart, the heatmap, the tables.
RENDERED = {
    "evaluate_checkpoint": ["#class-bars", "#heatmap", "#heatmap rect.cell", "#image-table tbody tr", ".shot img"],
    "evaluate_folders": ["#class-bars", "#heatmap", "#heatmap rect.cell", "#image-table tbody tr", ".shot img"],
    "report": ["#class-bars", "#heatmap", "svg.chart.line", "#class-curves svg", "#epoch-table tbody tr", "img.figure"],
    "compare": ["#delta-chart", "#delta-chart rect", "#headline-table", "#class-table tbody tr"],
}


@pytest.fixture(scope="module")
def pages(tmp_path_factory) -> dict[str, Path]:
    """The four kinds of page: a tiny trained run, its checkpoint evaluated, mask folders evaluated, a comparison."""
    from segkit.config import config_from_dict
    from segkit.data import make_synthetic
    from segkit.engine import html
    from segkit.engine.evaluate import evaluate_checkpoint, evaluate_folders
    from segkit.engine.report import write_report
    from segkit.engine.runs import compare_page, load_compared, run_page
    from segkit.engine.train import train

    root = tmp_path_factory.mktemp("pages")
    make_synthetic(root / "data", n=8, size=64, seed=1)
    cfg = config_from_dict(tiny_config(root / "data", epochs=2), ["output.plots=true", "output.num_vis=2"])
    train(cfg, root / "run", progress=False)
    out = {"report": html.write_page(run_page(root / "run"), root / "report.html")}

    report = evaluate_checkpoint(root / "run" / "best.pt")
    worst, best = html.shown_images(report, 5)
    overlays = html.checkpoint_overlays(root / "run" / "best.pt", [n for n, _ in worst + best])
    out["evaluate_checkpoint"] = html.write_evaluation_html(report, root / "checkpoint.html", overlays)

    masks = root / "masks"
    write_mask_folders(masks, 40, size=48, images=True)
    report = evaluate_folders(masks / "pred", masks / "gt", 3, class_names=CLASSES)
    worst, best = html.shown_images(report, 4)
    overlays, notes = html.folder_overlays([n for n, _ in worst + best], masks / "pred", masks / "gt", 3, images_dir=masks / "images")
    out["evaluate_folders"] = html.write_evaluation_html(report, root / "folders.html", overlays, 4, notes)
    write_report(report, root / "a.json", plots=False)
    other = root / "other"
    write_mask_folders(other, 40, size=48, seed=0, noise=0.3)
    write_report(evaluate_folders(other / "pred", other / "gt", 3, class_names=CLASSES), root / "b.json", plots=False)
    compared = [load_compared(p) for p in (root / "a.json", root / "b.json", root / "run")]
    out["compare"] = html.write_page(compare_page(compared), root / "compare.html")
    return out


@pytest.fixture(scope="module")
def browser():
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1300,1000",
                "--disable-extensions", "--no-first-run"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def load(browser, path: Path) -> None:
    browser.get(path.as_uri())
    browser.get_log("browser")  # nothing of the previous page


@pytest.mark.parametrize("name", list(RENDERED))
def test_page_renders_without_errors(browser, pages, name, tmp_path):
    browser.get(pages[name].as_uri())
    errors = [entry for entry in browser.get_log("browser") if entry["level"] in ("SEVERE", "ERROR")]
    assert not errors, errors
    for selector in RENDERED[name]:
        elements = browser.find_elements(By.CSS_SELECTOR, selector)
        assert elements, f"{name}: no {selector}"
        size = elements[0].size
        assert size["width"] > 0 and size["height"] > 0, f"{name}: {selector} has no size ({size})"
    broken = browser.execute_script("return Array.from(document.images).filter(i => !(i.complete && i.naturalWidth > 0)).length")
    assert broken == 0
    # the page is drawn: the screenshot is far from one flat colour
    from PIL import Image

    shot = Image.open(io.BytesIO(browser.get_screenshot_as_png())).convert("L")
    shot.save(tmp_path / f"{name}.png")
    pixels = np.asarray(shot, dtype=np.float64)
    assert pixels.std() > 20 and (pixels < 200).mean() > 0.02, f"{name}: screenshot looks blank"


def mious(browser) -> list[str]:
    return browser.execute_script(
        "return Array.from(document.querySelectorAll('#image-table tbody tr')).filter(r => !r.hidden).map(r => r.cells[2].dataset.v)")


def test_sorting_the_table_by_miou_reorders_the_rows(browser, pages):
    load(browser, pages["evaluate_folders"])
    before = mious(browser)
    header = browser.find_element(By.XPATH, "//table[@id='image-table']//th[text()='mIoU']")
    header.click()
    first = [float(v) for v in mious(browser)]
    assert first != [float(v) for v in before] and first == sorted(first)  # lowest (worst) first
    header.click()
    second = [float(v) for v in mious(browser)]
    assert second == sorted(first, reverse=True)
    names = browser.execute_script("return Array.from(document.querySelectorAll('#image-table tbody tr')).map(r => r.dataset.name)")
    data = dict((row[1], row[2]) for row in page_data(pages["evaluate_folders"].read_text(encoding="utf-8"))["images"])
    assert [data[n] for n in names] == second  # whole rows moved, not cells


def test_filter_by_file_name(browser, pages):
    load(browser, pages["evaluate_folders"])
    box = browser.find_element(By.ID, "image-filter")
    box.send_keys("img0001")
    shown = browser.execute_script("return Array.from(document.querySelectorAll('#image-table tbody tr')).filter(r => !r.hidden).map(r => r.dataset.name)")
    assert shown == [f"img{i:05d}" for i in range(10, 20)]
    assert browser.find_element(By.ID, "image-count").text == "10 of 40 shown"


def test_heatmap_hover_shows_the_counts(browser, pages):
    load(browser, pages["evaluate_folders"])
    matrix = page_data(pages["evaluate_folders"].read_text(encoding="utf-8"))["confusion_matrix"]
    cell = browser.find_element(By.CSS_SELECTOR, '#heatmap rect.cell[data-i="1"][data-j="0"]')
    ActionChains(browser).move_to_element(cell).perform()
    tooltip = browser.find_element(By.ID, "tooltip")
    assert tooltip.is_displayed()
    assert f"ground truth: {CLASSES[1]}" in tooltip.text and f"predicted: {CLASSES[0]}" in tooltip.text
    assert f"{matrix[1][0]:,} pixels" in tooltip.text


def test_clicking_a_picture_enlarges_it(browser, pages):
    load(browser, pages["evaluate_checkpoint"])
    shot = browser.find_element(By.CSS_SELECTOR, ".shot")
    small = shot.find_element(By.TAG_NAME, "img").size["width"]
    shot.click()
    box = browser.find_element(By.ID, "lightbox")
    assert "open" in box.get_attribute("class")
    assert box.find_element(By.TAG_NAME, "img").size["width"] > 2 * small
    browser.find_element(By.TAG_NAME, "body").send_keys(Keys.ESCAPE)
    assert "open" not in box.get_attribute("class")
