"""Plain text columns for `doit status`: thousands of rows in milliseconds.

rich's Table measures and wraps every cell (three quarters of `doit status`
on 2,000 agents went there); a status table needs padded columns, a colour
per state on a terminal, and long reasons cut at the terminal's edge.
"""
from __future__ import annotations

from typing import Iterable, Sequence

ANSI = {"cyan": "36", "green": "32", "red": "31", "magenta": "35", "yellow": "33",
        "dim": "2", "bold": "1"}


def paint(text: str, style: str | None, colour: bool) -> str:
    code = ANSI.get(style or "")
    return f"\x1b[{code}m{text}\x1b[0m" if colour and code and text else text


def columns(header: Sequence[str], rows: Iterable[Sequence[str]], styles: dict[str, str],
            colour: bool = False, width: int | None = None, state_column: int = 1
            ) -> list[str]:
    """Lines of left-aligned columns two spaces apart; the last column is
    cut to `width` (None: never); the state cell is coloured by `styles`."""
    rows = [tuple(row) for row in rows]
    widths = [len(h) for h in header]
    for row in rows:
        for index, cell in enumerate(row[:-1]):
            if len(cell) > widths[index]:
                widths[index] = len(cell)
    lead = sum(widths[:-1]) + 2 * (len(header) - 1)
    room = None if width is None else max(10, width - lead)
    lines = [_line(header, widths, room, colour, "bold")]
    for row in rows:
        lines.append(_line(row, widths, room, colour, None, styles.get(row[state_column]),
                           state_column))
    return lines


def _line(cells: Sequence[str], widths: list[int], room: int | None, colour: bool,
          style: str | None, state_style: str | None = None, state_column: int = 1) -> str:
    parts = []
    for index, cell in enumerate(cells[:-1]):
        padded = cell.ljust(widths[index])
        if style:
            padded = paint(padded, style, colour)
        elif index == state_column and state_style:
            padded = paint(cell, state_style, colour) + " " * (widths[index] - len(cell))
        parts.append(padded)
    last = cells[-1]
    if room is not None and len(last) > room:
        last = last[:room - 1] + "…"
    parts.append(paint(last, style, colour) if style else last)
    return "  ".join(parts).rstrip()
