"""The report: every figure drawn from a store, a self-contained page that renders in Chromium."""

from __future__ import annotations

import base64
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from mechmoe.analysis.testing import toy_store
from mechmoe.core.errors import OutputError
from mechmoe.report import build_report, pattern_checks
from mechmoe.report.figures import FIGURES

KEYS = [
    "lorenz",
    "backbone",
    "consolidation",
    "hit",
    "robustness",
    "heatmap",
    "routing",
    "coactivation",
]


@pytest.fixture(scope="module")
def pair_report(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("rep") / "report"
    return build_report(toy_store(moe=True), toy_store(moe=False), out, names=("MoE", "dense"))


def _imgs(page: str) -> list[bytes]:
    return [base64.b64decode(m) for m in re.findall(r"src='data:image/png;base64,([^']+)'", page)]


def test_every_figure_is_drawn_inlined_and_saved(pair_report):
    assert len(FIGURES) == len(KEYS)
    folder = pair_report.parent
    pngs = sorted(p.name for p in folder.glob("*.png"))
    assert [re.sub(r"^\d\d-|\.png$", "", n) for n in pngs] == KEYS
    page = pair_report.read_text(encoding="utf-8")
    imgs = _imgs(page)
    assert len(imgs) == len(KEYS)
    # the inlined images are the saved ones, byte for byte, and real PNGs
    assert sorted(imgs) == sorted((folder / n).read_bytes() for n in pngs)
    assert all(b.startswith(b"\x89PNG\r\n\x1a\n") for b in imgs)
    assert "Not drawn" not in page
    assert page.count("<figcaption>") == len(KEYS)


def test_page_states_where_the_numbers_come_from(pair_report):
    from mechmoe import __version__

    page = pair_report.read_text(encoding="utf-8")
    ds = toy_store(moe=True)
    assert f"mechmoe {__version__}" in page
    assert ds.attrs["model"] in page and "probe set" in page
    assert "steps " + ", ".join(str(int(s)) for s in ds["step"].values) in page
    assert "paper&#x27;s claim" in page or "paper's claim" in page


def test_headline_numbers_match_the_analysis(pair_report):
    from mechmoe.analysis import headline, summarize_run

    page = pair_report.read_text(encoding="utf-8")
    for moe in (True, False):
        h = headline(summarize_run(toy_store(moe=moe)))
        assert f"{100 * h['backbone_share']:.1f}%" in page
        assert f"{100 * h['hit_drop_top']:.1f}%" in page


def test_single_run_dense_skips_routing_figures_with_a_reason(tmp_path):
    index = build_report(toy_store(moe=False), None, tmp_path / "r")
    page = index.read_text(encoding="utf-8")
    assert len(_imgs(page)) == len(KEYS) - 2
    assert page.count("Not drawn") == 2
    assert "Does this run show" not in page


def test_store_without_neuron_scores(tmp_path):
    ds = toy_store(moe=True).drop_vars(["neuron_score", "neuron_n_chosen"])
    page = build_report(ds, None, tmp_path / "r").read_text(encoding="utf-8")
    assert page.count("Not drawn: no neuron_lpi measure") == 3


def test_report_from_a_real_store_on_disk(tmp_path):
    """A tiny real sweep (two tiny-model checkpoints) through open_store into the report."""
    from mechmoe.probes import load_probe
    from mechmoe.testing import save_tiny
    from mechmoe.trajectory import LocalCheckpoints, sweep

    ckpts = tmp_path / "ckpts"
    for step, seed in ((10, 0), (20, 1)):
        save_tiny("olmoe", ckpts / f"step{step}", seed=seed)
    probe = load_probe("adj_antonym").head(4)
    store = tmp_path / "run.zarr"
    sweep(LocalCheckpoints(ckpts), probe=probe, measures=["neuron_lpi", "expert_lpi", "hit",
          "robustness", "expert_load", "routing", "head_lpi"], out=store)  # fmt: skip
    index = build_report(store, None, tmp_path / "rep")
    page = index.read_text(encoding="utf-8")
    # random tiny weights may score HIT 0 before masking: then (only) robustness is skipped
    skipped = page.count("Not drawn")
    assert skipped == page.count("no relative drop exists") <= 1
    assert len(_imgs(page)) == len(KEYS) - skipped


def test_refuses_to_overwrite_what_is_not_a_report(tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(OutputError):
        build_report(toy_store(moe=True), None, mine)
    assert (mine / "notes.txt").read_text() == "keep me"
    first = build_report(toy_store(moe=True), None, tmp_path / "r")
    with pytest.raises(OutputError, match="overwrite"):
        build_report(toy_store(moe=True), None, tmp_path / "r")
    assert build_report(toy_store(moe=True), None, tmp_path / "r", overwrite=True) == first


def test_pattern_checks_by_hand():
    nan = float("nan")
    moe = dict(backbone_share=0.2, consolidation_step=nan, hit_drop_top=0.3, hit_drop_random=0.1)
    dense = dict(backbone_share=0.3, consolidation_step=50.0, hit_drop_top=0.2, hit_drop_random=0.1)
    assert [v for *_, v in pattern_checks(moe, dense)] == ["no", "no", "no"]
    moe2 = dict(moe, backbone_share=0.5, consolidation_step=20.0, hit_drop_top=0.1)
    assert [v for *_, v in pattern_checks(moe2, dense)] == ["yes", "yes", "yes"]
    blank = dict(backbone_share=nan, consolidation_step=nan, hit_drop_top=nan, hit_drop_random=nan)
    assert [v for *_, v in pattern_checks(blank, blank)] == ["not measured"] * 3


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(
    CHROMIUM is None, reason="needs Debian's chromium package (apt-get install chromium)"
)
def test_page_renders_in_headless_chromium_with_every_image_loaded(pair_report, tmp_path):
    from PIL import Image

    flags = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={tempfile.mkdtemp(dir=tmp_path)}",
        "--window-size=1280,2000",
    ]
    # 1. every <img> decoded: after load, a script writes each image's naturalWidth into the DOM
    probe_page = tmp_path / "probe.html"
    page = pair_report.read_text(encoding="utf-8")
    script = (
        "<script>window.addEventListener('load', () => { const w = Array.from("
        "document.images).map(i => i.complete ? i.naturalWidth : -1); "
        "document.body.setAttribute('data-widths', w.join(',')); });</script>"
    )
    probe_page.write_text(page.replace("</body>", script + "</body>"), encoding="utf-8")
    dom = subprocess.run(
        [*flags, "--virtual-time-budget=5000", "--dump-dom", probe_page.as_uri()],
        capture_output=True, text=True, timeout=120, env={**os.environ, "HOME": str(tmp_path)},
    )  # fmt: skip
    found = re.search(r'data-widths="([^"]*)"', dom.stdout)
    assert found, dom.stderr[-2000:]
    widths = [int(w) for w in found.group(1).split(",")]
    assert len(widths) == len(KEYS)
    assert all(w > 100 for w in widths), widths
    # 2. the screenshot of the page is not blank: it has figure-like content (many colours)
    shot = tmp_path / "shot.png"
    subprocess.run(
        [*flags, f"--screenshot={shot}", pair_report.as_uri()],
        capture_output=True, timeout=120, check=True, env={**os.environ, "HOME": str(tmp_path)},
    )  # fmt: skip
    img = Image.open(shot).convert("RGB")
    assert img.size == (1280, 2000)
    colors = img.getcolors(maxcolors=1 << 20)
    assert colors is not None and len(colors) > 50
    non_white = sum(c for c, rgb in colors if rgb != (255, 255, 255))
    assert non_white > 0.05 * img.size[0] * img.size[1]


def test_captions_name_experts_the_probe_never_chose():
    """A blank co-activation row or a least-used share of 0 is explained in the caption."""
    from mechmoe.analysis import summarize_run
    from mechmoe.report.figures import Run, coactivation_figure, routing_figure

    ds = toy_store(moe=True)
    choice = ds["routing_choice"].values.copy()
    choice[-1, :, 0, :] = [0, 1]  # at the final step, layer 0 routes every token to 0 and 1
    load = ds["expert_load"].values.copy()
    load[-1, 0] = [0.5, 0.5, 0.0, 0.0]
    ds = ds.assign(
        routing_choice=(ds["routing_choice"].dims, choice),
        expert_load=(ds["expert_load"].dims, load),
    )
    run = Run("MoE", ds, summarize_run(ds))
    co = coactivation_figure([run])
    assert co.figure is not None
    assert "Experts no probe token chose: layer 0: 2, 3." in co.caption
    routing = routing_figure([run])
    assert (
        "Experts with no slot at the final checkpoint: 2 in layer 0, 0 in layer 1."
        in routing.caption
    )


def _headline_cells(page: str) -> list[tuple[str, ...]]:
    import html

    table = re.search(r"<table class='headline'>(.*?)</table>", page, re.S)
    assert table, "the page has a headline table"
    rows = re.findall(r"<tr>(.*?)</tr>", table.group(1), re.S)
    return [tuple(html.unescape(c) for c in re.findall(r"<t[dh]>(.*?)</t[dh]>", r)) for r in rows]


def test_headline_table_is_the_shared_rows_at_every_count(tmp_path):
    """Two masked-head counts, a note and a row measured elsewhere: the page shows exactly
    what headline_rows gives (what `mechmoe demo` prints) for the same stores."""
    from mechmoe.analysis import headline, summarize_run
    from mechmoe.report import headline_rows

    stores = [toy_store(moe=True), toy_store(moe=False)]
    notes, extra = {1: "the share"}, [("a row from elsewhere", "0.900", "0.600")]
    index = build_report(
        *stores, tmp_path / "r", names=("MoE", "dense"), n_masked=(1, 5), count_notes=notes,
        extra_rows=extra,
    )  # fmt: skip
    cells = _headline_cells(index.read_text(encoding="utf-8"))
    assert cells[0] == ("measure", "MoE", "dense")
    by_count = [[headline(summarize_run(ds, n_masked=n)) for ds in stores] for n in (1, 5)]
    rows = headline_rows(stores, by_count, notes=notes, extra=extra)
    assert cells[1:] == rows
    labels = [r[0] for r in rows]
    heads = 2 * 4  # the toy stores' layers × heads
    assert labels == [
        "top-1% backbone share",
        "consolidation step (ρ vs final ≥ 0.9)",
        f"HIT@10 drop, top-1 of {heads} heads masked (the share)",
        f"HIT@10 drop, 1 random of {heads} heads (control, mean of 3 draws)",
        f"HIT@10 drop, top-5 of {heads} heads masked ({100 * 5 / heads:.0f}%)",
        f"HIT@10 drop, 5 random of {heads} heads (control, mean of 3 draws)",
        "a row from elsewhere",
    ]
    for i, n in ((2, 1), (4, 5)):
        for j, h in enumerate(by_count[(i - 2) // 2], start=1):
            assert rows[i][j] == f"{100 * h['hit_drop_top']:.1f}%", (n, j)
            assert rows[i + 1][j] == f"{100 * h['hit_drop_random']:.1f}%", (n, j)


def test_headline_counts_take_the_singular_for_one():
    from mechmoe.analysis import headline, summarize_run
    from mechmoe.report import headline_rows

    # no head scores (no head count known) and a single random draw
    ds = toy_store(moe=True).drop_dims("head").isel(seed=[0])
    rows = headline_rows([ds], [[headline(summarize_run(ds, n_masked=1))]])
    assert rows[2][0] == "HIT@10 drop, top-1 head masked"
    assert rows[3][0] == "HIT@10 drop, 1 random head (control, mean of 1 draw)"
    ds10 = toy_store(moe=True).drop_dims("head")
    rows = headline_rows([ds10], [[headline(summarize_run(ds10, n_masked=10))]])
    assert rows[2][0] == "HIT@10 drop, top-10 heads masked"
    assert rows[3][0] == "HIT@10 drop, 10 random heads (control, mean of 3 draws)"
    assert not any(re.search(r"\b1 [a-z ]*heads\b", r[0]) for r in rows)


def test_headline_rows_of_runs_with_different_head_counts():
    from mechmoe.analysis import headline, summarize_run
    from mechmoe.report import headline_rows

    a, b = toy_store(moe=True), toy_store(moe=False)
    b = b.drop_dims("head").assign(head_score=b["head_score"].isel(head=[0, 1]))  # 2 × 2 heads
    rows = headline_rows([a, b], [[headline(summarize_run(ds, n_masked=1)) for ds in (a, b)]])
    assert rows[2][0] == "HIT@10 drop, top-1 of 8 / 4 heads masked"


def test_bad_headline_options_are_one_clear_error(tmp_path):
    from mechmoe.core.errors import InvalidInputError

    for bad in ((), (1, 1), (0,), (2, -1), 0):
        with pytest.raises(InvalidInputError, match="n_masked"):
            build_report(toy_store(moe=True), None, tmp_path / "r", n_masked=bad)
    with pytest.raises(InvalidInputError, match="a measure and 1 value"):
        build_report(toy_store(moe=True), None, tmp_path / "r", extra_rows=[("x", "1", "2")])
    assert not (tmp_path / "r").exists()


def test_consolidation_row_tells_never_from_not_measured():
    from mechmoe.analysis import headline, summarize_run
    from mechmoe.report import headline_rows

    measured = toy_store(moe=True)
    unmeasured = measured.drop_vars(["neuron_score", "neuron_n_chosen"])
    one_step = measured.isel(step=[0])
    got = {}
    for name, ds in (("measured", measured), ("none", unmeasured), ("one", one_step)):
        h = headline(summarize_run(ds, n_masked=1, tau=1.0))  # ρ = 1 only at the final checkpoint
        got[name] = headline_rows([ds], [[h]])[1][1]
    assert got == {"measured": "never", "none": "n/a", "one": "n/a"}
