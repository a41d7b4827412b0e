"""The short chaos run (``make chaos`` runs the full one): see tests/chaos.py."""

from __future__ import annotations

import os
from dataclasses import replace

import pytest

from tests.chaos import SHORT, run_chaos

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_short_chaos_run_changes_no_figure(tmp_path):
    # CTRGUARD_CHAOS_POISON=0 leaves out the two poison pills (see the README, "Chaos run").
    plan = replace(SHORT, poison=os.environ.get("CTRGUARD_CHAOS_POISON", "1") != "0")
    ok, text = run_chaos(plan, tmp_path)
    print(text)
    assert ok, text
