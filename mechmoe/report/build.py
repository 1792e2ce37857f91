"""One self-contained HTML page (PNG figures inlined, also saved beside it) from trajectory stores."""

from __future__ import annotations

import base64
import datetime as _dt
import html
import io
import math
import numbers
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mechmoe.core.errors import InvalidInputError
from mechmoe.core.writer import marker_line, prepare_output
from mechmoe.report.figures import FIGURES, FigureSpec, Run
from mechmoe.report.headline import headline_rows

if TYPE_CHECKING:
    import xarray as xr

REPORT_KIND = "report"
INDEX = "index.html"


def _open(store: str | os.PathLike[str] | xr.Dataset) -> xr.Dataset:
    import xarray as xr

    if isinstance(store, xr.Dataset):
        return store
    from mechmoe.trajectory import open_store

    return open_store(store)


def _label(ds: xr.Dataset, fallback: str) -> str:
    return str(ds.attrs.get("model") or fallback)


def pattern_checks(moe: dict[str, Any], dense: dict[str, Any]) -> list[tuple[str, str, str]]:
    """Does the miniature show the paper's pattern? One ``(claim, measured, verdict)`` per figure.

    ``moe`` and ``dense`` are :func:`mechmoe.analysis.headline` dicts. A verdict is "yes",
    "no" or "not measured"; a consolidation step of NaN means "never consolidated".

    Examples
    --------
    >>> a = dict(backbone_share=0.5, consolidation_step=100.0, hit_drop_top=0.05, hit_drop_random=0.01)
    >>> b = dict(backbone_share=0.1, consolidation_step=float("nan"), hit_drop_top=0.6, hit_drop_random=0.1)
    >>> [v for _, _, v in pattern_checks(a, b)]
    ['yes', 'yes', 'yes']
    """

    def nan(x: Any) -> bool:
        return x is None or (isinstance(x, float) and math.isnan(x))

    def pct(x: Any) -> str:
        return "n/a" if nan(x) else f"{100 * x:.1f}%"

    def step(x: Any) -> str:
        return "never" if nan(x) else f"{x:g}"

    out = []
    a, b = moe["backbone_share"], dense["backbone_share"]
    out.append(
        (
            "MoE concentrates positive updates in a small backbone; dense does not",
            f"top share MoE {pct(a)} vs dense {pct(b)}",
            "not measured" if nan(a) or nan(b) else ("yes" if a > b else "no"),
        )
    )
    a, b = moe["consolidation_step"], dense["consolidation_step"]
    if nan(a) and nan(b):
        verdict = (
            "no" if "backbone_share" in moe and not nan(moe["backbone_share"]) else "not measured"
        )
    elif nan(a):
        verdict = "no"
    else:
        verdict = "yes" if nan(b) or a < b else "no"
    out.append(
        (
            "MoE attribution consolidates earlier than dense",
            f"consolidation step MoE {step(a)} vs dense {step(b)}",
            verdict,
        )
    )
    a, b = moe["hit_drop_top"], dense["hit_drop_top"]
    out.append(
        (
            "masking the top heads costs MoE less than dense",
            f"drop MoE {pct(a)} (random {pct(moe.get('hit_drop_random'))}) vs dense {pct(b)} "
            f"(random {pct(dense.get('hit_drop_random'))})",
            "not measured" if nan(a) or nan(b) else ("yes" if a < b else "no"),
        )
    )
    return out


def _png(fig: Any) -> bytes:
    from mechmoe.core.writer import marker

    buf = io.BytesIO()
    meta = {k: str(v) for k, v in marker("report-figure").items()}
    fig.savefig(buf, format="png", dpi=110, metadata=meta)
    return buf.getvalue()


def _headline_table(runs: Sequence[Run], rows: Sequence[Sequence[str]]) -> str:
    head = "".join(f"<th>{html.escape(r.name)}</th>" for r in runs)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(v)}</td>" for v in row) + "</tr>" for row in rows
    )
    return f"<table class='headline'><tr><th>measure</th>{head}</tr>{body}</table>"


