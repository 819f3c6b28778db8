"""`dataset: videos`: listing, splits without leakage, duplicates, damaged inputs, time and space,
shot cuts, `pvdm init`; all on real footage from tests/data/videos (small, fast)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import av
import numpy as np
import pytest
import yaml
from conftest import VIDEOS, write_frames
from PIL import Image

from pvdm.config import experiment, load_config
from pvdm.data.prepare import prepare
from pvdm.data.shots import detect_shots
from pvdm.data.sources import VideoFile
from pvdm.data.store import ClipStore
from pvdm.data.transforms import center_crop_resize, pad_resize
from pvdm.data.video_io import decode_video
from pvdm.data.videos import VideoOptions, VideosError, decode_fitted, plan_inputs
from pvdm.utils.io import read_json

REPO = Path(__file__).resolve().parents[1]


def encode(path: Path, frames: np.ndarray, fps: int = 25, codec: str = "mpeg4") -> Path:
    """uint8 ``# t h w c`` frames -> a video file (quality high enough that decoding stays close)."""
    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        stream.options = {"qscale": "2"} if codec == "mpeg4" else {"crf": "10", "b": "2M"}
        for f in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def data_cfg(root: Path, **changes) -> dict:
    """A complete experiment (schema defaults filled in) reading ``root`` at 16x16, 16-frame clips."""
    cfg = {"experiments": {"v": {"data": {"dataset": "videos", "root": str(root), "resolution": 16,
                                          "clip_frames": 16, "long_frames": 0, "workers": 1, **changes}}}}
    path = root.parent / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return experiment(load_config([path]), "v")[1]


def bytes_tree(root: Path, names: list[str]) -> Path:
    """Files with distinct content (listing and splitting never decode)."""
    for i, name in enumerate(names):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(f"video {i} {name}".encode())
    return root


def splits(entries) -> dict[str, str]:
    return {e.name: e.split for e in entries if e.status == "listed"}


# ---------------------------------------------------------------------------------------------------
# Listing, splits, duplicates


def test_listing_every_kind_in_natural_order(tmp_path):
    frames = center_crop_resize(decode_video(VIDEOS / "vtest_small.avi"), 32)  # 40 frames 32x32
    root = tmp_path / "mine"
    (root / "sub").mkdir(parents=True)
    encode(root / "a.mp4", frames)
    encode(root / "b.mkv", frames[::-1])
    encode(root / "c.webm", frames[5:], codec="libvpx")
    encode(root / "sub" / "d.mov", frames[3:])
    Image.fromarray(frames[0]).save(root / "sub" / "e.gif", save_all=True, duration=100,
                                    append_images=[Image.fromarray(f) for f in frames[1:20]])
    write_frames(root / "shots" / "f", frames[:12])  # frame1 ... frame12: natural order matters
    (root / "notes.txt").write_text("not a video")
    (root / ".hidden.mp4").write_bytes(b"ignored")
    entries = plan_inputs({"group_pattern": None, "test_fraction": 0.5}, root, 0)
    assert [e.name for e in entries] == ["a.mp4", "b.mkv", "c.webm", "shots/f", "sub/d.mov", "sub/e.gif"]
    assert {e.split for e in entries} == {"train", "test"}
    folder = next(e for e in entries if e.name == "shots/f")
    got, info = decode_fitted(folder.source, 32, "bilinear", VideoOptions())
    assert np.array_equal(got, frames[:12]) and info["fps"] is None  # frame10 after frame9
    gif, info = decode_fitted(next(e for e in entries if e.name == "sub/e.gif").source, 32, "bilinear",
                              VideoOptions())
    assert len(gif) == 20 and info["fps"] == pytest.approx(10.0)


def test_nothing_usable_names_the_folder_and_what_it_holds(tmp_path):
    (tmp_path / "a.txt").write_text("x")
    (tmp_path / "b.txt").write_text("y")
    (tmp_path / "c.pdf").write_text("z")
    with pytest.raises(VideosError, match=rf"{tmp_path}: no videos found .*found: 2 \.txt, 1 \.pdf"):
        plan_inputs({"group_pattern": None, "test_fraction": 0.2}, tmp_path, 0)
    with pytest.raises(VideosError, match="no such folder"):
        plan_inputs({"group_pattern": None, "test_fraction": 0.2}, tmp_path / "absent", 0)


