"""De-identification: DICOM headers (PS3.15 basic profile, ``header``), files and folders (``files``),
burned-in text found by OCR, a learned line detector and stroke regions and filled (``ocr``,
``text_detect``, ``text_regions``, ``redact``), and OCR-assisted labelling (``labelling``).
Reads images through ``privmed.data``; the hospital face and the upload service call it."""
