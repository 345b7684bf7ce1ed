"""Karn: analysis of run directories — plots, lifecycle swimlanes and comparison tables."""

from esper.karn.report import (
    ReportError,
    RunData,
    comparison_table,
    load_run,
    report_main,
    write_plots,
)

__all__ = ["ReportError", "RunData", "comparison_table", "load_run", "report_main", "write_plots"]
