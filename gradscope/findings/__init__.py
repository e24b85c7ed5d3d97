"""Findings: rules that turn a :class:`gradscope.History` into diagnoses with remedies.

* :mod:`gradscope.findings.thresholds`: :class:`Finding` and :class:`Thresholds`;
* :mod:`gradscope.findings.rules`: the rule table (:data:`RULES`), the ``nonfinite``
  rule, :func:`analyze` and :func:`format_findings`; the other rules by subject in
  :mod:`~gradscope.findings.gradients` (gradients and updates),
  :mod:`~gradscope.findings.forward` (activation call-sites) and
  :mod:`~gradscope.findings.amp` (a GradScaler's skipped steps);
* :mod:`gradscope.findings.scan`: what the rules have read so far, and their readers;
  :mod:`gradscope.findings.episodes`: the episodes they remember (a finding that
  held and resolved is still told at the end, marked ``resolved``);
* :mod:`gradscope.findings.sink`: :class:`FindingsSink`, the sink that runs the
  rules at each flush for the other sinks and prints the summary at close;
* :mod:`gradscope.findings.remedies`: remedies that fit the run (what the run
  already applies -- optimizer, activations, normalisation, weight scale -- is
  left out and said).

Example:
    >>> from gradscope.findings import Thresholds, analyze
    >>> from gradscope.history import History
    >>> analyze(History(), Thresholds(dead_units=0.5))
    []
"""

from gradscope.findings.rules import RULES, analyze, format_findings
from gradscope.findings.sink import FindingsSink
from gradscope.findings.thresholds import SEVERITIES, Finding, Thresholds, threshold_names

__all__ = [
    "RULES",
    "SEVERITIES",
    "Finding",
    "FindingsSink",
    "Thresholds",
    "analyze",
    "format_findings",
    "threshold_names",
]
