"""The HTML view of an extraction: the document with spans highlighted by label (and a legend), and the
facts as a table, each fact linked to its evidence in the text. One self-contained page, no scripts."""

from __future__ import annotations

import html

COLOURS = {"ENTITY": "#ffd8a8", "METRIC": "#a5d8ff", "VALUE": "#b2f2bb", "PERIOD": "#eebefa"}

_CSS = """
body { font-family: "Noto Sans CJK SC", "PingFang SC", "Microsoft YaHei", sans-serif; margin: 2em; max-width: 70em; }
.doc { white-space: pre-wrap; line-height: 1.9; border: 1px solid #ddd; padding: 1em; }
mark { padding: 0.1em 0.15em; border-radius: 0.25em; }
mark sub { font-size: 0.6em; color: #555; margin-left: 0.15em; }
.legend span { display: inline-block; padding: 0.2em 0.6em; margin-right: 0.6em; border-radius: 0.25em; }
table { border-collapse: collapse; margin-top: 1em; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.5em; text-align: left; }
th { background: #f4f4f4; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
mark:target { outline: 3px solid #e8590c; }
"""


def _fmt_value(v) -> str:
    if v is None:
        return ""
    if float(v).is_integer():
        return f"{int(v):,}"
    return f"{v:,.6g}"


def render_html(doc, title: str | None = None) -> str:
    """`doc`: an ExtractedDoc (text, spans at original offsets, facts with value_span)."""
    title = title or (doc.doc or "extraction")
    text = doc.text
    fact_of = {tuple(f.value_span): i for i, f in enumerate(doc.facts)}
    parts, pos = [], 0
    for s in sorted(doc.spans, key=lambda s: s.start):
        if s.start < pos:
            continue
        parts.append(html.escape(text[pos:s.start]))
        idx = fact_of.get((s.start, s.end))
        anchor = f' id="v{idx}"' if idx is not None else ""
        parts.append(f'<mark class="{html.escape(s.label)}"{anchor} style="background:{COLOURS.get(s.label, "#eee")}" '
                     f'title="{s.label} {s.score:.2f}">{html.escape(text[s.start:s.end])}<sub>{s.label}</sub></mark>')
        pos = s.end
    parts.append(html.escape(text[pos:]))
    legend = "".join(f'<span style="background:{c}">{lab}</span>' for lab, c in COLOURS.items())
    rows = []
    for i, f in enumerate(doc.facts):
        d = f.to_dict()
        rows.append("<tr>" + "".join([
            f'<td><a href="#v{i}">{i + 1}</a></td>',
            f"<td>{html.escape(str(d.get('entity') or ''))}</td>",
            f"<td>{html.escape(str(d.get('metric') or ''))}</td>",
            f"<td>{html.escape(str(d.get('period') or ''))}</td>",
            f"<td>{html.escape(str(d.get('measure') or ''))}</td>",
            f"<td>{html.escape(str(d.get('qualifier') or ''))}</td>",
            f'<td class="num">{_fmt_value(d.get("value"))}</td>',
            f"<td>{html.escape(str(d.get('unit') or ''))}</td>",
            f"<td>{html.escape(str(d.get('direction') or ''))}</td>",
            f'<td><a href="#v{i}">{html.escape(str(d.get("value_text") or ""))}</a></td>',
        ]) + "</tr>")
    header = "".join(f"<th>{h}</th>" for h in ("#", "entity", "metric", "period", "measure", "qualifier", "value",
                                               "unit", "direction", "evidence"))
    return f"""<!DOCTYPE html>
<html lang="zh"><head><meta charset="utf-8"><title>{html.escape(title)}</title><style>{_CSS}</style></head>
<body>
<h1>{html.escape(title)}</h1>
<p class="legend">{legend}</p>
<div class="doc">{"".join(parts)}</div>
<h2>Facts ({len(doc.facts)})</h2>
<table id="facts"><thead><tr>{header}</tr></thead><tbody>
{chr(10).join(rows)}
</tbody></table>
</body></html>
"""
