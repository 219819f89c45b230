"""A small document model and its two renderings: one self-contained HTML page and markdown with PNGs.

The report is built once as a list of blocks (headings, paragraphs, notes, tables, figures); both outputs
are rendered from the same blocks, so they cannot disagree. The HTML page embeds its figures as base64
``data:`` URIs and its CSS inline: it makes no request of any kind. Inline text may use `backticks` for
code and **stars** bold; everything else is escaped.
"""
from __future__ import annotations

import base64
import html
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Cell:
    """A table cell: the main text, an optional second line (e.g. the change vs the previous row)."""

    text: str
    sub: str | None = None
    strong: bool = False


@dataclass
class Heading:
    level: int
    text: str
    anchor: str | None = None


@dataclass
class Para:
    text: str
    css: str | None = None


@dataclass
class Note:
    """A call-out: ``kind`` is 'synthetic' (demo numbers), 'missing' (with the command that produces the
    missing input) or 'info'."""

    kind: str
    text: str
    command: str | None = None


@dataclass
class Table:
    anchor: str
    caption: str | None  # None: the heading above names the table
    header: list[str]
    rows: list[list[str | Cell]]
    groups: list[tuple[str, int]] | None = None  # HTML only: a spanning header row of (text, columns)
    html_header: list[str] | None = None  # HTML only: short names under ``groups`` (markdown uses ``header``)
    notes: list[str] = field(default_factory=list)


@dataclass
class Figure:
    anchor: str
    caption: str
    path: Path  # PNG, also referenced by the markdown as figures/<name>
    alt: str


@dataclass
class ListBlock:
    items: list[str]


Block = Heading | Para | Note | Table | Figure | ListBlock

CSS = """
:root { --fg: #1d232a; --muted: #5b6672; --line: #d6dce2; --accent: #1f5f99; --warn: #b42318; }
* { box-sizing: border-box; }
body { margin: 0; background: #f4f6f8; color: var(--fg);
       font: 14px/1.5 -apple-system, "Segoe UI", "DejaVu Sans", "Liberation Sans", Arial, sans-serif; }
main { max-width: 1320px; margin: 0 auto; padding: 24px 32px 40px; background: #fff; }
h1 { font-size: 26px; margin: 4px 0 8px; }
h2 { font-size: 20px; margin: 34px 0 10px; padding-bottom: 4px; border-bottom: 2px solid var(--line); }
h3 { font-size: 16px; margin: 22px 0 8px; }
p { margin: 6px 0 10px; }
code { font: 12.5px/1.4 "DejaVu Sans Mono", Menlo, Consolas, monospace; background: #eef1f4;
       padding: 1px 4px; border-radius: 3px; overflow-wrap: anywhere; }
nav.toc { font-size: 13px; color: var(--muted); margin: 8px 0 4px; }
nav.toc a { color: var(--accent); text-decoration: none; margin-right: 12px; white-space: nowrap; }
.note { border-left: 5px solid var(--accent); background: #eef5fb; padding: 10px 14px; margin: 12px 0;
        border-radius: 4px; }
.note.synthetic { border-color: var(--warn); background: #fdecea; font-size: 15px; }
.note.synthetic strong { color: var(--warn); }
.note.missing { border-color: #b7791f; background: #fff8e6; }
.note .cmd { display: block; margin-top: 4px; }
.verdict { font-size: 15px; padding: 6px 12px; border-radius: 4px; display: inline-block; }
.verdict.met { background: #e7f6ec; border-left: 5px solid #1a7f37; }
.verdict.not-met { background: #fdecea; border-left: 5px solid var(--warn); }
.verdict.not-measured { background: #f0f3f6; border-left: 5px solid var(--muted); }
.provenance { border: 1px solid var(--line); border-radius: 6px; padding: 8px 14px; background: #fafbfc; }
.scroll { overflow-x: auto; margin: 8px 0 4px; }
table { border-collapse: collapse; font-size: 13px; font-variant-numeric: tabular-nums; }
caption { caption-side: top; text-align: left; font-weight: 600; padding: 4px 0 6px; }
th, td { border-bottom: 1px solid var(--line); padding: 4px 7px; vertical-align: top; }
th { background: #f0f3f6; text-align: center; font-weight: 600; white-space: nowrap; }
th.group { border-bottom: 1px solid #b9c2cc; }
td { text-align: right; white-space: nowrap; }
td:first-child, th:first-child { text-align: left; }
td:first-child { white-space: normal; min-width: 150px; max-width: 250px; }
td .sub { display: block; font-size: 11.5px; color: var(--muted); }
tbody tr:nth-child(even) td { background: #fafbfc; }
.tnote { font-size: 12.5px; color: var(--muted); margin: 2px 0 6px; max-width: 1100px; }
figure { margin: 18px 0; }
figure img { max-width: 100%; height: auto; border: 1px solid var(--line); background: #fff; }
figcaption { font-size: 13px; color: var(--muted); margin-top: 6px; max-width: 1100px; }
figcaption b { color: var(--fg); }
ul.inputs { font-size: 13px; padding-left: 20px; }
ul.inputs li { margin: 3px 0; }
footer { margin-top: 34px; }
"""

_CODE = re.compile(r"`([^`]+)`")


_STRONG = re.compile(r"\*\*(.+?)\*\*")


def inline_html(text: str) -> str:
    """Escape ``text``; `backticks` become <code>, **stars** <strong> (as in the markdown output)."""
    parts = _CODE.split(text)
    return "".join(f"<code>{html.escape(p)}</code>" if i % 2 else _STRONG.sub(r"<strong>\1</strong>", html.escape(p))
                   for i, p in enumerate(parts))


