"""Reports of personalization runs: summary statistics, HTML report, comparison of runs.

Names are imported on first use (PEP 562): importing the package costs nothing."""

from fedp13n.utils.lazy import lazy_exports

_EXPORTS = {
    "ReportError": "fedp13n.reporting.summary",
    "Summary": "fedp13n.reporting.summary",
    "format_summary": "fedp13n.reporting.summary",
    "print_run_summary": "fedp13n.reporting.summary",
    "read_per_client": "fedp13n.reporting.summary",
    "summarize": "fedp13n.reporting.summary",
    "summarize_run": "fedp13n.reporting.summary",
    "write_comparison": "fedp13n.reporting.compare",
    "write_personalization_report": "fedp13n.reporting.result_report",
    "write_report": "fedp13n.reporting.report",
    "write_summary_json": "fedp13n.reporting.summary",
}
__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