def _counts(n_masked: int | Sequence[int]) -> list[int]:
    """The masked-head counts of the headline, first the one the figures read."""
    if isinstance(n_masked, numbers.Integral):
        counts: list[Any] = [n_masked]
    elif isinstance(n_masked, Sequence) and not isinstance(n_masked, str):
        counts = list(n_masked)
    else:
        counts = []
    if (
        not counts
        or not all(isinstance(n, numbers.Integral) and not isinstance(n, bool) for n in counts)
        or min(counts) < 1
        or len(set(counts)) != len(counts)
    ):
        raise InvalidInputError(
            f"n_masked={n_masked!r}: give a head count, or distinct counts, each at least 1"
        )
    return [int(n) for n in counts]


def _provenance(run: Run) -> str:
    ds = run.ds
    steps = [int(s) for s in ds["step"].values]
    revs = [str(r) for r in ds["revision"].values] if "revision" in ds.coords else []
    tokens = ds["tokens"].values if "tokens" in ds.coords else []
    items = [
        ("model", ds.attrs.get("model", "")),
        ("architecture", "MoE" if run.is_moe else "dense"),
        ("experts / top-k", f"{ds.attrs.get('n_experts', '?')} / {ds.attrs.get('top_k', '?')}"),
        ("backend", ds.attrs.get("backend", "not recorded")),
        (
            "checkpoints",
            f"{len(steps)}: {'step' if len(steps) == 1 else 'steps'} {', '.join(map(str, steps))}",
        ),
        ("first / last revision", f"{revs[0]} … {revs[-1]}" if revs else ""),
        (
            "tokens at last checkpoint",
            f"{float(tokens[-1]):,.0f}"
            if len(tokens) and not math.isnan(float(tokens[-1]))
            else "unknown",
        ),
        ("probe set", f"{ds.attrs.get('probe', '')} (hash {ds.attrs.get('probe_hash', '?')})"),
        ("measures", ", ".join(sorted(v for v in ds.data_vars))),
        ("not available", run.summary.attrs.get("absent", "") or "nothing"),
    ]
    rows = "".join(
        f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>" for k, v in items
    )
    return f"<h3>{html.escape(run.name)}</h3><table class='prov'>{rows}</table>"


