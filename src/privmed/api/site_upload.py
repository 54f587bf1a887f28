"""Site calibration through the API (admin only): the same ``privmed calibrate`` on a zip archive, as
a router the server includes.

The archive holds ``<class>/<image>`` for the bundle's classes (one top folder around them is
allowed, macOS ``__MACOSX`` and dot files are skipped). It is unpacked into a private temporary
folder (0700) that is deleted when the calibration ends, whatever happens: the site's images are
never kept by the server. File names stay on the server's disk during the run only (they may carry
the patient, which is the unit of privacy); they never reach the response, the log or the audit row.
"""
from __future__ import annotations

import asyncio
import json
import re
import shutil
import tempfile
import zipfile
from pathlib import Path, PurePosixPath
from typing import IO

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from starlette.concurrency import run_in_threadpool

from privmed.api.openapi_docs import SITE_BODY, V1, errors
from privmed.api.status import as_http
from privmed.calibrate import calibrate_site, site_records
from privmed.errors import ArchiveError, ArchiveTooLarge, PrivmedError
from privmed.inference.registry import UnknownModel
from privmed.inference.site import summary

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 _.-]{0,63}$")
MAX_MEMBERS = 20_000


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
        if len(p) != 2 or p[0] not in classes or ".." in p:
            raise ArchiveError(f"the archive must hold <class>/<image> with the bundle's classes "
                               f"({', '.join(classes)}); found an entry outside that layout")
        out.append((info, p[0], p[1]))
    if len(out) > MAX_MEMBERS:
        raise ArchiveTooLarge(f"{len(out)} files in the archive; the limit is {MAX_MEMBERS}")
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
                        raise ArchiveTooLarge(f"the archive unpacks to more than {max_bytes / 2**20:.0f} MiB")
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


def router(registry, max_bytes: int, admin) -> APIRouter:
    """``POST /v1/models/{model_ref}/site-calibration``; ``admin``: the dependency that admits admin keys only."""
    r, lock = APIRouter(), asyncio.Lock()

    @r.post("/v1/models/{model_ref}/site-calibration", status_code=201,
            responses=errors(400, 404, 409, 413, 415, 422, *V1), openapi_extra=SITE_BODY)
    async def site_calibration(model_ref: str, request: Request,
                               name: str = Query(..., max_length=64, description="the site's name, e.g. 'St Mary'"),
                               epsilon: float = Query(2.0, gt=0, le=10, description="the site sample's epsilon "
                                                      "(delta 1e-5, add/remove one patient where names carry one)"),
                               p=Depends(admin)):
        """`privmed calibrate` for an admin: the site's labelled sample (a zip) re-fits temperature, threshold
        and out-of-distribution reference with DP; every face then uses it. The images are deleted after."""
        try:
            entry = registry.find(model_ref)
        except UnknownModel as ex:
            raise HTTPException(404, str(ex)) from None
        request.state.audit.update(model_id=entry["id"], model_version=entry["metadata"].weights_sha256)
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype not in ("application/zip", "application/x-zip-compressed", "application/octet-stream"):
            raise HTTPException(415, "send the site sample as one zip archive (Content-Type: application/zip), "
                                     f"not '{ctype or 'no content type'}'")
        if lock.locked():
            raise HTTPException(409, "a site calibration is running on this server; try again when it has finished")
        async with lock:
            archive = await _spool(request, max_bytes)
            try:
                out = await run_in_threadpool(calibrate_upload, Path(entry["path"]), entry["metadata"].classes,
                                              archive, name=name, epsilon=epsilon, max_bytes=4 * max_bytes)
            except PrivmedError as e:  # ArchiveError 400, ArchiveTooLarge 413, PrivacyBudgetError 409, else 422
                raise as_http(e) from None
            finally:
                archive.close()
        request.state.audit["output"] = {"site": out["site"], "epsilon": out["epsilon"]}
        return {"model": entry["id"], **out}

    return r


async def _spool(request: Request, limit: int):
    """The body in a temporary file (memory up to 8 MiB), refused past ``limit`` bytes."""
    f, seen = tempfile.SpooledTemporaryFile(max_size=8 * 2**20), 0
    async for chunk in request.stream():
        seen += len(chunk)
        if seen > limit:
            f.close()
            raise HTTPException(413, f"the archive is over the {limit / 2**20:.0f} MiB limit")
        f.write(chunk)
    f.seek(0)
    return f
