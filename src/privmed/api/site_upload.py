"""Site calibration through the API (admin only): the same ``privmed calibrate`` on a zip archive.

The archive holds ``<class>/<image>`` for the bundle's classes (one top folder around them is
allowed, macOS ``__MACOSX`` and dot files are skipped). It is unpacked into a private temporary
folder (0700) that is deleted when the calibration ends, whatever happens: the site's images are
never kept by the server. File names stay on the server's disk during the run only (they may carry
the patient, which is the unit of privacy); they never reach the response, the log or the audit row.
"""
from __future__ import annotations

import json
import re
import shutil
import tempfile
import zipfile
from pathlib import Path, PurePosixPath
from typing import IO

from privmed.calibrate import calibrate_site, site_records
from privmed.errors import PrivmedError
from privmed.inference.site import summary

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 _.-]{0,63}$")
MAX_MEMBERS = 20_000


class ArchiveError(PrivmedError, ValueError):
    """The upload is not a usable site archive (HTTP 400); ``too_large`` marks 413."""

    def __init__(self, message: str, too_large: bool = False):
        super().__init__(message)
        self.too_large = too_large


def check_name(name: str) -> str:
    if not NAME.match(name or ""):
        raise ArchiveError("'name' must be 1-64 letters, digits, spaces, '_', '.' or '-' (the site's name, "
                           "e.g. 'St Mary 2026'), starting with a letter or digit")
    return name


def _members(z: zipfile.ZipFile, classes: list[str]) -> list[tuple[zipfile.ZipInfo, str, str]]:
    """(member, class, file name) for every image entry; refuses paths outside ``<class>/<file>``."""
    files = [i for i in z.infolist() if not i.is_dir()]
    parts = [PurePosixPath(i.filename.replace("\\", "/")).parts for i in files]
    keep = [(i, p) for i, p in zip(files, parts) if p and p[0] != "__MACOSX" and not p[-1].startswith(".")]
    tops = {p[0] for _, p in keep if len(p) == 3}
    out = []
    for info, p in keep:
        if len(p) == 3 and len(tops) == 1:
            p = p[1:]  # one folder around the class folders
        if len(p) != 2 or p[0] not in classes or ".." in p or p[0].startswith("/"):
            raise ArchiveError(f"the archive must hold <class>/<image> with the bundle's classes "
                               f"({', '.join(classes)}); found an entry outside that layout")
        out.append((info, p[0], p[1]))
    if len(out) > MAX_MEMBERS:
        raise ArchiveError(f"{len(out)} files in the archive; the limit is {MAX_MEMBERS}", too_large=True)
    return out


def unpack(archive: IO[bytes], dest: Path, classes: list[str], max_bytes: int) -> int:
    """Unpack the image entries into ``dest/<class>/``; returns how many. Sizes are counted as read
    (a zip's declared sizes may lie)."""
    try:
        z = zipfile.ZipFile(archive)
    except zipfile.BadZipFile:
        raise ArchiveError("the body is not a zip archive: send the site sample as application/zip") from None
    total, members = 0, _members(z, classes)
    with z:
        for info, cls, name in members:
            (dest / cls).mkdir(exist_ok=True)
            with z.open(info) as src, open(dest / cls / name, "xb") as out:  # "x": a repeated entry is refused
                while chunk := src.read(1 << 20):
                    total += len(chunk)
                    if total > max_bytes:
                        raise ArchiveError(f"the archive unpacks to more than {max_bytes / 2**20:.0f} MiB",
                                           too_large=True)
                    out.write(chunk)
    return len(members)


def calibrate_upload(bundle: Path, classes: list[str], archive: IO[bytes], *, name: str, epsilon: float,
                     max_bytes: int) -> dict:
    """Unpack, calibrate (``calibrate.calibrate_site``), delete the images; the site's summary."""
    check_name(name)
    tmp = Path(tempfile.mkdtemp(prefix="privmed-site-"))  # mkdtemp makes it 0700
    try:
        unpack(archive, tmp, classes, max_bytes)
        path = calibrate_site(bundle, site_records(tmp, classes), name=name, epsilon=epsilon)
    except FileExistsError:
        raise ArchiveError("the archive holds the same file twice; send each image once") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return summary(json.loads(path.read_text()))
