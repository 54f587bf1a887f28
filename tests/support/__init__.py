"""Test support, not shipped in the privmed package: synthetic burned-in identifiers (``burned_in``),
printed class names for OCR labelling (``label_ocr``) and the headless-Chromium harness of the app
(``browser_check``). Tests import it as ``support`` (pytest puts tests/ on sys.path); benchmarks that
use it put tests/ on sys.path themselves."""
