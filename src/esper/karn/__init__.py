"""Karn: analysis of run directories — plots, lifecycle swimlanes, comparison tables and
self-contained HTML report pages."""

from esper.karn.compare import ComparisonRow, comparison_rows
from esper.karn.html import write_comparison_page, write_run_page
from esper.karn.report import (
    ReportError,
    RunData,
    default_page_path,
    load_run,
    report_main,
    write_plots,
)
from esper.karn.tables import comparison_renderables, comparison_table

__all__ = [
    "ComparisonRow",
    "ReportError",
    "RunData",
    "comparison_renderables",
    "comparison_rows",
    "comparison_table",
    "default_page_path",
    "load_run",
    "report_main",
    "write_comparison_page",
    "write_plots",
    "write_run_page",
]
