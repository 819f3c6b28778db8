"""Dataset download with checksum verification, then extraction.

Downloads stream into a temp file next to the target and are renamed only after the checksum
matched, so an interrupted or corrupted download never looks complete. ``file://`` URLs work
(tests use them). RAR archives (UCF-101 ships as one) need one of the unrar, unar, 7z or bsdtar
tools; zip and tar are handled in Python.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import subprocess
import tarfile
import urllib.request
import zipfile
from pathlib import Path
from typing import Any

from pvdm.utils.io import atomic_path, atomic_write_json, sha256_file
from pvdm.utils.progress import Progress

log = logging.getLogger("pvdm.data")


class ChecksumError(ValueError):
    pass


def download(url: str, dest: str | Path, sha256: str | None = None, md5: str | None = None) -> dict[str, str]:
    """Fetch ``url`` to ``dest`` and verify it; returns the observed hashes."""
    dest = Path(dest)
    hashes = {"sha256": hashlib.sha256(), "md5": hashlib.md5()}
    with atomic_path(dest) as tmp:
        with urllib.request.urlopen(url) as response, open(tmp, "wb") as out:
            total = int(response.headers.get("Content-Length") or 0) or None
            with Progress(total, f"download {dest.name}", log_every_s=30) as bar:
                while chunk := response.read(1 << 20):
                    out.write(chunk)
                    for h in hashes.values():
                        h.update(chunk)
                    bar.update(len(chunk))
        seen = {k: h.hexdigest() for k, h in hashes.items()}
        for kind, expected in (("sha256", sha256), ("md5", md5)):
            if expected and seen[kind] != expected.lower():
                raise ChecksumError(
                    f"{url}: {kind} {seen[kind]} does not match the expected {expected}; "
                    f"the download was discarded"
                )
    if not sha256:
        log.warning(
            "%s: no sha256 pinned in the config; seen sha256=%s (pin it to verify later runs)",
            dest.name,
            seen["sha256"],
        )
    return seen


def extract(archive: str | Path, dest: str | Path) -> None:
    archive, dest = Path(archive), Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    name = archive.name.lower()
    if name.endswith(".zip"):
        with zipfile.ZipFile(archive) as z:
            for member in z.namelist():  # refuse paths that escape dest
                if Path(member).is_absolute() or ".." in Path(member).parts:
                    raise ValueError(f"{archive}: unsafe path in archive: {member}")
            z.extractall(dest)
    elif name.endswith((".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")):
        with tarfile.open(archive) as t:
            t.extractall(dest, filter="data")
    elif name.endswith(".rar"):
        tools = {
            "unrar": ["unrar", "x", "-o+", str(archive), str(dest) + "/"],
            "unar": ["unar", "-f", "-o", str(dest), str(archive)],
            "7z": ["7z", "x", "-y", f"-o{dest}", str(archive)],
            "bsdtar": ["bsdtar", "-xf", str(archive), "-C", str(dest)],
        }
        for tool, cmd in tools.items():
            if shutil.which(tool):
                subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
                return
        raise RuntimeError(
            f"{archive}: extracting RAR needs one of {', '.join(tools)} "
            "(Debian: apt-get install unar or libarchive-tools)"
        )
    else:
        raise ValueError(f"{archive}: unknown archive type (zip, tar[.gz|.bz2|.xz], rar)")


def download_dataset(archives: list[dict[str, Any]], out: str | Path) -> dict[str, Any]:
    """Download and extract every archive into ``out``; write ``out/download.json`` last."""
    out = Path(out)
    if not archives:
        raise ValueError(
            "data.download.archives is empty: this dataset has no download configured; "
            "place it by hand and set data.root"
        )
    record = {}
    for a in archives:
        target = out / "archives" / a["filename"]
        if target.exists() and (not a.get("sha256") or sha256_file(target) == a["sha256"]):
            log.info("%s already downloaded", target)
            seen = {"sha256": sha256_file(target)}
        else:
            seen = download(a["url"], target, a.get("sha256"), a.get("md5"))
        extract(target, out)
        record[a["filename"]] = {"url": a["url"], **seen}
    atomic_write_json(out / "download.json", record)
    return record
