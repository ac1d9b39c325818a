"""Results: from finished run dirs to the paper's tables, claims and REPORT.md.

=============== ===================================================================
module          job
=============== ===================================================================
``runs``        read run dirs (or a W&B project) into ``Run`` objects; export them
``stats``       intervals, Welch comparisons, seeds needed, BLEU paired bootstrap
``tabulate``    the structured result of each paper table
``claims``      the paper's claims as row comparisons with verdicts
``format``      Markdown / CSV / JSON writers of a table's result
``plots``       learning-curve figures of the report
``dashboards``  the W&B workspace views and report (``python -m agf_exp.dashboard``)
=============== ===================================================================

:mod:`agf_exp.report` is the command line that puts them together into REPORT.md.
"""


class ReportError(ValueError):
    """The report cannot be made from these runs; the message says why and what to pass."""
