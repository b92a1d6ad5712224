"""report.html: one self-contained page (inline CSS and SVG, no external URL) a person can trust.

Every number on it comes from the same counts and tables that predict writes, and the page shows
how input sequences reconcile to chunks, ORFs and table rows; counts that do not reconcile are an
error (exit 5), never a page that says so.
"""

from __future__ import annotations

import html
from pathlib import Path

from virnucpro.calls import RESULTS, SEQUENCE_CALLS
from virnucpro.errors import InconsistentInputsError, open_output
from virnucpro.seqio import unicode_text

STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:60rem;
color:#1d2733;line-height:1.45;padding:0 1rem}
h1{font-size:1.6rem;margin-bottom:.2rem}h2{font-size:1.15rem;margin-top:2rem;border-bottom:1px solid #dde3ea;
padding-bottom:.3rem}.sub{color:#5b6b7c;margin-top:0}
.banner{background:#fff3cd;border:1px solid #e0b400;padding:.8rem 1rem;border-radius:6px;font-weight:600}
.cards{display:flex;gap:.8rem;flex-wrap:wrap}.card{flex:1 1 9rem;border:1px solid #dde3ea;border-radius:8px;
padding:.7rem .9rem}.card b{display:block;font-size:1.5rem}.card span{color:#5b6b7c;font-size:.85rem}
.virus b{color:#b4232a}.others b{color:#1f6f43}
table{border-collapse:collapse;width:100%;font-size:.9rem}th,td{text-align:left;padding:.3rem .5rem;
border-bottom:1px solid #edf0f4}th{background:#f5f7fa}td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}
.ok{color:#1f6f43}footer{margin-top:2.5rem;color:#5b6b7c;font-size:.8rem}
td,h1{overflow-wrap:anywhere}
"""


def _e(value) -> str:
    """`value` as HTML text; an input name that is not UTF-8 is shown escaped (it cannot be written raw)."""
    return html.escape(unicode_text(str(value)))


def _count(number: int, noun: str) -> str:
    """'1 ORF', '2,000 ORFs': a count with its noun in the right number."""
    return f"{number:,} {noun}" + ("" if number == 1 else "s")


def _threshold_text(threshold: float) -> str:
    """The threshold exactly as given (shortest round-trip text): `:g` showed 0.6666667 as 0.666667."""
    return repr(float(threshold))


def _histogram_svg(counts: list[int]) -> str:
    width, height, pad = 640, 220, 32
    top = max(counts, default=0)
    scale = top or 1  # no ORF at all: empty bars, and the label says 0
    bar = (width - 2 * pad) / len(counts)
    parts = [f'<svg viewBox="0 0 {width} {height}" width="100%" role="img" '
             f'aria-label="Histogram of ORF virus scores">']
    for i, count in enumerate(counts):
        h = (height - 2 * pad) * count / scale
        x, y = pad + i * bar, height - pad - h
        colour = "#b4232a" if (i + 0.5) / len(counts) >= 0.5 else "#1f6f43"
        parts.append(f'<rect x="{x:.1f}" y="{y:.1f}" width="{bar - 2:.1f}" height="{h:.1f}" fill="{colour}">'
                     f'<title>{i / len(counts):.2f}-{(i + 1) / len(counts):.2f}: {_count(count, "ORF")}</title></rect>')
    axis_y = height - pad
    parts.append(f'<line x1="{pad}" y1="{axis_y}" x2="{width - pad}" y2="{axis_y}" stroke="#5b6b7c"/>')
    for tick in (0, 0.25, 0.5, 0.75, 1.0):
        x = pad + tick * (width - 2 * pad)
        parts.append(f'<text x="{x:.1f}" y="{axis_y + 16}" font-size="11" text-anchor="middle" '
                     f'fill="#5b6b7c">{tick:g}</text>')
    parts.append(f'<text x="{pad}" y="{pad - 10}" font-size="11" fill="#5b6b7c">max bin: {_count(top, "ORF")}</text>')
    parts.append("</svg>")
    return "".join(parts)


def check_reconciles(counts: dict, rows: int, n_chunks_scored: int, calls: dict) -> None:
    """The prediction accounts for every chunk, ORF and sequence the prepared sample counts (exit 5)."""
    checks = (("chunks", counts["chunks"], n_chunks_scored + counts["chunks_without_orf"],
               f"{n_chunks_scored:,} chunks with scored ORFs + {counts['chunks_without_orf']:,} without ORF"),
              ("ORFs", counts["orfs"], rows, f"{_count(rows, 'row')} in {RESULTS}"),
              ("sequences", counts["sequences"], sum(calls.values()), f"{sum(calls.values()):,} sequences called"))
    for label, expected, found, detail in checks:
        if found != expected:
            raise InconsistentInputsError(f"the {label} do not reconcile: the prepared sample counts {expected:,}, "
                                          f"the prediction has {detail}",
                                          "give --embeddings made from this --prepared folder, unchanged "
                                          "since; if they were (or this was `virnucpro run`, which makes both), "
                                          "virnucpro miscounted: please report it")


def _reconciliation(counts: dict, rows: int, n_chunks_scored: int, calls: dict) -> str:
    """The table of counts from input records to calls; counts that do not reconcile are refused here
    too (exit 5), so the page can never say "reconciles" of them, whoever calls it."""
    check_reconciles(counts, rows, n_chunks_scored, calls)
    agrees = '<span class="ok">reconciles</span>'
    lines = [
        ("input sequences", counts["sequences"],
         f"{counts['sequences'] - counts['empty_sequences']:,} with bases + {counts['empty_sequences']:,} empty", ""),
        ("chunks", counts["chunks"],
         f"{n_chunks_scored:,} with ORFs + {counts['chunks_without_orf']:,} without", agrees),
        ("ORFs (stop-free frames)", counts["orfs"], f"{_count(rows, 'row')} in {RESULTS}", agrees),
        ("sequences called", sum(calls.values()),
         " + ".join(f"{calls[k]:,} {k}" for k in SEQUENCE_CALLS), agrees),
    ]
    body = "".join(f"<tr><td>{_e(label)}</td><td class='n'>{value:,}</td><td>{_e(detail)}</td><td>{status}</td></tr>"
                   for label, value, detail, status in lines)
    return "<table><tr><th>stage</th><th class='n'>count</th><th>breakdown</th><th>check</th></tr>" + body + "</table>"


def _score_text(score: float) -> str:
    """A score to 4 decimals, or in the shortest digits that tell it apart (`repr`) where 4 would round
    it onto or across a bound its reader compares it with: 0.5 (a chunk's call) and 1 (0.49996 showed
    as 0.5000 beside no virus chunk, 0.99996 as 1.0000)."""
    text = f"{score:.4f}"
    rounded = float(text)
    if (rounded >= 0.5) != (score >= 0.5) or (rounded == 0.5) != (score == 0.5) or (rounded == 1) != (score == 1):
        return str(score)  # float32 or float64: the shortest digits of that type
    return text


def _top_table(top: list) -> str:
    if not top:
        return "<p>No sequence had an ORF to score.</p>"
    rows = "".join(
        f"<tr><td>{_e(name)}</td><td class='n'>{length:,}</td><td class='n'>{n_chunks:,}</td>"
        f"<td class='n'>{virus:,} / {scored:,}</td><td class='n'>{_score_text(best)}</td><td>{_e(call)}</td></tr>"
        for _fraction, best, name, length, n_chunks, virus, scored, call in top)
    # the fraction as its two counts: a rounded decimal (0.50 for 50/101) could contradict the call
    return ("<table><tr><th>sequence</th><th class='n'>length (bp)</th><th class='n'>chunks</th>"
            "<th class='n'>virus chunks / chunks with ORFs</th><th class='n'>max virus score</th><th>call</th></tr>"
            + rows + "</table>")


def _inputs_table(inputs: list) -> str:
    """The input files with their records and the start of their checksums."""
    rows = "".join(f"<tr><td>{_e(i['path'])}</td><td class='n'>{i['records']:,}</td>"
                   f"<td><code>{_e(i['sha256'][:16])}…</code></td></tr>" for i in inputs)
    return f"<table><tr><th>file</th><th class='n'>records</th><th>sha256</th></tr>{rows}</table>"


def write_report(path: Path, manifest: dict, rows: int, n_chunks_scored: int, summary: dict,
                 histogram: list[int], run_info: dict, name: str = "") -> None:
    """report.html: one self-contained page (counts reconciled, calls, score histogram, top sequences),
    titled with `name`, the output folder's (the sample's in the pipeline: reports told apart)."""
    counts, calls = manifest["counts"], summary["calls"]
    seconds = ", ".join(f"{stage} {value:,.1f} s" for stage, value in run_info["seconds"].items())
    title = f"virnucpro report: {name}" if name else "virnucpro report"
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{_e(title)}</title>
<style>{STYLE}</style></head><body>
<h1>{_e(title)}</h1>
<p class="sub">virnucpro {_e(run_info['virnucpro_version'])} · chunk size {manifest['chunk_size']} ·
threshold {_threshold_text(run_info['threshold'])} · precision {_e(', '.join(run_info['precision']))} ·
device {_e(', '.join(run_info['device']))}</p>
{_tiny_banner(run_info)}
<div class="cards">
<div class="card"><b>{counts['sequences']:,}</b><span>input sequences</span></div>
<div class="card virus"><b>{calls['virus']:,}</b><span>called virus</span></div>
<div class="card others"><b>{calls['others']:,}</b><span>called others</span></div>
<div class="card"><b>{calls['no_orf']:,}</b><span>without any ORF</span></div>
<div class="card"><b>{calls['empty']:,}</b><span>empty records</span></div>
</div>
<h2>From input to answers</h2>
{_reconciliation(counts, rows, n_chunks_scored, calls)}
<p>A sequence is called virus when at least {_threshold_text(run_info['threshold'])} of its chunks that have ORFs are
virus chunks; a chunk is virus when its best ORF's virus score is at least its best others score (the
original's rule).</p>
<h2>Virus score of every ORF</h2>
{_histogram_svg(histogram)}
<h2>Top sequences</h2>
{_top_table(summary['top'])}
<h2>Inputs</h2>
{_inputs_table(manifest["inputs"])}
<footer>Tables: prediction_results.txt and prediction_results_highestscore.csv (original format),
chunks.tsv, sequences.tsv; provenance in run_info.json. Time spent by this process: {_e(seconds)}.</footer>
</body></html>
"""
    with open_output(path, "w", encoding="utf-8") as out:
        out.write(page)


def _tiny_banner(run_info: dict) -> str:
    """A warning across the page when the scores come from tiny random models."""
    return ('<p class="banner">Made with TINY RANDOM MODELS (tests only): these scores mean nothing.</p>'
            if run_info["tiny_models"] else "")
