"""One self-contained HTML page: images as base64 data URIs, inline CSS and JS, no external URL of any kind."""

from __future__ import annotations

import base64
import html
import math
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import numpy as np
import pandas as pd

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;margin:0 auto;max-width:1500px;
 padding:1.2em 2em;color:#222;line-height:1.4}
h1{margin-bottom:.1em} h2{border-bottom:2px solid #ddd;padding-bottom:.2em;margin-top:1.8em}
.sub{color:#666;margin-top:0}
table{border-collapse:collapse;margin:.6em 0 1em;font-size:.88em}
th,td{border:1px solid #ddd;padding:.28em .6em;text-align:right;vertical-align:top}
th{background:#f3f3f3;position:sticky;top:0}
td:first-child,th:first-child{text-align:left}
td.text,th.text{text-align:left}
table.sortable th{cursor:pointer;user-select:none;white-space:nowrap}
table.sortable th:after{content:" \\2195";color:#aaa;font-size:.85em}
table.sortable th.asc:after{content:" \\2191";color:#222} table.sortable th.desc:after{content:" \\2193";color:#222}
tr.failed td{background:#fdecea} tr.diverged td{background:#fff4e0}
td.fastcar,th.fastcar{background:#fff0f0;font-weight:600}
figure{margin:1.2em 0} figure img{max-width:100%;border:1px solid #eee}
figcaption{color:#555;font-size:.9em;max-width:1100px}
.msgs{max-height:24em;overflow:auto;background:#fafafa;border:1px solid #eee;padding:.4em 1.6em;font-size:.9em}
pre{background:#f7f7f7;border:1px solid #eee;padding:.8em;overflow:auto;font-size:.82em;max-height:30em}
.kv td:first-child{font-weight:600;color:#444}
.toc a{margin-right:1em}
"""

JS = """
(function(){
  function key(td){
    var v = td.getAttribute('data-v');
    if (v === null) v = td.textContent.trim();
    if (v === '' || v === '-' ) return null;
    var n = parseFloat(v);
    return (isNaN(n) || !/^[-+]?[0-9.]+(e[-+]?[0-9]+)?$/i.test(v)) ? v.toLowerCase() : n;
  }
  document.querySelectorAll('table.sortable').forEach(function(table){
    var heads = table.tHead.rows[0].cells;
    Array.prototype.forEach.call(heads, function(th, col){
      th.addEventListener('click', function(){
        var asc = !th.classList.contains('asc');
        Array.prototype.forEach.call(heads, function(h){ h.classList.remove('asc','desc'); });
        th.classList.add(asc ? 'asc' : 'desc');
        var body = table.tBodies[0];
        var rows = Array.prototype.slice.call(body.rows);
        rows.sort(function(a, b){
          var x = key(a.cells[col]), y = key(b.cells[col]);
          if (x === null && y === null) return 0;
          if (x === null) return 1;           // blanks always last
          if (y === null) return -1;
          if (typeof x !== typeof y) { x = String(x); y = String(y); }
          var c = x < y ? -1 : (x > y ? 1 : 0);
          return asc ? c : -c;
        });
        rows.forEach(function(r){ body.appendChild(r); });
      });
    });
  });
})();
"""


@dataclass
class FigureBlock:
    title: str
    png: bytes
    caption: str
    anchor: str


def esc(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _is_blank(v: Any) -> bool:
    if v is None:
        return True
    try:
        return bool(pd.isna(v))
    except (TypeError, ValueError):
        return False


def table_html(df: pd.DataFrame, *, sortable: bool = False, index: bool = False, fmt: dict[str, str] | None = None,
               row_class: str | None = None, text_cols: tuple[str, ...] = (), highlight: str | None = None) -> str:
    """A DataFrame as an HTML table; numbers carry their raw value in ``data-v`` so sorting is numeric."""
    fmt = fmt or {}
    cols = ([df.index.name or ""] if index else []) + [str(c) for c in df.columns]
    cls = ' class="sortable"' if sortable else ""
    out = [f"<table{cls}><thead><tr>"]
    for c in cols:
        classes = [k for k, on in (("text", c in text_cols), ("fastcar", c == highlight)) if on]
        out.append(f'<th class="{" ".join(classes)}">{esc(c)}</th>' if classes else f"<th>{esc(c)}</th>")
    out.append("</tr></thead><tbody>")
    for idx, row in df.iterrows():
        rc = f' class="{esc(row[row_class])}"' if row_class and row_class in row else ""
        out.append(f"<tr{rc}>")
        values = ([("", idx)] if index else []) + list(zip(df.columns, row))
        for col, v in values:
            col = str(col)
            classes = [k for k, on in (("text", col in text_cols), ("fastcar", col == highlight)) if on]
            attr = f' class="{" ".join(classes)}"' if classes else ""
            if _is_blank(v):
                out.append(f'<td{attr} data-v=""></td>')
            elif isinstance(v, (float, np.floating)) and not isinstance(v, bool):
                f = fmt.get(col, "{:.4g}")
                shown = f.format(v) if math.isfinite(v) else str(v)
                out.append(f'<td{attr} data-v="{float(v)!r}">{esc(shown)}</td>')
            elif isinstance(v, (int, np.integer)) and not isinstance(v, bool):
                out.append(f'<td{attr} data-v="{int(v)}">{esc(v)}</td>')
            else:
                out.append(f"<td{attr}>{esc(v)}</td>")
        out.append("</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def kv_table(pairs: list[tuple[str, Any]]) -> str:
    rows = "".join(f'<tr><td class="text">{esc(k)}</td><td class="text">{esc(v)}</td></tr>' for k, v in pairs)
    return f'<table class="kv"><tbody>{rows}</tbody></table>'


def figure_html(block: FigureBlock) -> str:
    data = base64.b64encode(block.png).decode("ascii")
    return (f'<figure id="{esc(block.anchor)}"><img alt="{esc(block.title)}" src="data:image/png;base64,{data}">'
            f"<figcaption><b>{esc(block.title)}.</b> {esc(block.caption)}</figcaption></figure>")


def page(*, title: str, folders: list[str], headline: list[str], summary_tables: list[tuple[str, pd.DataFrame]],
         summary_note: str, missing: list[str], missing_cells: int, figures: list[FigureBlock],
         cells: pd.DataFrame | None, cell_fmt: dict[str, str], fastcar_table: pd.DataFrame | None,
         config: tuple[str, str], protocol: list[tuple[str, str]], environment: list[tuple[str, str]],
         skipped: list[str], findings: list[str] | None = None) -> str:
    now = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    parts = [f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
             f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
             f"<title>{esc(title)}</title><style>{CSS}</style></head><body>",
             f"<h1>{esc(title)}</h1>",
             f"<p class=\"sub\">Rendered {esc(now)} from {esc(', '.join(folders))}</p>",
             "<p class=\"toc\"><a href=\"#findings\">Findings</a><a href=\"#summary\">Summary</a><a href=\"#missing\">Missing &amp; failed</a>"
             "<a href=\"#figures\">Figures</a><a href=\"#cells\">All cells</a>"
             "<a href=\"#config\">Configuration</a><a href=\"#env\">Environment</a></p>"]
    if headline:
        parts.append("<ul>" + "".join(f"<li>{esc(h)}</li>" for h in headline) + "</ul>")
    if findings:
        parts.append('<h2 id="findings">Findings</h2><ul>' + "".join(f"<li>{esc(f)}</li>" for f in findings)
                     + "</ul>")
    parts.append('<h2 id="summary">Summary (the paper\'s Table 1)</h2>')
    for heading, wide in summary_tables:
        if heading:
            parts.append(f"<h3>{esc(heading)}</h3>")
        if wide is None or wide.empty:
            parts.append("<p>No values to summarise.</p>")
        else:
            parts.append(table_html(wide, index=True, text_cols=tuple(wide.columns), highlight="FastCAR"))
    parts.append(f"<p class=\"sub\">{esc(summary_note)}</p>")
    if fastcar_table is not None and not fastcar_table.empty:
        parts.append("<h3>FastCAR runs</h3>" + table_html(fastcar_table, text_cols=("run_id", "status", "message")))
    # Counts cells (not run, failed, diverged), not the lines below: those also hold the grid summary and notes.
    parts.append(f'<h2 id="missing">Missing &amp; failed ({missing_cells})</h2>')
    if missing:
        parts.append('<ul class="msgs">' + "".join(f"<li>{esc(m)}</li>" for m in missing) + "</ul>")
    else:
        parts.append("<p>Nothing missing: every expected cell ran, with every seed, and FastCAR is present.</p>")
    parts.append('<h2 id="figures">Figures</h2>')
    for s in skipped:
        parts.append(f"<p><i>{esc(s)}</i></p>")
    parts += [figure_html(f) for f in figures]
    parts.append('<h2 id="cells">All cells</h2>')
    if cells is None or cells.empty:
        parts.append("<p>No MTL grid cells in these results.</p>")
    else:
        parts.append("<p class=\"sub\">Click a column header to sort (blanks stay last). Mean and sample std over "
                     "the seeds that finished ok; failed rows red, diverged rows orange.</p>")
        text = ("architecture", "weighting", "decoder", "target_scaling", "status", "seeds", "message")
        parts.append(table_html(cells, sortable=True, fmt=cell_fmt, row_class="status", text_cols=text))
    parts.append('<h2 id="config">Run configuration</h2>')
    parts.append("<h3>Protocol and data</h3>" + kv_table(protocol))
    run_id, cfg = config
    if cfg:
        parts.append(f"<h3>config_json of run {esc(run_id)}</h3><pre>{esc(cfg)}</pre>")
    parts.append('<h2 id="env">Environment</h2>' + kv_table(environment))
    parts.append(f"<script>{JS}</script></body></html>")
    return "\n".join(parts)
