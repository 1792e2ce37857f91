"""OpenMP's wait policy: a bounded spin by default, the user's choice always kept."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from mechmoe.core.threads import SPIN_COUNT, configure_openmp


def test_sets_a_bounded_spin_when_nothing_is_chosen():
    env: dict[str, str] = {}
    assert configure_openmp(env) is True
    assert env == {"GOMP_SPINCOUNT": str(SPIN_COUNT)}


@pytest.mark.parametrize("chosen", [{"OMP_WAIT_POLICY": "PASSIVE"}, {"GOMP_SPINCOUNT": "0"}])
def test_a_users_choice_is_kept(chosen):
    env = dict(chosen)
    assert configure_openmp(env) is False
    assert env == chosen


def test_import_mechmoe_sets_it_before_torch_loads():
    # A fresh interpreter: importing mechmoe must set it (torch reads it when it loads).
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    code = (
        "import sys, os, mechmoe; "
        "assert 'torch' not in sys.modules; print(os.environ.get('GOMP_SPINCOUNT'))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == str(SPIN_COUNT)
