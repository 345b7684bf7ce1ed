"""The comparison table on a terminal, a pipe or a log file: every value printed whole.

Rich narrows all columns in proportion when a table is wider than the console, which cuts
words ("heur…", "digi…") while other columns still have room. Here the column widths are chosen
first: each column starts at its natural width and gives up space, one character at a time from
the column with the most to spare, down to its longest word (so text wraps between words, never
inside one). When even that does not fit, the same numbers are printed sideways (one column per
run), in as many tables as it takes. A pipe is 80 columns to Rich, so it gets the same
treatment as a narrow terminal.
"""

from __future__ import annotations

from collections.abc import Sequence

from rich.console import Console, RenderableType
from rich.table import Table

from esper.karn.compare import (
    KEY_HEADERS,
    ComparisonRow,
    comparison_rows,
    comparison_title,
    metrics_for,
)
from esper.karn.run_data import RunData

UNLIMITED = 10_000  # a width no console has: lay out at natural widths


def comparison_table(runs: Sequence[RunData], width: int = UNLIMITED) -> Table:
    """One row per run, plus a mean row for every (mode, task) with more than one run.

    Args:
        runs: Loaded runs, in any order; rows are sorted by task, mode and seed.
        width: The console width to lay the table out for. Columns wrap between words to
            fit; when even that cannot fit, the table is wider than ``width`` (see
            :func:`comparison_renderables`, which then turns it sideways).

    Returns:
        A Rich table with columns mode, task, seed, final/best validation accuracy, final
        validation loss, test numbers when a run has them, host/total parameters, fossilized
        and culled seeds.

    Raises:
        ReportError: If ``runs`` is empty.
    """
    return _wide(runs, width)[0]


def comparison_renderables(runs: Sequence[RunData], console: Console) -> list[RenderableType]:
    """The comparison laid out for ``console``'s width, with no value ever cut short.

    Args:
        runs: Loaded runs.
        console: The console it will be printed on (its width decides).

    Returns:
        The wide table when it fits (headers may wrap between words); otherwise tables with
        one column per run and the metrics down the side, as many as it takes for each to fit.

    Raises:
        ReportError: If ``runs`` is empty.
    """
    table, fits = _wide(runs, console.width)
    if fits:
        return [table]
    rows = comparison_rows(runs)
    tables: list[RenderableType] = []
    start = 0
    while start < len(rows):
        end = start + 1  # one run always goes in, however narrow the console
        while end < len(rows) and _sideways(runs, rows[start : end + 1], console.width)[1]:
            end += 1
        tables.append(_sideways(runs, rows[start:end], console.width)[0])
        start = end
    return tables


def _wide(runs: Sequence[RunData], width: int) -> tuple[Table, bool]:
    rows = comparison_rows(runs)
    headers = [*KEY_HEADERS, *(m.header for m in metrics_for(runs))]
    cells = [[row.mode, row.task, row.label, *row.cells] for row in rows]
    widths = fit_widths([headers, *cells], width)
    table = Table(title=comparison_title(runs))
    for i, header in enumerate(headers):
        table.add_column(
            header,
            justify="left" if i < len(KEY_HEADERS) else "right",
            width=widths[i] if widths else None,
        )
    for row, texts in zip(rows, cells, strict=True):
        table.add_row(*texts, style="bold" if row.is_mean else None)
        if row.last_in_group:
            table.add_section()
    return table, widths is not None


def _sideways(runs: Sequence[RunData], rows: list[ComparisonRow], width: int) -> tuple[Table, bool]:
    metrics = metrics_for(runs)
    headers = [""] + [
        f"{row.mode}\n{row.task}\n{'' if row.is_mean else 'seed '}{row.label}" for row in rows
    ]
    cells = [[m.header, *(row.cells[i] for row in rows)] for i, m in enumerate(metrics)]
    widths = fit_widths([headers, *cells], width, whole=(0,))
    table = Table(title=comparison_title(runs))
    for i, header in enumerate(headers):
        table.add_column(
            header,
            justify="left" if i == 0 else "right",
            style="bold" if i and rows[i - 1].is_mean else None,
            width=widths[i] if widths else None,
        )
    for texts in cells:
        table.add_row(*texts)
    return table, widths is not None


def fit_widths(cells: list[list[str]], width: int, whole: Sequence[int] = ()) -> list[int] | None:
    """Column widths for a Rich table (default box, one space of padding) of ``cells``.

    Headers wrap first (down to the widest value below them), values only when that is not
    enough, and nothing is ever narrower than its longest word.

    Args:
        cells: Rows of text, the header row first; a text may hold line breaks.
        width: The console's width.
        whole: Columns that never wrap (the metric names of the sideways table).

    Returns:
        One width per column that together fit in ``width``; None when the longest words
        alone do not fit.
    """
    columns = list(zip(*cells, strict=True))

    def widest(texts, split) -> int:
        return max((len(part) for text in texts for part in split(text)), default=0)

    natural = [widest(col, str.splitlines) for col in columns]
    shortest = [
        natural[i] if i in whole else widest(col, str.split) for i, col in enumerate(columns)
    ]
    values = [
        max(widest(col[1:], str.splitlines), low)
        for col, low in zip(columns, shortest, strict=True)
    ]
    # Each column adds a space of padding on both sides and one rule; the table one more rule.
    budget = width - (3 * len(columns) + 1)
    if sum(shortest) > budget:
        return None
    widths = list(natural)
    for floor in (values, shortest):
        while sum(widths) > budget and any(w > f for w, f in zip(widths, floor, strict=True)):
            # One character from the column with the most to spare above this floor.
            spare = max(range(len(widths)), key=lambda i: widths[i] - floor[i])
            widths[spare] -= 1
    return widths
