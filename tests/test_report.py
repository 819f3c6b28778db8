"""The paper table (fixture metric files -> golden md/csv), the reported-numbers CSV, and the figures.

Regenerate the golden files after an intended change with
    PVDM_UPDATE_GOLDEN=1 .venv/bin/python -m pytest tests/test_report.py -k golden
and read the diff before committing it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pvdm.eval.records import FVDRecord
from pvdm.report import commands
from pvdm.report.figures import (
    metric_step,
    plot_comparison,
    plot_fvd_checkpoints,
    plot_sample_strip,
    plot_training_curves,
    read_log,
    stage_offsets,
    strip_image,
)
from pvdm.report.table import (
    build_table,
    load_reported,
    load_rows,
    parse_rows,
    protocol_warnings,
    to_json,
    to_latex,
    to_markdown,
    write_table,
)

REPO = Path(__file__).resolve().parents[1]
DATA = Path(__file__).parent / "data" / "report"
REPORTED = REPO / "config" / "paper" / "pvdm_reported.csv"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def table():
    return build_table(load_rows(DATA / "rows.json"), REPORTED, base_dir=REPO)


def _row(table, row_id: str) -> dict:
    return table.numbers.set_index("id").loc[row_id].to_dict()


# ---------------------------------------------------------------------------------------------------
# Reported numbers


def test_reported_csv_has_headline_numbers():
    df = load_reported(REPORTED)
    assert set(df["confidence"]) <= {"V", "S", "M"}
    assert not df.duplicated(["variant", "dataset", "metric", "split"]).any()
    assert (df["source"].str.len() > 0).all()

    def value(variant, dataset, metric, split=""):
        sel = df[(df.variant == variant) & (df.dataset == dataset) & (df.metric == metric) & (df.split == split)]
        assert len(sel) == 1, (variant, dataset, metric, split)
        return sel.iloc[0]

    expected = [  # (variant, dataset, metric, split, value, confidence): docs/original-pvdm.md#paper-numbers
        ("PVDM-L", "ucf101", "fvd16", "", 398.9, "S"),
        ("PVDM-L", "ucf101", "fvd128", "", 639.7, "V"),
        ("PVDM-L 400/400-s", "ucf101", "fvd16", "", 343.6, "V"),
        ("PVDM-L 400/400-s", "ucf101", "fvd128", "", 648.4, "M"),
        ("PVDM-L 400/400-s", "sky", "fvd16", "", 55.41, "V"),
        ("PVDM-L", "sky", "fvd16", "", 61.70, "S"),
        ("PVDM-S", "ucf101", "fvd16", "", 457.4, "S"),
        ("PVDM-S", "sky", "fvd128", "", 159.3, "M"),
        ("PVDM-L", "ucf101", "is", "", 74.40, "S"),
        ("autoencoder", "ucf101", "rfvd", "test", 32.26, "S"),
        ("autoencoder", "ucf101", "psnr", "train", 27.34, "S"),
        ("autoencoder", "sky", "rfvd", "test", 36.52, "V"),
        ("autoencoder", "sky", "psnr", "test", 32.68, "S"),
        ("StyleGAN-V", "ucf101", "fvd128", "", 1773.4, "V"),
        ("StyleGAN-V", "sky", "fvd16", "", 79.52, "M"),
        ("DIGAN", "ucf101", "fvd16", "", 1630.2, "S"),
        ("DIGAN", "sky", "fvd128", "", 196.7, "M"),
    ]
    for variant, dataset, metric, split, v, conf in expected:
        r = value(variant, dataset, metric, split)
        assert r["value_f"] == pytest.approx(v), (variant, dataset, metric)
        assert r["confidence"] == conf, (variant, dataset, metric)
    assert value("PVDM-L", "ucf101", "is")["uncertainty"] == "1.25"
    assert value("PVDM-L", "sky", "fvd16")["value"] == "61.70"  # printed precision is kept
    # every PVDM variant has all four FVD cells (UCF/Sky x 16/128 frames)
    for variant in ("PVDM-S", "PVDM-L", "PVDM-L 400/400-s"):
        for dataset in ("ucf101", "sky"):
            for metric in ("fvd16", "fvd128"):
                assert value(variant, dataset, metric)["num_videos"] == "2048"


def test_reported_csv_rejects_bad_rows(tmp_path):
    text = REPORTED.read_text().splitlines()
    bad_conf = tmp_path / "conf.csv"
    bad_conf.write_text("\n".join([text[0], text[1].replace(",S,", ",X,")]) + "\n")
    with pytest.raises(ValueError, match=r"conf\.csv: line 2: confidence 'X'"):
        load_reported(bad_conf)
    dup = tmp_path / "dup.csv"
    dup.write_text("\n".join([text[0], text[1], text[1]]) + "\n")
    with pytest.raises(ValueError, match=r"dup\.csv: duplicate entries for variant 'PVDM-S'"):
        load_reported(dup)
    nan = tmp_path / "value.csv"
    nan.write_text("\n".join([text[0], text[1].replace("457.4", "about 450")]) + "\n")
    with pytest.raises(ValueError, match=r"value\.csv: line 2: value 'about 450' is not a number"):
        load_reported(nan)


# ---------------------------------------------------------------------------------------------------
# Table


def test_table_golden_md_csv(table, tmp_path):
    paths = write_table(table, tmp_path)
    assert [p.name for p in paths] == ["table1.md", "table1.csv", "table1.tex", "table1.json"]
    for name in ("table1.md", "table1.csv"):
        got = (tmp_path / name).read_bytes()
        if os.environ.get("PVDM_UPDATE_GOLDEN"):
            (DATA / name).write_bytes(got)
        assert got == (DATA / name).read_bytes(), f"{name} differs from tests/data/report/{name}"


def test_table_numbers_and_paper_matching(table):
    ours = json.loads((DATA / "ucf_ours_fvd16.json").read_text())
    r = _row(table, "ucf101")
    assert r["fvd16"] == ours["value"]
    assert [r["fvd16_lo"], r["fvd16_hi"]] == ours["interval95"]
    assert r["fvd16_paper"] == 343.6 and r["fvd16_paper_confidence"] == "V"
    assert r["fvd16_diff"] == pytest.approx(ours["value"] - 343.6)
    assert r["fvd128_paper"] == 648.4
    # reconstruction numbers are compared with the paper's autoencoder row of the same (test) split
    assert r["rfvd_paper"] == 32.26 and r["psnr_paper"] == 26.99
    assert r["psnr_diff"] == pytest.approx(24.8127 - 26.99)
    assert r["status"] == "ok"
    d = table.display.set_index("Row").loc["Ours, small (CPU)"]
    assert d["FVD16"] == "812.4 [771.2, 903.6]"
    assert d["FVD16 paper"] == "343.6 (V)" and d["FVD16 Δ"] == "+468.8"
    assert d["R-FVD"] == "95.22 [88.40, 108.77]"
    assert d["PSNR Δ"] == "-2.18"
    # a row without a paper variant gets empty paper cells, never a number
    u = _row(table, "mnist_untrained")
    assert all(u[f"{m}_paper"] is None or np.isnan(u[f"{m}_paper"]) for m in ("fvd16", "fvd128", "rfvd", "psnr"))
    assert table.display.set_index("Row").loc["Untrained U-Net", "FVD16 paper"] == ""


def test_table_real_floor_row(table):
    f = _row(table, "ucf101_floor")
    floor = json.loads((DATA / "ucf_ours_fvd16.json").read_text())["real_floor"]
    assert f["fvd16"] == floor["value"] and f["fvd16_floor_n"] == floor["n"]
    assert np.isnan(f["fvd16_lo"])  # a floor has no bootstrap interval here
    d = table.display.set_index("Row").loc["Real vs real (UCF-101)"]
    assert d["FVD16"] == "196.0 (n=32)" and d["FVD16 paper"] == ""
    # floors are carried for every row with an FVD file
    assert _row(table, "sky_released")["fvd16_floor"] == pytest.approx(7.1189)


def test_table_footnotes_protocol_marks(table):
    notes = dict(table.footnotes)
    marks = table.marks.set_index(table.display["Row"])
    ucf16, ucf128 = marks.loc["Ours, small (CPU)", "FVD16"], marks.loc["Ours, small (CPU)", "FVD128"]
    sky16 = marks.loc["Released PVDM checkpoint", "FVD16"]
    assert len({ucf16, ucf128, sky16}) == 3  # different protocols, different marks
    assert marks.loc["Ours, small (CPU)", "PSNR"] == marks.loc["Ours, small (CPU)", "SSIM"]  # same card, same mark
    assert "N=64 real / 64 fake, 16 frames, 64x64, bilinear resize to 224" in notes[ucf16]
    assert "biased covariance, I3D sha256 de1550d57435..., sampler ddim 100 steps eta 1, EMA" in notes[ucf16]
    assert "Differs from the paper: N=64/64 real/fake vs the paper's 2048; 64x64 vs the paper's 256x256" in notes[ucf16]
    assert "128 frames" in notes[ucf128]
    # the released checkpoint was evaluated under the paper's protocol: no warning
    assert "N=2048 real / 2048 fake" in notes[sky16] and "Differs" not in notes[sky16]
    assert "sampler ddim 400 steps eta 1" in notes[sky16]


def test_table_missing_files_show_na(table):
    r = _row(table, "sky_released")
    assert r["status"] == "fvd128 missing; recon missing"
    d = table.display.set_index("Row").loc["Released PVDM checkpoint"]
    m = table.marks.set_index(table.display["Row"]).loc["Released PVDM checkpoint"]
    assert d["FVD128"] == "n/a" and d["PSNR"] == "n/a" and d["LPIPS"] == "n/a"
    assert dict(table.footnotes)[m["FVD128"]] == (
        "n/a: tests/data/report/sky_released_fvd128.json not found (stage not run or failed)")
    # the paper's number is still shown beside the missing one, without a difference
    assert d["FVD128 paper"] == "125.2 (M)" and d["FVD128 Δ"] == ""
    md = to_markdown(table)
    assert f"| n/a<sup>{m['FVD128']}</sup> | 125.2 (M) |  |" in md


def test_table_all_files_missing_does_not_crash(tmp_path):
    rows = [{"id": "x", "label": "Nothing yet", "dataset": "ucf101", "kind": "ours", "paper_variant": "PVDM-L",
             "fvd16": "a.json", "fvd128": "b.json", "recon": "c.json"}]
    t = build_table(rows, REPORTED, base_dir=tmp_path)
    assert list(t.display.loc[0, ["FVD16", "FVD128", "R-FVD", "PSNR"]]) == ["n/a"] * 4
    assert t.display.loc[0, "FVD16 paper"] == "398.9 (S)"
    # three missing files, and the UCF-101 row says why its Inception Score is absent
    assert len(t.footnotes) == 4 and "eval.c3d_dir" in t.footnotes[-1][1]
    assert t.display.loc[0, "IS"].startswith("not computed")


@pytest.mark.parametrize("content, message", [
    ("{not json", r"bad\.json: not valid JSON"),
    ('{"interval95": null, "protocol": {}}', r"bad\.json: 'value' must be a finite number, got None"),
    ('{"value": "812", "protocol": {}}', r"bad\.json: 'value' must be a finite number, got '812'"),
    ('{"value": 1.0, "interval95": [1.0], "protocol": {}}', r"bad\.json: 'interval95' must be null or \[lo, hi\]"),
    ('{"value": 1.0, "interval95": null}', r"bad\.json: 'protocol' must be an object"),
    ("[1, 2]", r"bad\.json: expected a JSON object, got list"),
])
def test_malformed_fvd_file_names_the_file(tmp_path, content, message):
    (tmp_path / "bad.json").write_text(content)
    rows = [{"id": "x", "label": "x", "dataset": "ucf101", "kind": "ours", "fvd16": "bad.json"}]
    with pytest.raises(ValueError, match=message):
        build_table(rows, REPORTED, base_dir=tmp_path)


def test_malformed_recon_file_names_the_file(tmp_path):
    recon = json.loads((DATA / "ucf_ours_recon.json").read_text())
    del recon["psnr"]
    (tmp_path / "recon.json").write_text(json.dumps(recon))
    rows = [{"id": "x", "label": "x", "dataset": "ucf101", "kind": "ours", "recon": "recon.json"}]
    with pytest.raises(ValueError, match=r"recon\.json: 'psnr' must be a finite number"):
        build_table(rows, REPORTED, base_dir=tmp_path)
    recon = json.loads((DATA / "ucf_ours_recon.json").read_text())
    recon["rfvd"]["value"] = None
    (tmp_path / "recon.json").write_text(json.dumps(recon))
    with pytest.raises(ValueError, match=r"recon\.json rfvd: 'value' must be a finite number"):
        build_table(rows, REPORTED, base_dir=tmp_path)


def test_rows_validation():
    good = {"id": "a", "label": "A", "dataset": "ucf101", "kind": "ours"}
    with pytest.raises(ValueError, match=r"rows: row 0 \(a\): kind 'mine' is not one of"):
        parse_rows([{**good, "kind": "mine"}])
    with pytest.raises(ValueError, match=r"rows: row 1: duplicate id 'a'"):
        parse_rows([good, good])
    with pytest.raises(ValueError, match=r"unknown keys \['fvd'\]"):
        parse_rows([{**good, "fvd": "x.json"}])
    with pytest.raises(ValueError, match=r"row 'a': paper_variant 'PVDM-XL' is not in the reported numbers"):
        build_table([{**good, "paper_variant": "PVDM-XL"}], REPORTED)


def test_protocol_warnings_cover_n_resolution_frames_ema():
    paper = load_reported(REPORTED).set_index(["variant", "dataset", "metric"]).loc[("PVDM-L", "ucf101", "fvd128")]
    paper = paper.copy()
    paper["variant"] = "PVDM-L"
    card = {"dataset": "ucf101", "num_real": 2048, "num_fake": 2048, "frames": 128, "resolution": [256, 256],
            "ema": True}
    assert protocol_warnings(card, paper, "ucf101") == []
    bad = {**card, "num_fake": 1024, "frames": 64, "resolution": [128, 128], "ema": False, "dataset": "sky"}
    assert protocol_warnings(bad, paper, "ucf101") == [
        "the card says dataset 'sky', the row 'ucf101'", "N=2048/1024 real/fake vs the paper's 2048",
        "128x128 vs the paper's 256x256", "64 frames vs the paper's 128", "raw weights vs the paper's EMA weights"]


def test_table_json_and_tex(table):
    j = to_json(table)
    assert list(j["rows"]) == ["ucf101", "ucf101_floor", "sky_released", "mnist_untrained"]
    assert j["rows"]["ucf101"]["fvd16_paper"] == 343.6
    assert j["rows"]["sky_released"]["fvd128"] is None
    assert set(j["footnotes"]) == {m for m, _ in table.footnotes}
    json.dumps(j, allow_nan=False)  # strict JSON: no NaN
    tex = to_latex(table)
    assert r"\begin{tabular}" in tex and r"\end{tabular}" in tex
    assert r"moving\_mnist" in tex and r"FVD16 $\Delta$" in tex and r"\textsuperscript{a}" in tex
    assert tex.count(r" \\") == 1 + len(table.display)  # header + one line per row


def test_cli_table_and_figures(tmp_path):
    parser = argparse.ArgumentParser(prog="pvdm")
    sub = parser.add_subparsers(dest="command", required=True)
    commands.register(sub)
    out = tmp_path / "paper"
    args = parser.parse_args(["table", "--rows", str(DATA / "rows.json"), "--reported", str(REPORTED),
                              "--out", str(out), "--base-dir", str(REPO)])
    args.func(args)
    assert (out / "table1.md").read_bytes() == (DATA / "table1.md").read_bytes()
    assert json.loads((out / "table1.json").read_text())["rows"]["ucf101"]["fvd16"] == pytest.approx(812.4317)

    videos = np.random.default_rng(0).integers(0, 256, (3, 8, 16, 16, 3), dtype=np.uint8)
    np.save(tmp_path / "v.npy", videos)
    args = parser.parse_args(["figures", "strip", "--videos", str(tmp_path / "v.npy"), "--out",
                              str(tmp_path / "strip.png"), "--num-videos", "2", "--every", "4"])
    args.func(args)
    img = np.asarray(Image.open(tmp_path / "strip.png").convert("RGB"))
    np.testing.assert_array_equal(img, strip_image(videos, 2, 4))
    with pytest.raises(FileNotFoundError, match="missing.jsonl"):
        args = parser.parse_args(["figures", "curves", str(tmp_path / "missing.jsonl"), "--out", "x.png"])
        args.func(args)
    help_text = sub.choices["table"].format_help()
    assert "paper_variant" in help_text and "real_floor" in help_text


# ---------------------------------------------------------------------------------------------------
# Figures


def _check_png(path: Path, min_colours: int = 20) -> np.ndarray:
    assert path.read_bytes()[:8] == PNG_MAGIC
    img = np.asarray(Image.open(path).convert("RGB"))
    assert len(np.unique(img.reshape(-1, 3), axis=0)) >= min_colours, f"{path} is nearly blank"
    return img


def _write_log(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_training_curves_png(tmp_path):
    steps = range(0, 300, 10)
    ae = _write_log(tmp_path / "ae" / "log.jsonl", [
        {"step": s, "time": 1.0 * s, "g/total": 1 / (1 + s / 50), "g/l1": 0.5 / (1 + s / 80), "d/total": 1.0,
         **({"eval/psnr": 18 + s / 40, "eval/lpips": 0.4 - s / 1000} if s % 100 == 0 else {})} for s in steps])
    diff = _write_log(tmp_path / "diffusion" / "log.jsonl", [{"step": s, "loss": 0.2 / (1 + s / 100)} for s in steps])
    one = _check_png(plot_training_curves([diff], tmp_path / "one.png"))
    both = _check_png(plot_training_curves({"ae": ae, "diffusion": diff}, tmp_path / "both.png", title="run"))
    # one panel per eval metric below the loss panel makes the figure taller
    assert both.shape[0] > one.shape[0]
    with pytest.raises(ValueError, match=r"none of the keys \['nope'\]"):
        plot_training_curves([diff], tmp_path / "x.png", keys=["nope"])
    # stage 1 then the GAN stage: the GAN's steps continue where stage 1 ended, not from 0 again
    gan = _write_log(tmp_path / "gan" / "log.jsonl", [{"step": s, "g/total": 0.3} for s in range(0, 26, 5)])
    assert stage_offsets([read_log(ae), read_log(gan), read_log(diff)]) == [0, 290, 315]
    _check_png(plot_training_curves({"stage1": ae, "gan": gan}, tmp_path / "seq.png", consecutive=True))


def test_read_log_errors(tmp_path):
    path = _write_log(tmp_path / "log.jsonl", [{"step": 2, "loss": 1.0}, {"step": 1, "loss": 2.0}])
    assert [r["step"] for r in read_log(path)] == [1, 2]  # sorted by step
    with open(path, "a") as f:
        f.write('{"step": 3, "loss": \n')
    with pytest.raises(ValueError, match=r"log\.jsonl: line 3 is not valid JSON"):
        read_log(path)


def test_sample_strip_layout_and_png(tmp_path):
    videos = np.random.default_rng(1).integers(0, 256, (5, 12, 10, 14, 3), dtype=np.uint8)
    img = strip_image(videos, num_videos=3, every=4, pad=2)
    assert img.shape == (3 * 12 + 2, 3 * 16 + 2, 3)  # 3 videos x frames 0, 4, 8
    np.testing.assert_array_equal(img[2 + 12:2 + 12 + 10, 2 + 2 * 16:2 + 2 * 16 + 14], videos[1, 8])
    assert (img[:2] == 255).all()  # white padding
    png = _check_png(plot_sample_strip(videos, tmp_path / "strip.png", 3, 4))
    np.testing.assert_array_equal(png, img)  # drawn at native size, pixel for pixel
    grey = strip_image(videos[..., :1], 2, 6)
    assert grey.shape[-1] == 3 and (grey[2, 2] == videos[0, 0, 0, 0, 0]).all()
    with pytest.raises(ValueError, match="expected uint8 videos"):
        strip_image(videos.astype(np.float32))


def _find(img: np.ndarray, part: np.ndarray) -> list[tuple[int, int]]:
    """Top-left corners where ``part`` appears pixel for pixel in ``img``."""
    h, w = part.shape[:2]
    return [(y, x) for y, x in zip(*np.nonzero((img[: img.shape[0] - h + 1, : img.shape[1] - w + 1] == part[0, 0]).all(-1)),
                                   strict=True)
            if (img[y:y + h, x:x + w] == part).all()]


def test_comparison_figure_stacks_labelled_strips(tmp_path):
    rng = np.random.default_rng(2)
    blocks = [(name, rng.integers(0, 256, (3, 8, 12, 12, 3), dtype=np.uint8)) for name in ("real", "rec", "gen")]
    png = _check_png(plot_comparison(blocks, tmp_path / "cmp.png", every=2, title="t"))
    found = [_find(png, strip_image(v, 3, 2)) for _, v in blocks]
    assert all(len(f) == 1 for f in found)  # every strip once, pixel for pixel
    (y0, x0), (y1, x1), (y2, x2) = (f[0] for f in found)
    assert y0 < y1 < y2 and x0 == x1 == x2  # top to bottom in the given order, aligned
    big = _check_png(plot_comparison(blocks, tmp_path / "big.png", every=2, scale=3))
    assert len(_find(big, strip_image(blocks[1][1], 3, 2).repeat(3, 0).repeat(3, 1))) == 1
    with pytest.raises(ValueError, match="at least one"):
        plot_comparison([], tmp_path / "none.png")


def test_fvd_over_checkpoints(tmp_path):
    base16 = json.loads((DATA / "ucf_ours_fvd16.json").read_text())
    base128 = json.loads((DATA / "ucf_ours_fvd128.json").read_text())
    files = []
    for step, v in ((1000, 1500.0), (5000, 900.0), (20000, 700.0)):
        for base, name in ((base16, "fvd16"), (base128, "fvd128")):
            m = json.loads(json.dumps(base))
            m["value"], m["interval95"] = v * (1 + (name == "fvd128")), [v * 0.9, v * 1.2]
            files.append(tmp_path / f"step_{step}" / f"{name}.json")
            files[-1].parent.mkdir(exist_ok=True)
            files[-1].write_text(json.dumps(m))
    _check_png(plot_fvd_checkpoints(files, tmp_path / "fvd.png", title="UCF-101"))
    record = FVDRecord.read(files[0])
    assert metric_step(record, files[0]) == 1000  # from the folder name
    with_step = dataclasses.replace(record, protocol={"step": 42})
    assert metric_step(with_step, "fvd16.json") == 42  # from the card
    no_step = dataclasses.replace(record, protocol={})
    assert metric_step(no_step, "fvd16_step050000.json") == 50000
    with pytest.raises(ValueError, match=r"fvd16\.json: no training step"):
        metric_step(no_step, "fvd16.json")  # the 16 of fvd16 is not a step


def test_fixture_files_are_valid_metric_files():
    # the fixtures follow the layout pvdm.eval.fvd.evaluate_fvd writes
    for name in ("ucf_ours_fvd16.json", "ucf_ours_fvd128.json", "sky_released_fvd16.json",
                 "mnist_untrained_fvd16.json"):
        m = FVDRecord.read(DATA / name)
        assert m.metric == m.protocol["metric"] and m.value_eig is not None and "rounds" in m.interval
        assert FVDRecord.from_json(m.to_json(), name) == m  # the round trip keeps everything
