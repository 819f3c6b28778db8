"""The paper table: our metric files beside the numbers the PVDM paper reports.

Input: a list of rows (one experiment each), e.g.
    {"id": "ucf101", "label": "Ours, PVDM-L", "dataset": "ucf101", "kind": "ours",
     "paper_variant": "PVDM-L 400/400-s", "fvd16": "results/ucf101/metrics/fvd16.json",
     "fvd128": "results/ucf101/metrics/fvd128.json", "recon": "results/ucf101/metrics/recon.json"}
and the reported-numbers CSV (config/paper/pvdm_reported.csv). Output: one pandas DataFrame of numbers
(-> table1.csv / table1.json) and one of display strings with footnote marks (-> table1.md / table1.tex).

Paper numbers are matched by dataset + metric + the row's ``paper_variant`` (FVD16/FVD128), or by dataset
+ metric + split against the paper's ``autoencoder`` rows (R-FVD, PSNR). A number the CSV does not have is
an empty cell, never a guess. Every metric cell carries a footnote mark for its protocol card; identical
cards share a mark, and a card that differs from the paper's protocol (N, resolution, frames, EMA) says so
in its footnote. A missing metric file gives "n/a" and a footnote; a malformed one is an error naming it.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from pvdm.eval.records import FVDRecord, ISRecord, ReconRecord
from pvdm.utils.io import atomic_write_json, atomic_write_text

KINDS = ("ours", "released", "untrained", "real_floor")
ROW_KEYS = ("id", "label", "dataset", "kind", "paper_variant", "fvd16", "fvd128", "recon", "inception")
IS_DATASETS = ("ucf101",)  # the C3D that scores IS is a UCF-101 classifier
CONFIDENCE = {"V": "read in the paper or its abstract", "S": "secondary source", "M": "recalled, unverified"}
REPORTED_COLUMNS = ("method", "variant", "dataset", "metric", "split", "value", "uncertainty", "resolution",
                    "frames", "num_videos", "source", "confidence", "note")
AUTOENCODER_VARIANT = "autoencoder"  # the paper's reconstruction rows; shared by PVDM-S and PVDM-L
RECON_SPLIT = "test"  # split assumed for the paper's reconstruction numbers when recon.json is missing
NOT_REQUESTED = "–"
MISSING = "n/a"

# Table columns: each metric, followed by the paper number and the difference where the paper has one.
FVD_METRICS = ("fvd16", "fvd128")
RECON_METRICS = ("rfvd", "psnr", "ssim", "lpips")
PAPER_METRICS = ("fvd16", "fvd128", "rfvd", "psnr", "is")  # what the paper reports among our columns
TITLES = {"fvd16": "FVD16", "fvd128": "FVD128", "rfvd": "R-FVD", "psnr": "PSNR", "ssim": "SSIM", "lpips": "LPIPS",
          "is": "IS"}
DECIMALS = {"psnr": 2, "ssim": 3, "lpips": 3}  # FVDs: 1 decimal from 100 up, else 2 (as the paper prints)


@dataclass(frozen=True)
class Row:
    id: str
    label: str
    dataset: str
    kind: str
    paper_variant: str | None = None
    fvd16: str | None = None
    fvd128: str | None = None
    recon: str | None = None
    inception: str | None = None  # IS metric file (UCF-101 rows, when the C3D weights are given)


@dataclass
class Table:
    numbers: pd.DataFrame  # one row per experiment, numeric columns (csv / json)
    display: pd.DataFrame  # same rows, formatted strings (md / tex)
    marks: pd.DataFrame  # footnote marks per display cell ("" or "a,c")
    footnotes: list[tuple[str, str]]  # (mark, text) in order of first use
    reported_label: str  # how the reported-numbers file is named in the notes
    title: str = "Table 1: PVDM reproduction"
    notes: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------------
# Inputs


def parse_rows(rows: Any, source: str = "rows") -> list[Row]:
    """Validate a list of row dicts (see module docstring); errors name ``source`` and the row."""
    if not isinstance(rows, list) or not rows:
        raise ValueError(f"{source}: expected a non-empty list of row objects")
    out, seen = [], set()
    for i, r in enumerate(rows):
        where = f"{source}: row {i}"
        if not isinstance(r, dict):
            raise ValueError(f"{where}: expected an object, got {type(r).__name__}")
        unknown = sorted(set(r) - set(ROW_KEYS))
        if unknown:
            raise ValueError(f"{where}: unknown keys {unknown}; allowed: {list(ROW_KEYS)}")
        for key in ("id", "label", "dataset", "kind"):
            if not isinstance(r.get(key), str) or not r[key]:
                raise ValueError(f"{where}: '{key}' must be a non-empty string, got {r.get(key)!r}")
        for key in ("paper_variant", "fvd16", "fvd128", "recon", "inception"):
            if r.get(key) is not None and not isinstance(r[key], str):
                raise ValueError(f"{where} ({r['id']}): '{key}' must be a string or null, got {r[key]!r}")
        if r["kind"] not in KINDS:
            raise ValueError(f"{where} ({r['id']}): kind '{r['kind']}' is not one of {list(KINDS)}")
        if r["id"] in seen:
            raise ValueError(f"{where}: duplicate id '{r['id']}'")
        seen.add(r["id"])
        out.append(Row(**{k: r.get(k) or None for k in ROW_KEYS if k in r}))
    return out


def load_rows(path: str | os.PathLike) -> list[Row]:
    try:
        with open(path) as f:
            rows = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    return parse_rows(rows, str(path))


def load_reported(path: str | os.PathLike) -> pd.DataFrame:
    """The reported-numbers CSV as strings (the printed precision is kept), plus a float ``value_f`` column."""
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not a readable CSV ({e})") from None
    missing = [c for c in REPORTED_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"{path}: missing columns {missing}; expected {list(REPORTED_COLUMNS)}")
    for i, r in df.iterrows():
        where = f"{path}: line {int(i) + 2}"
        if not r["variant"] or not r["dataset"] or not r["metric"]:
            raise ValueError(f"{where}: variant, dataset and metric must be non-empty")
        if r["confidence"] not in CONFIDENCE:
            raise ValueError(f"{where}: confidence '{r['confidence']}' is not one of {list(CONFIDENCE)}")
        for col in ("value", "uncertainty", "resolution", "frames", "num_videos"):
            if col == "value" or r[col]:
                try:
                    v = float(r[col])
                except ValueError:
                    raise ValueError(f"{where}: {col} '{r[col]}' is not a number") from None
                if not math.isfinite(v):
                    raise ValueError(f"{where}: {col} '{r[col]}' is not finite")
    dup = df.duplicated(["variant", "dataset", "metric", "split"], keep=False)
    if dup.any():
        first = df[dup].iloc[0]
        raise ValueError(f"{path}: duplicate entries for variant '{first['variant']}', dataset "
                         f"'{first['dataset']}', metric '{first['metric']}', split '{first['split']}'")
    df["value_f"] = df["value"].astype(float)
    return df


# ---------------------------------------------------------------------------------------------------
# Protocol cards -> footnote text


def _fmt_resolution(res: Any) -> str | None:
    if isinstance(res, (list, tuple)) and len(res) == 2:
        return f"{res[0]}x{res[1]}"
    if isinstance(res, int):
        return f"{res}x{res}"
    return None


def _fmt_scalar(v: Any) -> str:
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v)


# The sampler of the paper's FVD numbers (DDIM, 400 steps, eta 1), as a label and as a described card.
PAPER_SAMPLER = ("ddim400_eta1", "ddim 400 steps eta 1")


def describe_sampler(sampler: Any) -> str:
    """``{"name": "ddim", "steps": 100, "eta": 1.0}`` -> "ddim 100 steps eta 1"; strings pass through."""
    if isinstance(sampler, dict):
        s = dict(sampler)
        parts = [str(s.pop("name", s.pop("type", "sampler")))]
        if "steps" in s:
            parts.append(f"{_fmt_scalar(s.pop('steps'))} steps")
        parts += [f"{k} {_fmt_scalar(v)}" for k, v in s.items() if v is not None]
        return " ".join(parts)
    return str(sampler)


def _describe_code(cv: Any) -> str | None:
    if not isinstance(cv, dict):
        return None
    text = f"pvdm {cv.get('pvdm', '?')}"
    if cv.get("git_commit"):
        text += f" @ {str(cv['git_commit'])[:10]}" + (" (dirty)" if cv.get("git_dirty") else "")
    return f"code {text}"


def describe_fvd_protocol(metric: FVDRecord, real_only: bool = False) -> str:
    """One line that says what an FVD number means, from its metric dict and protocol card.

    ``real_only`` describes the real side alone (for the real-vs-real floor: no sampler, EMA or bootstrap).
    """
    card = metric.protocol
    parts = []
    head = " ".join(str(card[k]) for k in ("dataset", "split") if card.get(k))
    if head:
        parts.append(head + (" split" if card.get("split") else ""))
    if real_only:
        n = metric.real_floor.n if metric.real_floor is not None and metric.real_floor.n is not None else "?"
        parts.append(f"2 x {n} of N={card.get('num_real', '?')} real clips")
    else:
        parts.append(f"N={card.get('num_real', '?')} real / {card.get('num_fake', '?')} fake")
    if card.get("frames") is not None:
        parts.append(f"{card['frames']} frames")
    res = _fmt_resolution(card.get("resolution"))
    if res:
        fake_res = None if real_only else _fmt_resolution(card.get("fake_resolution"))
        parts.append(res + (f" (fake {fake_res})" if fake_res and fake_res != res else ""))
    resize = card.get("resize")
    if isinstance(resize, dict):
        parts.append(f"{resize.get('mode', '?')} resize to {resize.get('size', '?')}")
    elif resize:
        parts.append(f"{resize} resize")
    if card.get("real_clip_selector"):
        seed = card.get("selector_seed")
        parts.append(f"real clips {card['real_clip_selector']}" + (f" (seed {seed})" if seed is not None else ""))
    if card.get("covariance"):
        parts.append(f"{str(card['covariance']).split(' ')[0]} covariance")
    if card.get("i3d_weights_sha256"):
        parts.append(f"I3D sha256 {str(card['i3d_weights_sha256'])[:12]}...")
    if card.get("sampler") is not None and not real_only:
        parts.append(f"sampler {describe_sampler(card['sampler'])}")
    if card.get("ema") is not None and not real_only:
        parts.append("EMA" if card["ema"] else "no EMA")
    how = metric.interval or {}
    if metric.interval95 is not None and how.get("rounds") and not real_only:
        if how.get("method") == "fixed_n":
            parts.append(f"95% interval of E[FVD_N] at this N (half-sample, {how['rounds']} rounds)")
        else:  # files from before the half-sample interval
            parts.append(f"95% {how.get('method', 'bootstrap')} interval, {how['rounds']} rounds")
    if metric.expected_bias is not None and not real_only:
        parts.append(f"estimated finite-N bias +{metric.expected_bias:.1f} (FVD at this N minus the population FVD)")
    code = _describe_code(card.get("code_version"))
    if code:
        parts.append(code)
    return ", ".join(parts)


def describe_recon_protocol(m: ReconRecord) -> str:
    """PSNR/SSIM/LPIPS footnote: number of videos, split and the scalar entries of the recon protocol."""
    parts = [f"reconstruction of {m.num_videos} {m.split} videos"]
    proto = m.protocol
    for k, v in proto.items():
        if k in ("code_version", "split", "num_videos") or v is None:
            continue
        if k == "resolution" and _fmt_resolution(v):
            parts.append(_fmt_resolution(v))
        elif isinstance(v, (str, int, float, bool)):
            parts.append(f"{k} {_fmt_scalar(v)}")
        elif isinstance(v, (list, tuple)) and all(isinstance(x, (str, int, float)) for x in v):
            parts.append(f"{k} {'x'.join(_fmt_scalar(x) for x in v)}")
    code = _describe_code(proto.get("code_version"))
    if code:
        parts.append(code)
    return ", ".join(parts)


def protocol_warnings(card: dict[str, Any], paper: pd.Series | None, dataset: str) -> list[str]:
    """How our protocol departs from the paper's (N, resolution, frames, EMA) and from the row's dataset."""
    out = []
    if card.get("dataset") and card["dataset"] != dataset:
        out.append(f"the card says dataset '{card['dataset']}', the row '{dataset}'")
    if paper is None:
        return out
    if paper["num_videos"]:
        n = int(float(paper["num_videos"]))
        ours = [card.get("num_real"), card.get("num_fake")]
        if any(x is not None and x != n for x in ours):
            out.append(f"N={ours[0]}/{ours[1]} real/fake vs the paper's {n}")
    if paper["resolution"]:
        r = int(float(paper["resolution"]))
        res = card.get("resolution")
        if isinstance(res, (list, tuple)) and list(res) != [r, r]:
            out.append(f"{_fmt_resolution(res)} vs the paper's {r}x{r}")
    if paper["frames"] and card.get("frames") is not None and card["frames"] != int(float(paper["frames"])):
        out.append(f"{card['frames']} frames vs the paper's {int(float(paper['frames']))}")
    if card.get("ema") is False and paper["variant"] != AUTOENCODER_VARIANT:
        out.append("raw weights vs the paper's EMA weights")
    sampler = card.get("sampler")
    if sampler is not None and paper["variant"] != AUTOENCODER_VARIANT and describe_sampler(sampler) not in PAPER_SAMPLER:
        out.append(f"sampler {describe_sampler(sampler)} vs the paper's DDIM 400 steps, eta 1")
    return out


# ---------------------------------------------------------------------------------------------------
# Building the table


def fmt_value(metric: str, x: float, signed: bool = False, like: float | None = None) -> str:
    """Paper-style precision; ``like`` picks the decimals from another value (interval ends follow the point)."""
    ref = x if like is None else like
    d = DECIMALS.get(metric, 1 if abs(ref) >= 100 else 2)
    return f"{x:+.{d}f}" if signed else f"{x:.{d}f}"


def fmt_interval(metric: str, value: float, interval: Sequence[float] | None) -> str:
    """"398.9 [380.1, 417.3]" (or just the value without an interval)."""
    cell = fmt_value(metric, value)
    if interval is not None:
        cell += f" [{fmt_value(metric, interval[0], like=value)}, {fmt_value(metric, interval[1], like=value)}]"
    return cell


def _mark_name(i: int) -> str:
    # a..z, then aa, ab, ...
    name = ""
    i += 1
    while i:
        i, r = divmod(i - 1, 26)
        name = chr(ord("a") + r) + name
    return name


class _Footnotes:
    def __init__(self) -> None:
        self.items: list[tuple[str, str]] = []

    def mark(self, text: str) -> str:
        for m, t in self.items:
            if t == text:
                return m
        m = _mark_name(len(self.items))
        self.items.append((m, text))
        return m


def _paper_lookup(reported: pd.DataFrame, variant: str, dataset: str, metric: str,
                  split: str = "") -> pd.Series | None:
    sel = reported[(reported["variant"] == variant) & (reported["dataset"] == dataset)
                   & (reported["metric"] == metric) & (reported["split"] == split)]
    return None if sel.empty else sel.iloc[0]


def _resolve(path: str, base_dir: Path) -> Path:
    p = Path(path)
    return p if p.is_absolute() else base_dir / p


class _RowCells:
    """The numbers, display strings and footnote marks of one table row, filled metric by metric."""

    def __init__(self, row: Row):
        self.row = row
        self.num: dict[str, Any] = {c: None for c in _number_columns()}
        self.num.update(id=row.id, label=row.label, dataset=row.dataset, kind=row.kind,
                        paper_variant=row.paper_variant)
        self.disp: dict[str, str] = {"Row": row.label, "Dataset": row.dataset, "Paper variant": row.paper_variant or ""}
        self.marks: dict[str, str] = {}
        self.status: list[str] = []

    def put(self, metric: str, text: str, mark: str = "") -> None:
        self.disp[TITLES[metric]] = text
        self.marks[TITLES[metric]] = mark

    def put_paper(self, metric: str, paper: pd.Series | None) -> None:
        ours = self.num[metric]
        title = TITLES[metric]
        if paper is None:
            self.disp[f"{title} paper"] = self.disp[f"{title} Δ"] = ""
            return
        self.num[f"{metric}_paper"], self.num[f"{metric}_paper_confidence"] = paper["value_f"], paper["confidence"]
        self.disp[f"{title} paper"] = f"{paper['value']} ({paper['confidence']})"
        self.disp[f"{title} Δ"] = ""
        if ours is not None:
            diff = round(ours - paper["value_f"], 6)
            self.num[f"{metric}_diff"] = diff
            self.disp[f"{title} Δ"] = fmt_value(metric, diff, signed=True)


def _with_warnings(text: str, warnings: list[str]) -> str:
    return text + (f". Differs from the paper: {'; '.join(warnings)}" if warnings else "")


def _fill_fvd(cells: _RowCells, metric: str, paper: pd.Series | None, base_dir: Path, notes: _Footnotes) -> None:
    """FVD16 / FVD128 of generated videos, or the real-vs-real floor of the same file for kind real_floor."""
    row = cells.row
    path = getattr(row, metric)
    if path is None:
        cells.put(metric, NOT_REQUESTED)
        return
    if not _resolve(path, base_dir).is_file():
        cells.put(metric, MISSING, notes.mark(f"{MISSING}: {path} not found (stage not run or failed)"))
        cells.status.append(f"{metric} missing")
        return
    m = FVDRecord.read(_resolve(path, base_dir))
    card, floor = m.protocol, m.real_floor
    cells.num[f"{metric}_num_real"], cells.num[f"{metric}_num_fake"] = card.get("num_real"), card.get("num_fake")
    if floor is not None:
        cells.num[f"{metric}_floor"], cells.num[f"{metric}_floor_n"] = floor.value, floor.n
    if row.kind == "real_floor":
        if floor is None:
            cells.put(metric, MISSING, notes.mark(f"{MISSING}: {path} has no real-vs-real floor"))
            cells.status.append(f"{metric} floor missing")
            return
        cells.num[metric] = floor.value
        n = floor.n
        text = "real-vs-real floor (FVD between two disjoint halves of the real clips): "
        cells.put(metric, fmt_value(metric, floor.value) + (f" (n={n})" if n is not None else ""),
                  notes.mark(text + describe_fvd_protocol(m, real_only=True)))
        return
    iv = m.interval95
    cells.num[metric] = m.value
    if iv is not None:
        cells.num[f"{metric}_lo"], cells.num[f"{metric}_hi"] = iv
    text = _with_warnings(describe_fvd_protocol(m), protocol_warnings(card, paper, row.dataset))
    cells.put(metric, fmt_interval(metric, m.value, iv), notes.mark(text))


def _fill_recon(cells: _RowCells, papers: dict[str, pd.Series | None], base_dir: Path,
                notes: _Footnotes) -> ReconRecord | None:
    """R-FVD, PSNR, SSIM, LPIPS of the autoencoder on held-out videos; returns the recon dict if read."""
    row = cells.row
    if row.recon is None or row.kind == "real_floor":
        for metric in RECON_METRICS:
            cells.put(metric, NOT_REQUESTED)
        return None
    if not _resolve(row.recon, base_dir).is_file():
        mark = notes.mark(f"{MISSING}: {row.recon} not found (stage not run or failed)")
        for metric in RECON_METRICS:
            cells.put(metric, MISSING, mark)
        cells.status.append("recon missing")
        return None
    recon = ReconRecord.read(_resolve(row.recon, base_dir))
    cells.num["recon_num_videos"] = recon.num_videos
    rf = recon.rfvd
    if rf is None:
        cells.put("rfvd", NOT_REQUESTED)
    else:
        cells.num["rfvd"] = rf.value
        if rf.interval95 is not None:
            cells.num["rfvd_lo"], cells.num["rfvd_hi"] = rf.interval95
        text = "R-FVD (reconstructions vs their inputs): " + describe_fvd_protocol(rf)
        text = _with_warnings(text, protocol_warnings(rf.protocol, papers["rfvd"], row.dataset))
        cells.put("rfvd", fmt_interval("rfvd", rf.value, rf.interval95), notes.mark(text))
    warn = protocol_warnings(recon.protocol, papers["psnr"], row.dataset)
    mark = notes.mark(_with_warnings(describe_recon_protocol(recon), warn))
    for metric in ("psnr", "ssim", "lpips"):
        value = getattr(recon, metric)
        cells.num[metric] = value
        cells.put(metric, fmt_value(metric, value), mark)
    return recon


def _fill_is(cells: _RowCells, base_dir: Path, notes: _Footnotes) -> None:
    """Inception Score (mean ± std over splits) with the UCF-101 C3D; UCF-101 rows without one say why."""
    row = cells.row
    if row.inception is None:
        if row.dataset in IS_DATASETS and row.kind in ("ours", "released"):
            cells.put("is", "not computed", notes.mark(
                "IS needs the TGANv2 UCF-101 C3D weights (conv3d_deepnetA_ucf.npz, mean2.npz from "
                "https://github.com/rezoo/tgan2/releases/download/v1.0/): set eval.c3d_dir to their folder"))
        else:
            cells.put("is", NOT_REQUESTED)
        return
    if not _resolve(row.inception, base_dir).is_file():
        cells.put("is", MISSING, notes.mark(f"{MISSING}: {row.inception} not found (stage not run or failed)"))
        cells.status.append("is missing")
        return
    m = ISRecord.read(_resolve(row.inception, base_dir))
    cells.num["is"], cells.num["is_std"], cells.num["is_num_videos"] = m.value, m.std, m.num_videos
    card = m.protocol
    text = (f"Inception Score, {card.get('protocol', 'C3D')}: N={m.num_videos} generated videos, {m.frames} frames, "
            f"mean ± std over {m.splits} splits, C3D sha256 {str(card.get('c3d_weights_sha256', '?'))[:12]}...")
    code = _describe_code(card.get("code_version"))
    cells.put("is", f"{m.value:.2f} ± {m.std:.2f}", notes.mark(text + (f", {code}" if code else "")))


def _recon_split(row: Row, base_dir: Path) -> str:
    # The paper's reconstruction number to compare with is the one of the split we evaluated.
    if row.recon is not None and _resolve(row.recon, base_dir).is_file():
        return ReconRecord.read(_resolve(row.recon, base_dir)).split
    return RECON_SPLIT


def build_table(rows: Sequence[Row] | list[dict[str, Any]], reported: pd.DataFrame | str | os.PathLike,
                base_dir: str | os.PathLike = ".", title: str = "Table 1: PVDM reproduction") -> Table:
    """Read every row's metric files and put them beside the paper's numbers.

    Relative metric paths are taken from ``base_dir`` (the working directory of the Snakemake run) and are
    shown as given in footnotes.
    """
    base_dir = Path(base_dir)
    if rows and isinstance(rows[0], dict):
        rows = parse_rows(list(rows))
    reported_label = "reported numbers"
    if not isinstance(reported, pd.DataFrame):
        reported_label = _relative_label(Path(reported), base_dir)
        reported = load_reported(reported)
    variants = set(reported["variant"])
    notes = _Footnotes()
    with_is = any(r.inception is not None or r.dataset in IS_DATASETS for r in rows)
    all_cells = []
    for row in rows:
        if row.paper_variant is not None and row.paper_variant not in variants:
            raise ValueError(f"row '{row.id}': paper_variant '{row.paper_variant}' is not in the reported numbers "
                             f"({sorted(variants)})")
        # No paper comparison for real-vs-real rows or rows that name no paper variant.
        compare = row.paper_variant is not None and row.kind != "real_floor"
        papers: dict[str, pd.Series | None] = {m: None for m in PAPER_METRICS}
        if compare:
            for metric in FVD_METRICS:
                papers[metric] = _paper_lookup(reported, row.paper_variant, row.dataset, metric)
            split = _recon_split(row, base_dir)
            for metric in ("rfvd", "psnr"):
                papers[metric] = _paper_lookup(reported, AUTOENCODER_VARIANT, row.dataset, metric, split)
            # The paper's IS table names the model (PVDM-L), not the sampler variant.
            papers["is"] = (_paper_lookup(reported, row.paper_variant, row.dataset, "is")
                            if row.paper_variant in set(reported[reported["metric"] == "is"]["variant"])
                            else _paper_lookup(reported, row.paper_variant.split()[0], row.dataset, "is"))
        cells = _RowCells(row)
        for metric in FVD_METRICS:
            _fill_fvd(cells, metric, papers[metric], base_dir, notes)
        _fill_recon(cells, papers, base_dir, notes)
        if with_is:
            _fill_is(cells, base_dir, notes)
        for metric in PAPER_METRICS:
            cells.put_paper(metric, papers[metric])
        cells.num["status"] = "; ".join(cells.status) if cells.status else "ok"
        used = {m for ms in cells.marks.values() for m in ms.split(",") if m}
        cells.num["marks"] = ",".join(sorted(used, key=_mark_key))
        all_cells.append(cells)

    display_cols = ["Row", "Dataset", "Paper variant"]
    for metric in (*FVD_METRICS, *RECON_METRICS, *(("is",) if with_is else ())):
        display_cols.append(TITLES[metric])
        if metric in PAPER_METRICS:
            display_cols += [f"{TITLES[metric]} paper", f"{TITLES[metric]} Δ"]
    display = pd.DataFrame([[c.disp.get(k, "") for k in display_cols] for c in all_cells], columns=display_cols)
    marks = pd.DataFrame([[c.marks.get(k, "") for k in display_cols] for c in all_cells], columns=display_cols)
    numbers = pd.DataFrame([c.num for c in all_cells], columns=_number_columns())
    for col in numbers.columns:
        if col.endswith(("_num_real", "_num_fake", "_floor_n")) or col in ("recon_num_videos", "is_num_videos"):
            numbers[col] = numbers[col].astype("Int64")
    general = [
        f"Paper numbers: {reported_label}, matched by dataset, metric and the row's paper variant (R-FVD and PSNR: "
        "the paper's autoencoder rows of the same split). Confidence: "
        + "; ".join(f"{k} = {v}" for k, v in CONFIDENCE.items()) + ". Δ = ours - paper; an empty paper cell means "
        "the paper number is not known, not zero.",
        "FVD16/FVD128/R-FVD: value [95% interval] under each cell's protocol (footnotes): the interval is of the "
        "expected FVD at the cell's N (measured coverage 96-98% at N = 64-256, benchmarks/results/"
        "fvd_interval_coverage.md); it is not an interval of the population FVD, which the estimated "
        "finite-N bias in the footnote separates from it, nor the real-vs-real floor. "
        f"{MISSING} = metric file missing; {NOT_REQUESTED} = not part of this row.",
    ]
    return Table(numbers, display, marks, notes.items, reported_label, title, general)


def _mark_key(m: str) -> tuple[int, str]:
    return (len(m), m)


def _number_columns() -> list[str]:
    cols = ["id", "label", "dataset", "kind", "paper_variant"]
    for m in FVD_METRICS:
        cols += [m, f"{m}_lo", f"{m}_hi", f"{m}_num_real", f"{m}_num_fake", f"{m}_floor", f"{m}_floor_n",
                 f"{m}_paper", f"{m}_paper_confidence", f"{m}_diff"]
    cols += ["rfvd", "rfvd_lo", "rfvd_hi", "rfvd_paper", "rfvd_paper_confidence", "rfvd_diff",
             "psnr", "psnr_paper", "psnr_paper_confidence", "psnr_diff", "ssim", "lpips", "recon_num_videos",
             "is", "is_std", "is_num_videos", "is_paper", "is_paper_confidence", "is_diff", "status", "marks"]
    return cols


def _relative_label(path: Path, base_dir: Path) -> str:
    try:
        return str(path.resolve().relative_to(base_dir.resolve()))
    except ValueError:
        return str(path)


# ---------------------------------------------------------------------------------------------------
# Renderers


def _md_escape(s: str) -> str:
    return s.replace("|", "\\|")


def to_markdown(table: Table) -> str:
    cols = list(table.display.columns)
    lines = [f"# {table.title}", "", "| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for (_, d), (_, mk) in zip(table.display.iterrows(), table.marks.iterrows(), strict=True):
        cells = [_md_escape(str(d[c])) + (f"<sup>{mk[c]}</sup>" if mk[c] else "") for c in cols]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines += table.notes
    lines.append("")
    lines += [f"- <sup>{m}</sup> {_md_escape(t)}" for m, t in table.footnotes]
    return "\n".join(lines) + "\n"


_TEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
                "Δ": r"$\Delta$", "–": "--", "≥": r"$\geq$"}


def _tex_escape(s: str) -> str:
    return "".join(_TEX_SPECIAL.get(ch, ch) for ch in s)


def to_latex(table: Table) -> str:
    cols = list(table.display.columns)
    lines = [f"% {table.title}; generated by `pvdm table`",
             r"\begin{tabular}{" + "ll" + "l" + "r" * (len(cols) - 3) + "}", r"\toprule",
             " & ".join(_tex_escape(c) for c in cols) + r" \\", r"\midrule"]
    for (_, d), (_, mk) in zip(table.display.iterrows(), table.marks.iterrows(), strict=True):
        cells = [_tex_escape(str(d[c])) + (rf"\textsuperscript{{{mk[c]}}}" if mk[c] else "") for c in cols]
        lines.append(" & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", ""]
    lines += [f"% {_tex_escape(n)}" for n in table.notes]
    lines += [rf"\par\noindent\textsuperscript{{{m}}} {_tex_escape(t)}" for m, t in table.footnotes]
    return "\n".join(lines) + "\n"


def to_csv(table: Table) -> str:
    return table.numbers.to_csv(index=False, lineterminator="\n")


def to_json(table: Table) -> dict[str, Any]:
    """Machine-readable table (``dvc metrics show``): numbers per row id, footnotes by mark."""
    rows = {}
    for rec in table.numbers.to_dict(orient="records"):
        rows[rec["id"]] = {k: (None if _isna(v) else _plain(v)) for k, v in rec.items() if k != "id"}
    return {"title": table.title, "reported": table.reported_label, "rows": rows,
            "footnotes": dict(table.footnotes)}


def _isna(v: Any) -> bool:
    return v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v))


def _plain(v: Any) -> Any:
    return v.item() if hasattr(v, "item") else v


def write_table(table: Table, out_dir: str | os.PathLike, name: str = "table1") -> list[Path]:
    """Write ``name``.md / .csv / .tex / .json into ``out_dir`` atomically; returns the paths."""
    out_dir = Path(out_dir)
    paths = [out_dir / f"{name}.{ext}" for ext in ("md", "csv", "tex", "json")]
    atomic_write_text(paths[0], to_markdown(table))
    atomic_write_text(paths[1], to_csv(table))
    atomic_write_text(paths[2], to_latex(table))
    atomic_write_json(paths[3], to_json(table))
    return paths
