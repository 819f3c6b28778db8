"""SkyTimelapse: folders of frame images, in either layout in use.

* flat:  ``<root>/<split>/<video>/<frames>.png|jpg``
* MDGAN: ``<root>/<split>/<video>/<clip>/<frames>.png|jpg`` (what the original PVDM loader reads)

The held-out split is called ``test`` in some copies and ``val`` in others; ``test`` accepts both.
Frames are ordered by natural sort (``frame10`` after ``frame9``).
"""

from __future__ import annotations

from pathlib import Path

from pvdm.data.sources import FrameFolder, LayoutError
from pvdm.data.video_io import IMAGE_EXTENSIONS, natsorted

EXPECTED_TREE = """\
expected SkyTimelapse layout (either):
  <root>/train/<video>/<frame>.png|jpg            (flat)
  <root>/train/<video>/<clip>/<frame>.png|jpg     (MDGAN sky_train/sky_test, renamed)
  <root>/test/... or <root>/val/...               (held-out split, same layout)"""


def _has_images(folder: Path) -> bool:
    return any(p.suffix.lower() in IMAGE_EXTENSIONS for p in folder.iterdir() if p.is_file())


def resolve_split_dir(root: Path, split: str) -> Path:
    candidates = {
        "train": ["train", "sky_train"],
        "test": ["test", "val", "sky_test"],
        "val": ["val", "test"],
    }
    if split not in candidates:
        raise ValueError(f"SkyTimelapse split {split!r}; choose train or test (val is accepted as test)")
    for name in candidates[split]:
        if (root / name).is_dir():
            return root / name
    raise LayoutError(f"{root}: no {' or '.join(candidates[split])} folder\n{EXPECTED_TREE}")


def list_sky(root: str | Path, split: str = "train") -> list[FrameFolder]:
    root = Path(root)
    if not root.is_dir():
        raise LayoutError(f"{root}: dataset folder does not exist\n{EXPECTED_TREE}")
    split_dir = resolve_split_dir(root, split)
    sources: list[FrameFolder] = []
    for video in natsorted([p.name for p in split_dir.iterdir() if p.is_dir()]):
        vdir = split_dir / video
        if _has_images(vdir):
            sources.append(FrameFolder(vdir, f"{split_dir.name}/{video}"))
            continue
        for clip in natsorted([p.name for p in vdir.iterdir() if p.is_dir()]):
            if _has_images(vdir / clip):
                sources.append(FrameFolder(vdir / clip, f"{split_dir.name}/{video}/{clip}"))
    if not sources:
        raise LayoutError(f"{split_dir}: no folders of frame images found\n{EXPECTED_TREE}")
    return sources
