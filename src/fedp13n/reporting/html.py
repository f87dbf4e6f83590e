"""A self-contained HTML page: inline CSS, PNGs embedded as base64 data URIs.

Why self-contained: a report is mailed, attached to an issue or opened on a laptop
without the run directory or a network; one file must carry everything. No JavaScript,
no external fonts or stylesheets.
"""

from __future__ import annotations

import base64
import html
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 0;
       color: #1a1a1a; background: #fff; line-height: 1.45; }
main { max-width: 1150px; margin: 0 auto; padding: 1.5rem 2rem 3rem; }
h1 { font-size: 1.6rem; margin-bottom: 0.2rem; }
h2 { font-size: 1.2rem; border-bottom: 1px solid #ddd; padding-bottom: 0.25rem; margin-top: 2rem; }
p.sub { color: #555; margin-top: 0; }
nav ul { list-style: none; padding: 0; display: flex; flex-wrap: wrap; gap: 0.4rem 1rem; }
nav a { color: #0072B2; text-decoration: none; }
figure { margin: 1rem 0; }
figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { color: #555; font-size: 0.9rem; }
table { border-collapse: collapse; font-size: 0.88rem; margin: 0.5rem 0; }
.table-wrap { overflow-x: auto; }
th, td { border-bottom: 1px solid #e3e3e3; padding: 0.3rem 0.6rem; text-align: left; }
th { background: #f4f4f4; }
.num { text-align: right; white-space: nowrap; font-variant-numeric: tabular-nums; }
caption { caption-side: bottom; text-align: left; color: #555; font-size: 0.85rem;
          padding-top: 0.3rem; }
pre { background: #f7f7f7; padding: 0.8rem; overflow-x: auto; font-size: 0.85rem; }
.headline { display: flex; gap: 1rem; flex-wrap: wrap; }
.headline div { border: 1px solid #ddd; border-radius: 6px; padding: 0.5rem 1rem; }
.headline b { display: block; font-size: 1.3rem; }
p.missing { background: #fff4e5; border-left: 4px solid #E69F00; padding: 0.5rem 0.8rem; }
ul.facts { margin: 0.3rem 0 0.8rem; padding-left: 1.2rem; }
details summary { cursor: pointer; color: #0072B2; }
"""


@dataclass(frozen=True)
class Section:
    """One ``<section id=...>`` of the page (also listed in the table of contents)."""

    id: str
    title: str
    body: str  # HTML


def esc(text: object) -> str:
    return html.escape(str(text), quote=True)


def figure_sections(
    figures: Sequence[tuple[str, str, str, str]],
    pngs: Mapping[str, bytes],
    files: Mapping[str, str],
    notes: Mapping[str, str],
) -> list[Section]:
    """A section per figure ``(id, title, alt text, caption)``: its note (HTML, say what it
    leaves out), then the figure, its PNG inline (``data:image/png;base64``) in a
    ``<figure>``. Where there is none the note stands alone, or a line says what it would
    show."""
    sections = []
    for key, title, alt, caption in figures:
        if key in pngs:
            data = base64.b64encode(pngs[key]).decode("ascii")
            shown = (
                f'<figure><img src="data:image/png;base64,{data}" alt="{esc(alt)}">'
                f'<figcaption>{esc(caption)} <span class="file">(also saved as '
                f"<code>{esc(files[key])}</code>)</span></figcaption></figure>"
            )
        else:
            shown = "" if key in notes else f"<p>Not available: {esc(caption)}</p>"
        sections.append(Section(key, title, notes.get(key, "") + shown))
    return sections


_NUMERIC = re.compile(r"^[\[\]+\-0-9.,% /na]*$")


def _is_numeric(text: str) -> bool:
    """Numbers, percentages and intervals are right-aligned; words are left-aligned."""
    return bool(text) and any(ch.isdigit() for ch in text) and bool(_NUMERIC.match(text))


def note(title: str, text: str) -> str:
    """A highlighted note: ``title`` in bold, then ``text`` (plain text, both)."""
    return f'<p class="missing"><b>{esc(title)}</b> {esc(text)}</p>'


def missing(what: str, why: str) -> str:
    """A visible note where a figure or table would be: what is left out, and why."""
    return note(f"Not available: {what}.", why)


def table(rows: Sequence[Mapping[str, object]], caption: str | None = None) -> str:
    """An HTML table from dicts that share their keys (the header), in a scrolling box."""
    if not rows:
        return "<p>(no rows)</p>"
    cols = list(rows[0])
    numeric = {c: all(_is_numeric(str(r.get(c, ""))) or not r.get(c) for r in rows) for c in cols}

    def cls(c: str) -> str:
        return ' class="num"' if numeric[c] else ""

    head = "".join(f"<th{cls(c)}>{esc(c)}</th>" for c in cols)
    body = "".join(
        "<tr>" + "".join(f"<td{cls(c)}>{esc(r.get(c, ''))}</td>" for c in cols) + "</tr>"
        for r in rows
    )
    cap = f"<caption>{esc(caption)}</caption>" if caption else ""
    return (
        f'<div class="table-wrap"><table>{cap}<thead><tr>{head}</tr></thead>'
        f"<tbody>{body}</tbody></table></div>"
    )


def headline(items: Sequence[tuple[str, str]]) -> str:
    """Big numbers in boxes: (label, value)."""
    boxes = "".join(f"<div>{esc(label)}<b>{esc(value)}</b></div>" for label, value in items)
    return f'<div class="headline">{boxes}</div>'


def page(title: str, subtitle: str, sections: Sequence[Section], intro: str = "") -> str:
    """The whole document; ``intro`` (HTML) goes under the title, before the contents."""
    toc = "".join(f'<li><a href="#{esc(s.id)}">{esc(s.title)}</a></li>' for s in sections)
    body = "\n".join(
        f'<section id="{esc(s.id)}"><h2>{esc(s.title)}</h2>\n{s.body}\n</section>' for s in sections
    )
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{esc(title)}</title>\n<style>{CSS}</style></head>\n"
        f'<body><main><h1>{esc(title)}</h1><p class="sub">{esc(subtitle)}</p>\n'
        f"{intro}<nav><ul>{toc}</ul></nav>\n{body}\n</main></body></html>\n"
    )
