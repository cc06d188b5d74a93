"""Markdown tables of results: any rows (:func:`markdown_table`) and a run's final test table, best and last
checkpoints (:func:`final_table`, :func:`markdown_final_table`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["markdown_table", "final_table", "markdown_final_table"]


def markdown_table(rows: list[dict[str, Any]], columns: list[tuple[str, str]]) -> str:
    """``columns`` = [(key, header)]; floats in [0, 1] are printed as percentages."""
    def fmt(v: Any) -> str:
        return f"{100 * v:.2f}" if isinstance(v, float) else str(v)
    head = "| " + " | ".join(h for _, h in columns) + " |"
    sep = "|" + "|".join("---" for _ in columns) + "|"
    body = ["| " + " | ".join(fmt(r.get(k, "")) for k, _ in columns) + " |" for r in rows]
    return "\n".join([head, sep, *body])


def final_table(summary: Mapping[str, Any]) -> tuple[list[str], list[dict[str, Any]]]:
    """``(attacks, rows)``: one row per checkpoint (``best``, ``last``) with its accuracy per attack, from the
    final test evaluation (``eval.final_attacks``) or, without one, from the selection split."""
    source = summary.get("final") or {k: summary[k] for k in ("best", "last") if summary.get(k)}
    attacks = list(dict.fromkeys(a for accs in source.values() for a in accs))
    rows = [{"checkpoint": which, **accs} for which, accs in source.items()]
    return attacks, rows


def markdown_final_table(summary: Mapping[str, Any]) -> str:
    """:func:`final_table` as a Markdown table (accuracy in %)."""
    attacks, rows = final_table(summary)
    lines = ["| checkpoint | " + " | ".join(attacks) + " |", "|---" * (len(attacks) + 1) + "|"]
    lines += ["| " + " | ".join([r["checkpoint"], *(f"{100 * r[a]:.2f}" if isinstance(r.get(a), float) else "-"
                                                   for a in attacks)]) + " |" for r in rows]
    return "\n".join(lines)
