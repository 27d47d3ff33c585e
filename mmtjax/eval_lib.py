"""Kept for one release: evaluation now lives in its parts.

  mmtjax.evaluation    the evaluation loop (evaluate_variables, eval_rows)
  mmtjax.sweeps        a workdir evaluated: evaluate, sweep, run_config, data_differences
  mmtjax.report_files  report text and files: format_report, write_report, report_files, ...
  mmtjax.pictures      episode panels, class bars, the memory picture

Every public name of the old module is importable from here until the next
release; new code imports it from its module.
"""

from mmtjax.evaluation import eval_rows, evaluate_variables  # noqa: F401
from mmtjax.pictures import (  # noqa: F401
  PANEL_MAX_SIDE,
  class_bars,
  image_style_stats,
  memory_picture,
  prediction_panels,
  style_memory_bank,
)
from mmtjax.report_files import (  # noqa: F401
  REPORTS,
  ReportFiles,
  check_destination,
  evaluation_name,
  format_report,
  report_files,
  report_name,
  unused_path,
  write_report,
  write_text,
  written_files,
)
from mmtjax.sweeps import data_differences, evaluate, publish, run_config, sweep  # noqa: F401
