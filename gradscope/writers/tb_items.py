"""What :class:`gradscope.writers.TensorBoardWriter` writes besides its scalars and layout:
histograms, the HParams settings, the figures and heat maps; and its argument checks.

Each function is handed to the writer's thread (``EventWorker.submit``) with what it
needs, or, for :func:`figure_images`, runs on the caller's thread.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from gradscope.histograms import Histogram
from gradscope.history import History
from gradscope.metrics import by_kind
from gradscope.writers.layout import (
    GRADIENT_FLOW_TAG,
    TIME_GRADIENT_TAG,
    UNIT_HEALTH_TAG,
    scalar_tag,
)

__all__ = ["add_histograms", "check_arguments", "figure_images", "write_heatmaps", "write_hparams"]


def figure_images(history: History, step: int, image_steps: int) -> list[tuple[str, np.ndarray]]:
    """``(tag, image)`` of the gradient-flow, unit-health and time-gradient figures it has."""
    from gradscope.writers import figures

    drawn = ((GRADIENT_FLOW_TAG, figures.gradient_flow_image(history, step)),
             (UNIT_HEALTH_TAG, figures.unit_health_image(history, max_steps=image_steps)),
             (TIME_GRADIENT_TAG, figures.time_gradient_image(history, max_steps=image_steps)))
    return [(tag, image) for tag, image in drawn if image is not None]


def check_arguments(*, image_interval: Any, **ints: Any) -> None:
    """The constructor's numbers: each an int at least its minimum, ``image_interval`` >= 0."""
    for name, v in ints.items():
        least = 2 if name == "image_steps" else 1
        if isinstance(v, bool) or not isinstance(v, int) or v < least:
            raise ValueError(f"TensorBoardWriter({name}={v!r}): must be an int >= {least}")
    if not isinstance(image_interval, (int, float)) or image_interval < 0:
        raise ValueError(f"TensorBoardWriter(image_interval={image_interval!r}): must be "
                         "a number of seconds >= 0 (0 draws at every flush)")


def add_histograms(summary_writer: Any, histograms: Sequence[Histogram]) -> None:
    for h in histograms:
        summary_writer.add_histogram_raw(
            f"{h.group}/{h.name}", min=h.min, max=h.max, num=h.num, sum=h.sum,
            sum_squares=h.sum_squares, bucket_limits=h.bucket_limits,
            bucket_counts=h.bucket_counts, global_step=h.step)


def write_hparams(summary_writer: Any, settings: dict[str, Any], families: set[str]) -> None:
    """The settings, the activation families seen, and the health series as metrics."""
    from gradscope.writers.hparams import LEAD, hparams_summaries

    settings = dict(settings, activation_families=",".join(sorted(families)))
    health = [scalar_tag("", m.name, "run") for m in by_kind("run")]
    for summary in hparams_summaries(settings, health, differs=LEAD):
        summary_writer._get_file_writer().add_summary(summary)


def write_heatmaps(summary_writer: Any, maps: Sequence[Any], step: int) -> None:
    """Draw the heat maps (on the writer's thread) and add them as images."""
    from gradscope.writers.heatmaps import heatmap_image

    for data in maps:
        summary_writer.add_image(data.tag, heatmap_image(data), step, None, "HWC")

