"""Markdown pieces the reports share: numbers as people read them, table cells and tables,
and plots inlined as images for viewers that cannot open the run folder (the Prefect UI)."""

from __future__ import annotations

import base64
import io
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

# Plots inlined into a Prefect artifact: the UIs show them within ~1000 px, and the artifact
# (its text and every image) stays a few hundred KB, far from what a server or database holds.
INLINE_IMAGE_WIDTH = 1000
INLINE_IMAGE_BYTES = 300_000
# Unbroken runs longer than this get a zero-width space so table cells can wrap.
WRAP_CHARS = 24


def number(value: float) -> str:
    """A float for people: 4 decimals (thousands separated), or 4 significant digits below 0.001
    (a learning rate of 2e-05 is not 0.0000)."""
    if not math.isfinite(value):
        return str(value)
    if value and abs(value) < 0.001:
        return f"{value:.4g}"
    return f"{value:,.4f}"


def duration(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "-"
    if seconds < 60:
        return f"{seconds:.1f} s"
    if seconds < 3600:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return number(value)
    return str(value)


def counts_line(mapping: Mapping[str, int]) -> str:
    """``{"train": 12000, "validation": 800}`` as ``train 12,000, validation 800``."""
    return ", ".join(f"{key} {value:,}" for key, value in mapping.items()) or "none"


def clip(text: str, limit: int) -> str:
    """One line of at most ``limit`` characters, ending in an ellipsis when cut."""
    text = " / ".join(line.strip() for line in text.strip().splitlines() if line.strip())
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def wrappable(text: str) -> str:
    """Long unbroken runs (a URL, a degenerate answer) get zero-width spaces so a cell can wrap."""
    return re.sub(rf"\S{{{WRAP_CHARS}}}(?=\S)", lambda match: match.group(0) + "\u200b", text)


def escape(text: str) -> str:
    """Text safe inside a table cell: no line breaks, no cell-ending pipes, no raw HTML."""
    text = text.replace("\\", "\\\\").replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")
    return re.sub(r"\s*[\r\n]+\s*", " ", text)


class Cell(str):
    """Markdown already made safe for a table cell (it may hold ``<br>`` line breaks): ``table``
    puts it in as it is."""


def finite(value: Any) -> Any:
    """JSON has no NaN or infinity: the table artifact shows them as empty cells."""
    return None if isinstance(value, float) and not math.isfinite(value) else value


def display_rows(rows: list[dict[str, Any]], durations: Mapping[str, str] | None = None) -> list[dict[str, str]]:
    """Rows as people read them, for table artifacts: rounded metrics, separated thousands, and
    each column in ``durations`` (a number of seconds) renamed to its value there, in s/min/h."""
    durations = durations or {}
    return [
        {durations.get(key, key): duration(value) if key in durations else cell(value) for key, value in row.items()}
        for row in rows
    ]


def table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    head = "| " + " | ".join(columns) + " |\n|" + "---|" * len(columns) + "\n"
    return head + "".join("| " + " | ".join(_cell_markdown(row.get(c)) for c in columns) + " |\n" for row in rows)


def _cell_markdown(value: Any) -> str:
    return value if isinstance(value, Cell) else escape(cell(value))


def inline_png(path: str | Path) -> str | None:
    """The PNG at ``path`` as a ``data:image/png`` URI, narrowed to INLINE_IMAGE_WIDTH and reduced
    to a 256-colour palette (plainly drawn plots lose nothing visible); None when the file is
    missing or still over INLINE_IMAGE_BYTES."""
    from PIL import Image

    path = Path(path)
    if not path.is_file():
        return None
    with Image.open(path) as image:
        picture = image.convert("RGB")
    if picture.width > INLINE_IMAGE_WIDTH:
        picture = picture.resize((INLINE_IMAGE_WIDTH, round(picture.height * INLINE_IMAGE_WIDTH / picture.width)), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    picture.quantize(colors=256).save(buffer, format="PNG", optimize=True)
    uri = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
    return uri if len(uri) <= INLINE_IMAGE_BYTES else None


def plot(title: str, location: str | Path, *, inline: bool) -> str:
    """A plot in markdown: an image of ``location`` (a path relative to the report), or with
    ``inline`` the image itself; a plot that cannot be inlined is named by its path."""
    if not inline:
        return f"![{title}]({location})"
    if uri := inline_png(location):
        return f"![{title}]({uri})"
    return f"- {title}: `{location}` (not shown here: missing or over {INLINE_IMAGE_BYTES // 1000} KB)"