def _cell_html(cell: str | Cell, tag: str) -> str:
    if not isinstance(cell, Cell):
        cell = Cell(str(cell))
    body = inline_html(cell.text)
    if cell.strong:
        body = f"<strong>{body}</strong>"
    if cell.sub:
        body += f'<span class="sub">{inline_html(cell.sub)}</span>'
    return f"<{tag}>{body}</{tag}>"


def png_data_uri(path: Path) -> str:
    data = Path(path).read_bytes()
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError(f"{path}: not a PNG file")
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def to_html(title: str, blocks: Sequence[Block], toc: Sequence[tuple[str, str]] = ()) -> str:
    """The whole page; ``toc``: (anchor, text) links shown under the title."""
    out = ["<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
           '<meta name="viewport" content="width=device-width, initial-scale=1">',
           f"<title>{html.escape(title)}</title>", f"<style>{CSS}</style>", "</head>", "<body>", "<main>",
           f"<h1>{html.escape(title)}</h1>"]
    if toc:
        out.append('<nav class="toc">' + "".join(f'<a href="#{html.escape(a)}">{html.escape(t)}</a>'
                                                 for a, t in toc) + "</nav>")
    footer_open = False
    for b in blocks:
        if isinstance(b, Heading):
            if b.anchor == "inputs":
                out.append("<footer>")
                footer_open = True
            anchor = f' id="{html.escape(b.anchor)}"' if b.anchor else ""
            out.append(f"<h{b.level}{anchor}>{inline_html(b.text)}</h{b.level}>")
        elif isinstance(b, Para):
            css = f' class="{b.css}"' if b.css else ""
            out.append(f"<p{css}>{inline_html(b.text)}</p>")
        elif isinstance(b, Note):
            cmd = f'<span class="cmd">Produce it with: {inline_html(b.command)}</span>' if b.command else ""
            out.append(f'<div class="note {b.kind}">{inline_html(b.text)}{cmd}</div>')
        elif isinstance(b, Table):
            rows = [f'<div class="scroll"><table id="{html.escape(b.anchor)}">']
            if b.caption:
                rows.append(f"<caption>{inline_html(b.caption)}</caption>")
            rows.append("<thead>")
            if b.groups:
                rows.append("<tr>" + "".join(
                    f'<th colspan="{n}" class="group">{inline_html(t)}</th>' if n > 1 else
                    f"<th>{inline_html(t)}</th>" for t, n in b.groups) + "</tr>")
            header = b.html_header if b.groups and b.html_header else b.header
            rows.append("<tr>" + "".join(_cell_html(h, "th") for h in header) + "</tr>")
            rows.append("</thead><tbody>")
            rows += ["<tr>" + "".join(_cell_html(c, "td") for c in r) + "</tr>" for r in b.rows]
            rows.append("</tbody></table></div>")
            rows += [f'<p class="tnote">{inline_html(n)}</p>' for n in b.notes]
            out.append("\n".join(rows))
        elif isinstance(b, Figure):
            out.append(f'<figure id="{html.escape(b.anchor)}"><img src="{png_data_uri(b.path)}" '
                       f'alt="{html.escape(b.alt)}"><figcaption>{_caption_html(b.caption)}</figcaption></figure>')
        elif isinstance(b, ListBlock):
            out.append('<ul class="inputs">' + "".join(f"<li>{inline_html(i)}</li>" for i in b.items) + "</ul>")
        else:  # pragma: no cover - a programming error
            raise TypeError(f"unknown block {b!r}")
    if footer_open:
        out.append("</footer>")
    out += ["</main>", "</body>", "</html>"]
    return "\n".join(out) + "\n"


def _caption_html(caption: str) -> str:
    # "Figure 3: text" -> bold figure number
    m = re.match(r"^(Figure \d+[a-z]?:)(.*)$", caption, re.S)
    if m:
        return f"<b>{html.escape(m.group(1))}</b>{inline_html(m.group(2))}"
    return inline_html(caption)


def _md_cell(cell: str | Cell) -> str:
    if not isinstance(cell, Cell):
        cell = Cell(str(cell))
    text = cell.text + (f" ({cell.sub})" if cell.sub else "")
    if cell.strong:
        text = f"**{text}**"
    return text.replace("|", "\\|")


def to_markdown(title: str, blocks: Sequence[Block], figure_dir: str = "figures") -> str:
    out = [f"# {title}", ""]
    for b in blocks:
        if isinstance(b, Heading):
            out += ["#" * b.level + " " + b.text, ""]
        elif isinstance(b, Para):
            out += [b.text, ""]
        elif isinstance(b, Note):
            out += [f"> {b.text}" + (f"  \n> Produce it with: {b.command}" if b.command else ""), ""]
        elif isinstance(b, Table):
            if b.caption:
                out += [f"**{b.caption}**", ""]
            out.append("| " + " | ".join(_md_cell(h) for h in b.header) + " |")
            out.append("|" + "|".join(["---"] + ["---:"] * (len(b.header) - 1)) + "|")
            out += ["| " + " | ".join(_md_cell(c) for c in r) + " |" for r in b.rows]
            out.append("")
            for n in b.notes:
                out += [n, ""]
        elif isinstance(b, Figure):
            out += [f"![{b.alt}]({figure_dir}/{b.path.name})", "", f"*{b.caption}*", ""]
        elif isinstance(b, ListBlock):
            out += [f"- {i}" for i in b.items] + [""]
    return "\n".join(out).rstrip() + "\n"