def test_group_split_never_straddles_and_is_stable(tmp_path):
    names = [f"{cls}/v_{cls}_g{g:02d}_c{c:02d}.avi" for cls in ("A", "B") for g in range(1, 11) for c in (1, 2, 3)]
    root = bytes_tree(tmp_path / "ucf", names)
    cfg = {"group_pattern": r"_(g\d+)_", "test_fraction": 0.3}
    entries = plan_inputs(cfg, root, seed=3)
    sides: dict[str, set] = {}
    for e in entries:
        sides.setdefault(e.group, set()).add(e.split)
    assert len(sides) == 10 and all(len(s) == 1 for s in sides.values())
    assert 1 <= sum(s == {"test"} for s in sides.values()) <= 6
    assert splits(plan_inputs(cfg, root, seed=3)) == splits(entries)  # seeded
    assert splits(plan_inputs(cfg, root, seed=4)) != splits(entries)
    # Adding a file (a new group) moves no other file across the split.
    bytes_tree(root, ["A/v_A_g11_c01.avi"])
    grown = splits(plan_inputs(cfg, root, seed=3))
    assert {k: grown[k] for k in splits(entries)} == splits(entries)
    # Without a pattern every file is its own group.
    assert len({e.group for e in plan_inputs({**cfg, "group_pattern": None}, root, 3)}) == 61
    with pytest.raises(VideosError, match="needs a .group."):
        plan_inputs({**cfg, "group_pattern": "g\\d+"}, root, 3)


def test_train_test_folders_and_csv_decide_the_split(tmp_path):
    root = bytes_tree(tmp_path / "f", ["train/a.mp4", "train/b.mp4", "test/c.mp4", "loose.mp4"])
    entries = plan_inputs({"group_pattern": None, "test_fraction": 0.9}, root, 0)
    assert splits(entries) == {"train/a.mp4": "train", "train/b.mp4": "train", "test/c.mp4": "test"}
    loose = next(e for e in entries if e.name == "loose.mp4")
    assert loose.status == "skipped" and "outside" in loose.reason

    clips = bytes_tree(tmp_path / "c" / "clips", ["x.mp4", "y.mp4", "z.mp4", "w.mp4"])
    csv = clips.parent / "list.csv"
    csv.write_text("path,split,group\nclips/x.mp4,train,cam1\nclips/y.mp4,test,cam2\nclips/z.mp4,,cam1\n"
                   "clips/w.mp4,,cam3\n")
    entries = plan_inputs({"group_pattern": None, "test_fraction": 0.0}, csv, 0)
    assert splits(entries) == {"clips/x.mp4": "train", "clips/y.mp4": "test", "clips/z.mp4": "train",
                               "clips/w.mp4": "train"}  # z follows its group cam1
    csv.write_text("path,split,group\nclips/x.mp4,train,cam1\nclips/y.mp4,test,cam1\n")
    with pytest.raises(VideosError, match="group 'cam1' is in both train and test"):
        plan_inputs({"group_pattern": None, "test_fraction": 0.2}, csv, 0)
    csv.write_text("file,split\nclips/x.mp4,train\n")
    with pytest.raises(VideosError, match="no 'path' column"):
        plan_inputs({"group_pattern": None, "test_fraction": 0.2}, csv, 0)


def test_identical_files_count_once(tmp_path):
    root = tmp_path / "d"
    root.mkdir()
    for name in ("a.mp4", "b/a_copy.mp4", "c.mp4"):
        (root / name).parent.mkdir(exist_ok=True)
        shutil.copy(VIDEOS / ("bikes_small.mp4" if name != "c.mp4" else "carphone.mp4"), root / name)
    entries = plan_inputs({"group_pattern": None, "test_fraction": 0.5}, root, 0)
    dup = next(e for e in entries if e.name == "b/a_copy.mp4")
    assert dup.status == "duplicate" and dup.reason == "same content as a.mp4" and dup.split is None
    assert sorted(splits(entries)) == ["a.mp4", "c.mp4"]


# ---------------------------------------------------------------------------------------------------
# Time, space and shots


def test_fps_resampling_keeps_frames_by_timestamp():
    tree = VideoFile(VIDEOS / "tree.avi", "tree.avi")  # 68 frames at 15 fps
    full, info = decode_fitted(tree, 16, "bilinear", VideoOptions(shots=False))
    half, info_half = decode_fitted(tree, 16, "bilinear", VideoOptions(fps=7.5, shots=False))
    assert info["frames"] == info_half["frames"] == 68 and info["fps"] == pytest.approx(15.0, abs=1e-3)
    assert len(half) == 34 and np.array_equal(half, full[::2]) and info_half["fps_used"] == 7.5
    double, _ = decode_fitted(tree, 16, "bilinear", VideoOptions(fps=30.0, shots=False))
    assert len(double) == 136 and np.array_equal(double[1::2], full)


