"""Reading images and datasets, quality checks, transforms."""
from privmed.data.read import Image, load_image, sniff_format

__all__ = ["Image", "load_image", "sniff_format"]
