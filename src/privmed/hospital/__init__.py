"""Hospital data in and out: a DICOMweb client for a PACS, and the pull / predict / push flows."""
