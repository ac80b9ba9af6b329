"""lr_at: the lower level's learning rate at known points of a warm-up + cosine and a warm-up + step schedule."""

import math

import pytest

from ab_plugin import Config
from ab_plugin.schedule import lr_at

SPE = 5  # steps per epoch


def test_linear_warmup_then_cosine_to_zero():
    cfg = Config(epochs=10, warmup_epochs=2.0, lr=0.4)  # 50 steps, the first 10 warm up
    lrs = [lr_at(k, SPE, cfg) for k in range(50)]
    assert lrs[:10] == pytest.approx([0.04 * (k + 1) for k in range(10)], rel=1e-12)
    assert lrs[9] == lrs[10] == 0.4  # the peak ends the warm-up and starts the cosine
    assert lrs[30] == pytest.approx(0.2, rel=1e-12)  # half-way through the cosine
    assert lrs[49] == pytest.approx(0.2 * (1 + math.cos(math.pi * 39 / 40)), rel=1e-12)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:], strict=False))
    assert lr_at(50, SPE, cfg) == lr_at(1000, SPE, cfg) == 0.0  # past the end: stays at 0


def test_step_schedule_divides_by_ten_at_each_milestone():
    cfg = Config(epochs=10, warmup_epochs=1.0, lr=0.4, schedule="step", milestones=(0.5, 0.8))
    assert lr_at(0, SPE, cfg) == pytest.approx(0.08, rel=1e-12)
    assert lr_at(4, SPE, cfg) == lr_at(24, SPE, cfg) == 0.4
    assert lr_at(25, SPE, cfg) == pytest.approx(0.04, rel=1e-12) == lr_at(39, SPE, cfg)
    assert lr_at(40, SPE, cfg) == pytest.approx(0.004, rel=1e-12) == lr_at(49, SPE, cfg)


def test_no_warmup_starts_at_the_peak():
    cfg = Config(epochs=4, warmup_epochs=0.0, lr=0.1)
    assert lr_at(0, SPE, cfg) == 0.1
