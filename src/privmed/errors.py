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
