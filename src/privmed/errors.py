"""Errors a user can act on. Each message says what was wrong and what to do."""


class PrivmedError(Exception):
    """Base class: the CLI prints these as one line, no traceback."""


class ImageReadError(PrivmedError, ValueError):
    """The bytes are not an image privmed can decode (says which format and how to fix it)."""


class DatasetError(PrivmedError):
    """Missing root, unknown dataset, empty class folder..."""


class BundleError(PrivmedError):
    """Missing, tampered or mismatched model bundle."""


class PrivacyBudgetError(PrivmedError, ValueError):
    """Invalid epsilon/delta, or a step that would exceed the budget."""


class EmptyUpload(ImageReadError):
    """The upload holds no bytes."""


class UploadTooLarge(ImageReadError):
    """Over the byte limit passed to the decoder, or over the pixel limit."""


class UnsupportedFormat(ImageReadError):
    """The bytes are a known non-image type (GIF, ZIP, PDF, HTML, text) or unrecognised."""


class Undecodable(ImageReadError):
    """An image type privmed reads, but the data is damaged or truncated."""


class WrongModality(ImageReadError):
    """A DICOM whose Modality is not what the model reads (MR sent to an X-ray model)."""


class Unavailable(PrivmedError):
    """A part of the server this request needs is not available now (full batch queue, no OCR model)."""


class ArchiveError(PrivmedError, ValueError):
    """An upload that is not a usable site archive (layout, a repeated file, not a zip)."""


class ArchiveTooLarge(ArchiveError):
    """A site archive with too many files, or that unpacks past the limit."""
