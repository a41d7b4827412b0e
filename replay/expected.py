"""Planned changes in a replay: the same marking as the live release sink, from files only.

The configuration's ``annotations.planned_changes`` and ``ctrguard replay --annotations FILE``
(YAML or JSON, see :func:`ctrguard.sinks.annotations.load_annotation_file`) apply; Redis is never
read. Alerts inside a planned change are written with ``expected`` set and
``quarantine: false``, and their series' figures with status ``ok``.

>>> from ctrguard.config import Settings
>>> marker = ExpectedMarker(Settings(), [])
>>> marker([]), marker.alerts, marker.figures_released
([], 0, 0)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ctrguard.config import Settings
from ctrguard.records import STATUS_QUARANTINED, WindowDecision
from ctrguard.sinks.annotations import (
    Annotation,
    AnnotationSet,
    annotations_from_settings,
    mark_expected,
)

__all__ = ["ExpectedMarker"]


class ExpectedMarker:
    """Marks a replay's decisions; counts the alerts marked and the figures released."""

    def __init__(self, settings: Settings, extra: Sequence[Annotation] = ()):
        self.annotations = AnnotationSet([*annotations_from_settings(settings), *extra])
        self.alerts = 0
        self.figures_released = 0

    def __call__(self, items: list[Any]) -> list[Any]:
        if not self.annotations:
            return items
        idx = [i for i, x in enumerate(items) if type(x) is WindowDecision and x.alerts]
        if not idx:
            return items
        marked, n = mark_expected([items[i] for i in idx], self.annotations)
        if n:
            out = list(items)
            for i, d in zip(idx, marked, strict=True):
                before = sum(f.status == STATUS_QUARANTINED for f in out[i].figures)
                after = sum(f.status == STATUS_QUARANTINED for f in d.figures)
                self.figures_released += before - after
                out[i] = d
            self.alerts += n
            return out
        return items