def build_report(
    run_store: str | os.PathLike[str] | xr.Dataset,
    compare_store: str | os.PathLike[str] | xr.Dataset | None = None,
    out_dir: str | os.PathLike[str] = "report",
    *,
    names: Sequence[str] | None = None,
    title: str | None = None,
    notes: Sequence[str] = (),
    q: float = 0.01,
    tau: float = 0.9,
    n_masked: int | Sequence[int] = 10,
    count_notes: Mapping[int, str] | None = None,
    extra_rows: Sequence[Sequence[str]] = (),
    overwrite: bool = False,
) -> Path:
    """Write the report of one run (or two side by side) into ``out_dir``.

    Parameters
    ----------
    run_store, compare_store
        Trajectory stores (``.zarr`` paths from ``mechmoe trajectory``, or their opened
        Datasets). The second, if given, is drawn beside the first (e.g. MoE, then dense).
    out_dir
        The report folder: ``index.html`` (self-contained: figures inlined) and one PNG
        per figure. An earlier report there is replaced only with ``overwrite=True``.
    names
        Labels of the runs (default: the stores' model names).
    title, notes
        Page title, and paragraphs shown under the headline table.
    q, tau, n_masked
        Options of :func:`mechmoe.analysis.summarize_run` (backbone fraction,
        consolidation threshold, masked-head count of the headline). ``n_masked`` may
        list several counts: the headline table then has a pair of masking rows for
        each, and the first is the one the figures and the verdicts read.
    count_notes, extra_rows
        The headline table's ``notes`` and ``extra`` rows
        (:func:`~mechmoe.report.headline.headline_rows`, which builds the table; ``mechmoe
        demo`` prints the same rows).

    Returns
    -------
    Path
        The ``index.html`` file.
    """
    from mechmoe._version import __version__
    from mechmoe.analysis import headline, summarize_run

    counts = _counts(n_masked)
    out = prepare_output(out_dir, kind=REPORT_KIND, overwrite=overwrite, folder=True)
    stores = [_open(run_store)] + ([_open(compare_store)] if compare_store is not None else [])
    labels = (
        list(names)
        if names is not None
        else [_label(ds, f"run {i + 1}") for i, ds in enumerate(stores)]
    )
    if len(labels) != len(stores) or len(set(labels)) != len(labels):
        if names is not None:
            raise InvalidInputError(f"names={list(names)!r}: give {len(stores)} different names")
        labels = [f"{lab} ({i + 1})" for i, lab in enumerate(labels)]
    runs = [
        Run(lab, ds, summarize_run(ds, q=q, tau=tau, n_masked=counts[0]))
        for lab, ds in zip(labels, stores, strict=True)
    ]
    heads = [headline(r.summary) for r in runs]
    by_count = [heads] + [
        [headline(summarize_run(ds, q=q, tau=tau, n_masked=n)) for ds in stores] for n in counts[1:]
    ]
    table = headline_rows(stores, by_count, notes=count_notes, extra=extra_rows)
    specs: list[FigureSpec] = [make(runs) for make in FIGURES]

    sections = []
    pngs: dict[str, bytes] = {}
    for i, spec in enumerate(specs, start=1):
        if spec.figure is None:
            sections.append(
                f"<section><h2>{i}. {html.escape(spec.title)}</h2>"
                f"<p class='skip'>Not drawn: {html.escape(spec.skipped)}.</p></section>"
            )
            continue
        data = _png(spec.figure)
        pngs[f"{i:02d}-{spec.key}.png"] = data
        b64 = base64.b64encode(data).decode()
        sections.append(
            f"<section><h2>{i}. {html.escape(spec.title)}</h2>"
            f"<figure><img alt='{html.escape(spec.title)}' src='data:image/png;base64,{b64}'>"
            f"<figcaption>{html.escape(spec.caption)}</figcaption></figure></section>"
        )

    verdict_html = ""
    if len(runs) == 2:
        moe_i = 0 if runs[0].is_moe or not runs[1].is_moe else 1
        checks = pattern_checks(heads[moe_i], heads[1 - moe_i])
        rows = "".join(
            f"<tr><td>{html.escape(c)}</td><td>{html.escape(m)}</td>"
            f"<td class='v-{v.replace(' ', '-')}'>{html.escape(v)}</td></tr>"
            for c, m, v in checks
        )
        shown = sum(v == "yes" for _, _, v in checks)
        verdict_html = (
            "<h2>Does this run show the paper's pattern?</h2>"
            f"<p>{shown} of {len(checks)} of the paper's claims {'holds' if shown == 1 else 'hold'} "
            "in these measurements. "
            "The figures below are measured, not assumed; where a claim does not hold, that is "
            "what these models did.</p>"
            f"<table><tr><th>paper's claim</th><th>measured here</th><th>holds?</th></tr>{rows}</table>"
        )

    note_html = "".join(f"<p>{html.escape(n)}</p>" for n in notes)
    page_title = title or "mechmoe trajectory report: " + " vs ".join(r.name for r in runs)
    when = _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<!-- {marker_line(REPORT_KIND)} -->
<title>{html.escape(page_title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 1150px; margin: 2em auto; padding: 0 1em; color: #222; }}
table {{ border-collapse: collapse; margin: 0.8em 0; }}
td, th {{ border: 1px solid #ccc; padding: 4px 8px; text-align: left; vertical-align: top; }}
table.prov th {{ background: #f5f5f5; width: 14em; }}
figure {{ margin: 0.5em 0 2em 0; }}
img {{ max-width: 100%; }}
figcaption {{ font-size: 0.92em; color: #444; max-width: 60em; }}
.skip {{ color: #888; font-style: italic; }}
.v-yes {{ color: #1e8449; font-weight: bold; }} .v-no {{ color: #c0392b; font-weight: bold; }}
</style></head><body>
<h1>{html.escape(page_title)}</h1>
<p>mechmoe {html.escape(__version__)} · generated {when}</p>
<h2>Headline</h2>
{_headline_table(runs, table)}
{note_html}
{verdict_html}
<h2>Where the numbers come from</h2>
{"".join(_provenance(r) for r in runs)}
{"".join(sections)}
</body></html>
"""
    with out.writing() as tmp:
        tmp.mkdir(parents=True, exist_ok=True)
        (tmp / INDEX).write_text(page, encoding="utf-8")
        for name, data in pngs.items():
            (tmp / name).write_bytes(data)
    return out.path / INDEX


__all__ = ["INDEX", "REPORT_KIND", "build_report", "pattern_checks"]