def test_pad_keeps_the_whole_frame():
    frames = decode_video(VIDEOS / "bikes_small.mp4")[:2]  # 136 x 320
    padded = pad_resize(frames, 32)
    assert padded.shape == (2, 32, 32, 3)
    rows = np.flatnonzero(padded.reshape(2, 32, -1).max(axis=(0, 2)) > 0)
    assert rows[0] >= 9 and rows[-1] <= 22  # 320 -> 32 wide, 136 -> 14 rows, centred on black
    assert np.all(padded[:, :9] == 0) and np.all(padded[:, 23:] == 0)


def test_shot_cut_at_the_join_of_two_real_videos(tmp_path):
    a = center_crop_resize(decode_video(VIDEOS / "carphone.mp4")[:45], 96)
    b = center_crop_resize(decode_video(VIDEOS / "tree.avi")[:40], 96)
    joined = encode(tmp_path / "joined.mp4", np.concatenate([a, b]), codec="libx264")
    frames, info = decode_fitted(VideoFile(joined, "joined.mp4"), 32, "bilinear", VideoOptions())
    assert len(info["shots"]) == 2 and abs(info["shots"][1][0] - 45) <= 2
    assert detect_shots(decode_video(VIDEOS / "carphone.mp4")) == [(0, 120)]  # no cut in one shot


def test_clips_stay_within_shots(tmp_path):
    a = center_crop_resize(decode_video(VIDEOS / "carphone.mp4")[:20], 32)
    b = center_crop_resize(decode_video(VIDEOS / "tree.avi")[:20], 32)
    root = tmp_path / "v"
    (root / "train").mkdir(parents=True)
    (root / "test").mkdir()
    encode(root / "train" / "joined.mp4", np.concatenate([a, b]), codec="libx264")  # cut at frame 20
    shutil.copy(VIDEOS / "vtest_small.avi", root / "train")
    shutil.copy(VIDEOS / "tree.avi", root / "test")

    def starts(out: Path, **changes) -> list[int]:
        exp = data_cfg(root, clips_per_video=4, min_shot_frames=5, **changes)
        manifest = prepare(exp, out)
        store = ClipStore(out / "train")
        vid = store.videos.index("train/joined.mp4")
        return manifest, [int(s) for v, s in store.index if v == vid]

    manifest, within = starts(tmp_path / "shots")
    assert next(r for r in manifest["files"] if r["path"] == "train/joined.mp4")["shots"] == [[0, 20], [20, 40]]
    assert within == [0, 3, 21, 24]  # 16-frame clips inside [0, 20) or [20, 40)
    _, across = starts(tmp_path / "no_shots", shots=False)
    assert across == [0, 8, 16, 24]  # evenly spaced over the video: 8 and 16 span the cut
    manifest = prepare(data_cfg(root, clip_frames=24, min_shot_frames=5), tmp_path / "long")
    row = next(r for r in manifest["files"] if r["path"] == "train/joined.mp4")
    assert row["status"] == "skipped" and row["reason"] == "no shot of 24 frames (longest 20 of 2 shots)"


# ---------------------------------------------------------------------------------------------------
# Damaged inputs and the manifest


def test_damaged_inputs_are_skipped_listed_and_change_nothing_else(tmp_path):
    clean = tmp_path / "clean"
    clean.mkdir()
    for name in ("carphone.mp4", "vtest_small.avi", "tree.avi"):
        shutil.copy(VIDEOS / name, clean)
    write_frames(clean / "frames_ok", center_crop_resize(decode_video(VIDEOS / "vtest_small.avi")[:20], 24))
    damaged = tmp_path / "damaged"
    shutil.copytree(clean, damaged)
    data = (VIDEOS / "carphone.mp4").read_bytes()
    (damaged / "truncated.mp4").write_bytes(data[: int(len(data) * 0.6)])
    (damaged / "zero.mp4").write_bytes(b"")
    (damaged / "text.mp4").write_text("this is not a video\n")
    shutil.copytree(clean / "frames_ok", damaged / "frames_bad")
    (damaged / "frames_bad" / "frame7.png").write_bytes(b"\x89PNG broken")
    runs = {}
    for name, root in (("clean", clean), ("damaged", damaged)):
        runs[name] = prepare(data_cfg(root, test_fraction=0.5), tmp_path / f"out_{name}")
    rows = {r["path"]: r for r in runs["damaged"]["files"]}
    assert rows["zero.mp4"]["status"] == "skipped" and "empty file (0 bytes)" in rows["zero.mp4"]["reason"]
    assert rows["text.mp4"]["status"] == "skipped" and "cannot decode" in rows["text.mp4"]["reason"]
    assert rows["truncated.mp4"]["status"] == "skipped" and "damaged" in rows["truncated.mp4"]["reason"]
    assert rows["frames_bad"]["status"] == "skipped" and "frame7.png: cannot read image" in rows["frames_bad"]["reason"]
    assert runs["damaged"]["counts"] == {**runs["clean"]["counts"], "listed": 8, "skipped": 4}
    for split in ("train", "test"):  # the same clips from the same files, byte for byte
        a, b = (read_json(tmp_path / f"out_{n}" / split / "store.json") for n in ("clean", "damaged"))
        assert a["clips_sha256"] == b["clips_sha256"] and a["shape"] == b["shape"]
    # The file list is in the FVD card's dataset name: the damaged files make it another dataset.
    assert runs["clean"]["dataset_files_sha256"] != runs["damaged"]["dataset_files_sha256"]
    assert json.loads((tmp_path / "out_clean" / "manifest.json").read_text())["counts"]["used"] == 4


