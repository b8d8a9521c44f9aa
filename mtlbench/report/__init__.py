"""``mtlbench report``: heatmaps (architecture x weighting per decoder), the paper's Table 1, scatter plots, learning
curves and one self-contained HTML page, from one or more results folders."""

from mtlbench.report.render import ReportResult, render_report
from mtlbench.report.tables import summary_rich_table

__all__ = ["ReportResult", "render_report", "summary_rich_table"]
