"""UCF-101: ``<root>/<Class>/<video>.avi`` plus the official ``ucfTrainTestlist`` split files.

The split folder may sit inside the root (as the original PVDM expects) or next to it. Splits:
``train`` / ``test`` (official fold 1-3 lists) and ``train+test`` (all listed videos; DIGAN and
several later papers train and compute real FVD statistics on it).
"""

from __future__ import annotations

import logging
from pathlib import Path

from pvdm.data.sources import LayoutError, VideoFile
from pvdm.data.video_io import natural_key

EXPECTED_TREE = """\
expected UCF-101 layout:
  <root>/                       (data.root)
    ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi ...
    ...                         (101 class folders of .avi files)
    ucfTrainTestlist/           (inside <root> or next to it)
      classInd.txt
      trainlist01.txt testlist01.txt (... 02, 03)"""

SPLITS = ("train", "test", "train+test")
log = logging.getLogger("pvdm.data")


def find_split_dir(root: Path) -> Path:
    for candidate in (root / "ucfTrainTestlist", root.parent / "ucfTrainTestlist"):
        if candidate.is_dir():
            return candidate
    raise LayoutError(f"{root}: no ucfTrainTestlist folder inside or next to it\n{EXPECTED_TREE}")


def _read_list(path: Path) -> list[str]:
    if not path.is_file():
        raise LayoutError(f"missing split file {path}\n{EXPECTED_TREE}")
    names = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if line:
            names.append(line.split()[0].replace("\\", "/"))  # "Class/v_x.avi 1" -> "Class/v_x.avi"
    return names


def match_case(root: Path, names: list[str], split_dir: Path) -> list[str]:
    """Listed names whose case differs from the files on disk, mapped to the files: the official
    lists say ``HandstandPushups/v_HandStandPushups_...`` where the folder is ``HandStandPushups``;
    matched case-sensitively, a whole class would be dropped."""
    on_disk = {str(p.relative_to(root)).lower(): str(p.relative_to(root))
               for p in root.glob("*/*") if p.is_file()}
    fixed, renamed = [], {}
    for name in names:
        actual = name if (root / name).is_file() else on_disk.get(name.lower(), name)
        if actual != name:
            renamed.setdefault(name.split("/")[0], actual.split("/")[0])
        fixed.append(actual)
    for listed, folder in renamed.items():
        log.warning("%s lists %s/..., the folder on disk is %s/: matched case-insensitively", split_dir, listed, folder)
    return fixed


def list_ucf101(root: str | Path, split: str = "train", fold: int = 1) -> list[VideoFile]:
    """Videos of one split, sorted by (class, name) in natural order."""
    root = Path(root)
    if split not in SPLITS:
        raise ValueError(f"UCF-101 split {split!r}; choose one of {SPLITS}")
    if fold not in (1, 2, 3):
        raise ValueError(f"UCF-101 fold {fold}; the official folds are 1, 2, 3")
    if not root.is_dir():
        raise LayoutError(f"{root}: dataset folder does not exist\n{EXPECTED_TREE}")
    split_dir = find_split_dir(root)
    names: list[str] = []
    if split in ("train", "train+test"):
        names += _read_list(split_dir / f"trainlist0{fold}.txt")
    if split in ("test", "train+test"):
        names += _read_list(split_dir / f"testlist0{fold}.txt")
    class_dirs = [p for p in root.iterdir() if p.is_dir() and p.name != "ucfTrainTestlist"]
    if not class_dirs:
        raise LayoutError(f"{root}: no class folders found\n{EXPECTED_TREE}")
    names = sorted(set(names), key=natural_key)
    names = match_case(root, names, split_dir)
    missing = [n for n in names if not (root / n).is_file()]
    if len(missing) == len(names):
        raise LayoutError(
            f"{root}: none of the {len(names)} videos listed in {split_dir} exist "
            f"(first: {root / names[0]})\n{EXPECTED_TREE}"
        )
    # Listed-but-absent files are reported by the caller as skipped, like unreadable ones.
    return [VideoFile(root / n, n) for n in names]
