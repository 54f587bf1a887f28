"""End to end in a real headless Chromium: ``privmed app`` on a free localhost port, upload a real
chest X-ray, see a prediction. Skips (saying why) when Chromium or Playwright is missing."""
from __future__ import annotations

from pathlib import Path

import pytest

from conftest import require_dataset
from support.browser_check import ARGS, CHROMIUM, running_app


@pytest.mark.browser
@pytest.mark.slow
def test_upload_xray_in_chromium(xray_bundle, data_root, tmp_path):
    xray = sorted((require_dataset(data_root, "chest_xray_pneumonia") / "chest_xray_pneumonia" / "test").glob("*/*"))
    assert xray, "chest_xray_pneumonia has no test images"
    if not Path(CHROMIUM).is_file():
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium, or set PRIVMED_CHROMIUM)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("the playwright Python package is not installed (pip install playwright)")
    with running_app(xray_bundle, tmp_path / "none") as url:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
            try:
                page = browser.new_page()
                page.goto(url, wait_until="domcontentloaded")
                page.get_by_text("Privacy ledger").first.wait_for(state="attached", timeout=60_000)
                page.locator("input[type=file]").first.set_input_files(str(xray[0]))
                page.get_by_text("Model output").first.wait_for(timeout=90_000)
                page.get_by_text("Download FHIR report").first.wait_for(timeout=30_000)
                body = page.inner_text("body")
                page.screenshot(path=str(tmp_path / "app.png"), full_page=True)
            finally:
                browser.close()
        assert xray[0].name in body
        import json

        classes = json.loads((xray_bundle / "metadata.json").read_text())["classes"]
        assert any(c in body for c in classes)
        assert "Image quality" in body and "Download FHIR report" in body
