"""``gradscope preset NAME``: the CLI module of :mod:`gradscope.experiments.presets`.

The implementation lives in :mod:`gradscope.experiments.compare`, which shares the
device, data and output options with ``gradscope compare``.
"""

from __future__ import annotations

from gradscope.experiments.compare import PRESET_EXAMPLES as EXAMPLES
from gradscope.experiments.compare import configure_preset as configure
from gradscope.experiments.compare import preset_help as help_text
from gradscope.experiments.compare import run_preset as run

__all__ = ["EXAMPLES", "configure", "help_text", "run"]
