"""Reports of personalization runs: summary statistics, HTML report, comparison of runs.

Names are imported on first use (PEP 562): importing the package costs nothing."""

from fedp13n.utils.lazy import by_module, lazy_exports

_EXPORTS = by_module(
    {
        "fedp13n.reporting.summary": "ReportError Summary format_summary print_run_summary "
        "read_per_client summarize summarize_run write_summary_json",
        "fedp13n.reporting.compare": "write_comparison",
        "fedp13n.reporting.result_report": "write_personalization_report",
        "fedp13n.reporting.report": "write_report",
    }
)
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
