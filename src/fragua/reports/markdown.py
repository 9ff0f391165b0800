"""Markdown pieces the reports share: table cells and tables."""

from __future__ import annotations

import math
from typing import Any


def cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def finite(value: Any) -> Any:
    """JSON has no NaN or infinity: the table artifact shows them as empty cells."""
    return None if isinstance(value, float) and not math.isfinite(value) else value


def table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    head = "| " + " | ".join(columns) + " |\n|" + "---|" * len(columns) + "\n"
    return head + "".join("| " + " | ".join(escape(cell(row.get(c))) for c in columns) + " |\n" for row in rows)