def test_shots_agree_with_pyscenedetect(tmp_path):
    """Our HSV content detector against PySceneDetect's ContentDetector (same threshold and minimum
    shot), where `scenedetect` is installed (pyproject extra `shot-check`; it brings OpenCV, which the
    pipeline itself does not need)."""
    scenedetect = pytest.importorskip("scenedetect", reason="scenedetect not installed (pip install '.[shot-check]')")
    a = center_crop_resize(decode_video(VIDEOS / "carphone.mp4")[:45], 96)
    b = center_crop_resize(decode_video(VIDEOS / "tree.avi")[:40], 96)
    videos = [VIDEOS / "bikes_small.mp4", VIDEOS / "carphone.mp4",
              encode(tmp_path / "joined.mp4", np.concatenate([a, b]), codec="libx264")]
    if (REPO.parent / "shared/data/real-videos/bikes.mp4").is_file():
        videos.append(REPO.parent / "shared/data/real-videos/bikes.mp4")  # five real scene cuts
    for path in videos:
        scenes = scenedetect.detect(str(path), scenedetect.ContentDetector(threshold=27.0, min_scene_len=15))
        theirs = [s[0].frame_num for s in scenes[1:]]
        ours = [first for first, _ in detect_shots(decode_video(path))[1:]]
        assert len(ours) == len(theirs) and all(abs(x - y) <= 1 for x, y in zip(ours, theirs, strict=True)), path


def test_init_writes_a_valid_config_sized_to_the_data(tmp_path):
    from pvdm.data.init_config import format_table, inspect_videos, write_config

    rows = inspect_videos(VIDEOS)
    table = format_table(rows)
    assert "bikes_small.mp4" in table and "no shot of 32 frames (longest 30 of 2 shots)" in table
    assert "4 inputs: 3 usable (2 train, 1 test), 1 skipped, 0 duplicates, 3 shots" in table
    out = tmp_path / "my.yaml"
    sizes = write_config(VIDEOS, rows, out, "mine")
    text = out.read_text()
    assert "resolution: 32        # paper: 256" in text and sizes["source_side"] == 144
    exp = experiment(load_config([out]), "mine")[1]  # schema-valid, defaults filled in
    assert exp["data"]["root"] == str(VIDEOS.resolve()) and exp["autoencoder"]["model"]["resolution"] == 32
    assert exp["eval"]["fvd_videos"] == exp["sampling"]["num_videos"] == 2 and exp["eval"]["recon_videos"] == 1
    small = [dict(r, size=[24, 20]) if r["status"] == "ok" else r for r in rows]  # sources below 32 px
    assert write_config(VIDEOS, small, tmp_path / "small.yaml")["resolution"] == 16


def test_no_usable_video_after_decoding_is_one_error_naming_the_folder(tmp_path):
    root = tmp_path / "bad"
    root.mkdir()
    (root / "a.mp4").write_text("not a video")
    (root / "b.mp4").write_bytes(b"")
    with pytest.raises(ValueError, match=rf"^{root}: split '(train|test)': 0 usable videos out of 1 \(first "
                                         r"problems: [ab]\.mp4: .*(cannot decode|empty file)"):
        prepare(data_cfg(root), tmp_path / "out")
    assert not (tmp_path / "out" / "manifest.json").exists()
    exp = data_cfg(root)
    exp["data"]["root"] = None
    with pytest.raises(ValueError, match="set data.root"):
        prepare(exp, tmp_path / "out")
