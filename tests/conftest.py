"""Shared fixtures: small real-footage datasets in the UCF-101 and SkyTimelapse layouts."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pvdm.data.video_io import decode_video

DATA = Path(__file__).parent / "data"
VIDEOS = DATA / "videos"
REPO = Path(__file__).resolve().parents[1]

# The autoencoder of the training and pipeline tests: 32x32 frames, latent planes 4x4 and 4xT.
TINY_AE = dict(resolution=32, frames=8, patch_size=8, channels=32, depth=1, heads=2, dim_head=16, proj_depth=1,
               proj_heads=2, proj_dim_head=16, proj_mlp_dim=64)



def prepare_with_autoencoder(exp: dict, root: Path, ae_cfg: dict | None = None) -> tuple[Path, Path]:
    """``root/data`` (the clip stores of ``exp``) and ``root/ae.pt`` (a seeded, untrained tiny autoencoder)."""
    import torch

    from pvdm.checkpoints import save_autoencoder
    from pvdm.data.prepare import prepare
    from pvdm.models.autoencoder import AutoencoderConfig, TriplaneAutoencoder

    prepare(exp, root / "data")
    torch.manual_seed(0)
    save_autoencoder(TriplaneAutoencoder(AutoencoderConfig(**(ae_cfg or {**TINY_AE, "frames": 16}))), root / "ae.pt")
    return root / "data", root / "ae.pt"


def kill_when(proc, ready, sig: int, group: bool = False, timeout: float = 600) -> None:  # noqa: ANN001
    """Send ``sig`` to ``proc`` (its whole process group with ``group``) once ``ready()`` holds, then wait;
    the caller checks that it landed (the run may finish first)."""
    import os
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if ready():
            (os.killpg if group else os.kill)(proc.pid, sig)
            break
        time.sleep(0.05)
    proc.wait()


def mnist_data(clip_frames: int, num_train: int, num_test: int = 4) -> dict:
    """The data section of a Moving-MNIST experiment at 32x32 (no long store)."""
    return {"dataset": "moving_mnist", "resolution": 32, "clip_frames": clip_frames, "long_frames": 0,
            "moving_mnist": {"num_train": num_train, "num_test": num_test}}


@pytest.fixture(scope="module")
def isolated_weights_dir(tmp_path_factory):
    """Converted weights go to a fresh folder (the conversion itself is under test)."""
    with pytest.MonkeyPatch.context() as mp:
        path = tmp_path_factory.mktemp("weights")
        mp.setenv("PVDM_WEIGHTS_DIR", str(path))
        yield path


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models: OpenMP synchronisation dominates their cost, and on a busy 2-core machine two
    threads run these tests ~10x slower than one."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)

# Real camera footage in four codecs (h264 mp4, cinepak avi, msmpeg4 avi), see tests/data/videos.
REAL_VIDEOS = {
    "carphone.mp4": (120, 144, 176),
    "tree.avi": (68, 240, 320),
    "vtest_small.avi": (40, 144, 192),
    "bikes_small.mp4": (40, 136, 320),
}


def make_ucf_tree(root: Path, damaged: bool = True) -> Path:
    """``root/UCF-101/<Class>/v_<Class>_gXX_c01.avi`` + ``ucfTrainTestlist`` (fold 1) from real clips.

    Groups g01-g02 are test, g03-g04 train (UCF-101 splits by group). With ``damaged``, the train
    list also names a truncated file, a zero-byte file, random bytes and a missing file.
    """
    ucf = root / "UCF-101"
    classes = {"Biking": "bikes_small.mp4", "PlayingPhone": "carphone.mp4", "WalkingStreet": "vtest_small.avi"}
    train, test = [], []
    for cls, src in classes.items():
        (ucf / cls).mkdir(parents=True)
        for g in (1, 2, 3, 4):
            name = f"{cls}/v_{cls}_g{g:02d}_c01.avi"
            shutil.copy(VIDEOS / src, ucf / name)  # the extension lies for mp4: PyAV sniffs the container
            (test if g <= 2 else train).append(name)
    if damaged:
        good = (VIDEOS / "carphone.mp4").read_bytes()
        bad = {
            "Biking/v_Biking_g05_c01.avi": good[: len(good) // 40],  # truncated header region
            "Biking/v_Biking_g06_c01.avi": b"",  # zero bytes
            "Biking/v_Biking_g07_c01.avi": np.random.default_rng(0).bytes(50_000),  # random bytes
        }
        for name, data in bad.items():
            (ucf / name).write_bytes(data)
            train.append(name)
        train.append("Biking/v_Biking_g08_c01.avi")  # listed, missing on disk
    lists = ucf / "ucfTrainTestlist"
    lists.mkdir()
    (lists / "trainlist01.txt").write_text("".join(f"{n} {i % 3 + 1}\n" for i, n in enumerate(train)))
    (lists / "testlist01.txt").write_text("".join(f"{n}\n" for n in test))
    (lists / "classInd.txt").write_text("".join(f"{i + 1} {c}\n" for i, c in enumerate(classes)))
    return ucf


def write_frames(folder: Path, frames: np.ndarray, ext: str = "png", pad: bool = False) -> None:
    """Frame files named frame1, frame2, ..., frame10 (not zero-padded unless ``pad``)."""
    folder.mkdir(parents=True)
    for i, f in enumerate(frames):
        name = f"frame{i:04d}" if pad else f"frame{i + 1}"
        Image.fromarray(f).save(folder / f"{name}.{ext}", quality=95)


def make_sky_tree(root: Path, layout: str = "flat", test_name: str = "test") -> Path:
    """SkyTimelapse-layout tree from real frames (tree.avi downscaled), png + jpg."""
    frames = decode_video(VIDEOS / "tree.avi")[:, ::4, ::4]  # 68 frames of 60x80
    sky = root / "sky"
    for split, videos in (("train", 3), (test_name, 2)):
        for v in range(videos):
            chunk = frames[v * 10 : v * 10 + 24]
            ext = "jpg" if v % 2 else "png"
            if layout == "flat":
                write_frames(sky / split / f"video{v}", chunk, ext)
            else:
                write_frames(sky / split / f"video{v}" / "clip1", chunk[:20], ext)
                write_frames(sky / split / f"video{v}" / "clip2", chunk[4:], ext)
    return sky


@pytest.fixture
def ucf_tree(tmp_path: Path) -> Path:
    return make_ucf_tree(tmp_path)


@pytest.fixture
def real_video_paths() -> dict[str, Path]:
    return {name: VIDEOS / name for name in REAL_VIDEOS}


def make_c3d_archives(root: Path) -> Path:
    """conv3d_deepnetA_ucf.npz + mean2.npz with random values, in the layout tgan2's save_npz writes (the
    real archives cannot be downloaded here)."""
    from pvdm.eval import c3d

    rng = np.random.default_rng(0)
    weights = {}
    for key, shape in c3d.npz_shapes().items():
        fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else 1
        std = np.sqrt(2 / fan_in) if key.endswith("/W") else 0.01  # He init keeps activations finite
        weights[key] = (rng.standard_normal(shape, dtype=np.float32) * std).astype(np.float32)
    np.savez(root / c3d.WEIGHTS_NPZ, **weights)
    mean = rng.uniform(80, 120, size=(3, 16, 128, 171))  # float64, as a Caffe mean converted by numpy
    np.savez(root / c3d.MEAN_NPZ, mean=mean)
    return root


# The longest test files first: with two xdist workers taking a file at a time (scripts/bootstrap.sh
# test), a long file that starts last (the Slurm DAG, ~300 s mostly spent waiting on the scheduler)
# would run alone at the end. Durations from the CI log (pytest --durations).
LONGEST_FIRST = ("test_slurm.py", "test_pipeline.py", "test_kill_matrix.py", "test_dvc.py", "test_distributed.py",
                 "test_reliability.py", "test_workflow.py")


def pytest_collection_modifyitems(config, items):  # noqa: ANN001, ARG001 - pytest hook signature
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: order within a file is kept
