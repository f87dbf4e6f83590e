"""Reports of personalization runs: summary statistics, HTML report, comparison of runs."""

from fedp13n.reporting.compare import write_comparison
from fedp13n.reporting.report import write_report
from fedp13n.reporting.summary import (
    ReportError,
    Summary,
    format_summary,
    print_run_summary,
    read_per_client,
    summarize,
    summarize_run,
    write_summary_json,
)

__all__ = [
    "ReportError",
    "Summary",
    "format_summary",
    "print_run_summary",
    "read_per_client",
    "summarize",
    "summarize_run",
    "write_comparison",
    "write_report",
    "write_summary_json",
]
