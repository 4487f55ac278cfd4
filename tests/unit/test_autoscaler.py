"""The autoscaler's algorithm (roles/app/files/zapora_autoscaler.py), without a host.

The script runs on the app hosts with their python3; here its pure functions are loaded
from the role's file and checked against Kubernetes' HPA rules: desired =
ceil(current x utilisation / target), the tolerance band, the larger of CPU and memory,
min/max bounds, immediate scale-up and the scale-down stabilisation window.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "roles" / "app" / "files" / "zapora_autoscaler.py"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("zapora_autoscaler", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["zapora_autoscaler"] = module
    spec.loader.exec_module(module)
    return module


AS = _load()
TARGETS = AS.Targets(cpu=0.70, memory=0.75, tolerance=0.10)


@pytest.mark.parametrize(
    ("current", "cpu", "expected"),
    [
        (1, [0.90], 2),  # ratio 1.29 -> ceil(1.29) = 2
        (2, [0.95, 0.95], 3),  # ceil(2 x 1.357) = 3
        (1, [1.00], 2),
        (3, [1.40, 1.40, 1.40], 6),  # ceil(3 x 2) = 6 (bounded later)
        (2, [0.10, 0.10], 1),  # ceil(2 x 0.143) = 1
        (4, [0.35, 0.35, 0.35, 0.35], 2),  # ratio 0.5 -> exactly 2, no float drift to 3
        (2, [0.70, 0.70], 2),
    ],
)
def test_cpu_proposal_is_ceil_of_current_times_ratio(
    current: int, cpu: list[float], expected: int
) -> None:
    p = AS.propose(current, "cpu", cpu, 0.70, 0.10)
    assert p.replicas == expected, p


@pytest.mark.parametrize("cpu", [0.64, 0.70, 0.76])
def test_within_tolerance_nothing_changes(cpu: float) -> None:
    # |0.64/0.7 - 1| = 0.086 and |0.76/0.7 - 1| = 0.086, both within 10 %.
    assert AS.propose(3, "cpu", [cpu] * 3, 0.70, 0.10).replicas == 3


def test_just_outside_tolerance_changes() -> None:
    assert AS.propose(3, "cpu", [0.78] * 3, 0.70, 0.10).replicas == 4  # ratio 1.114
    assert AS.propose(3, "cpu", [0.62] * 3, 0.70, 0.10).replicas == 3  # ceil(2.66) = 3
    assert AS.propose(4, "cpu", [0.62] * 4, 0.70, 0.10).replicas == 4  # ceil(3.54) = 4
    assert AS.propose(4, "cpu", [0.50] * 4, 0.70, 0.10).replicas == 3  # ceil(2.86) = 3


def test_average_over_replicas_not_the_hottest() -> None:
    # One replica at 100 %, one at 20 %: the average 0.6 gives ratio 0.857, outside the
    # tolerance, but ceil(2 x 0.857) = 2: no change.
    assert AS.propose(2, "cpu", [1.0, 0.2], 0.70, 0.10).replicas == 2


def test_the_larger_metric_wins() -> None:
    # CPU idle (wants 1), memory at 0.9 of limit (wants ceil(2 x 1.2) = 3).
    desired, proposals = AS.recommend(2, [0.05, 0.05], [0.9, 0.9], TARGETS)
    assert desired == 3
    assert {p.metric: p.replicas for p in proposals} == {"cpu": 1, "memory": 3}


def test_no_samples_keeps_the_count() -> None:
    assert AS.recommend(2, [], [], TARGETS) == (2, [])


def test_bounds() -> None:
    assert AS.clamp(6, 1, 4) == 4
    assert AS.clamp(0, 1, 4) == 1
    assert AS.clamp(3, 1, 4) == 3


def _decide(stab: Any, now: float, current: int, cpu: float, lo: int = 1, hi: int = 4) -> Any:
    return AS.decide(now, current, [cpu] * current, [0.3] * current, TARGETS, lo, hi, stab)


def test_scale_up_is_immediate_and_bounded() -> None:
    stab = AS.Stabiliser(window=300)
    d = _decide(stab, 0, 1, 1.0)
    assert (d["desired"], d["action"]) == (2, "scale-up")
    d = _decide(stab, 15, 3, 1.5)  # ceil(3 x 2.14) = 7 -> max 4
    assert (d["recommendation"], d["desired"], d["at_max"]) == (7, 4, True)


def test_scale_down_waits_for_the_stabilisation_window() -> None:
    stab = AS.Stabiliser(window=300)
    # Busy at t=0 (recommends 4 with 3 running), then idle from t=15.
    assert _decide(stab, 0, 3, 0.9)["desired"] == 4
    for t in range(15, 300, 15):
        d = _decide(stab, t, 4, 0.05)
        assert d["desired"] == 4, (t, d)
        assert d["action"] == "hold-stabilising"
    # 300 s after the last busy recommendation it has left the window: down to what
    # memory asks (0.3 of the limit x 4 / 0.75 = 1.6 -> 2; CPU alone would ask for 1).
    d = _decide(stab, 300, 4, 0.05)
    assert (d["desired"], d["action"]) == (2, "scale-down")


def test_scale_down_goes_to_the_highest_recommendation_in_the_window() -> None:
    stab = AS.Stabiliser(window=60)
    _decide(stab, 0, 4, 0.60)  # ceil(4 x 0.857) = 4 (no change)
    _decide(stab, 20, 4, 0.40)  # ceil(4 x 0.571) = 3
    d = _decide(stab, 40, 4, 0.05)  # 1 now, but 4 at t=0 still in the window
    assert d["desired"] == 4
    d = _decide(stab, 65, 4, 0.05)  # t=0 left; highest left is 3 (t=20)
    assert (d["desired"], d["action"]) == (3, "scale-down")


def test_cpu_and_memory_utilisation_from_docker_stats() -> None:
    before = {"cpu_ns": 1_000_000_000, "at_ns": 0}
    after = {"cpu_ns": 1_350_000_000, "at_ns": 1_000_000_000}
    assert AS.cpu_utilisation(before, after, 0.5) == pytest.approx(0.7)
    assert AS.cpu_utilisation(before, after, 0) is None
    stats = {"memory_stats": {"usage": 300, "limit": 400, "stats": {"inactive_file": 60}}}
    assert AS.memory_utilisation(stats) == pytest.approx(0.6)
    v1 = {"memory_stats": {"usage": 300, "limit": 400, "stats": {"total_inactive_file": 100}}}
    assert AS.memory_utilisation(v1) == pytest.approx(0.5)
    assert AS.memory_utilisation({"memory_stats": {}}) is None


def _controller(tmp_path: Path) -> Any:
    state = tmp_path / "state"
    state.mkdir()
    (state / "state.json").write_text(json.dumps({"active": "green"}))
    config = AS.Config(
        state_dir=state, base_dir=tmp_path, minimum=1, maximum=3, targets=TARGETS,
        interval=15, scale_down_window=300, drain_seconds=0, stop_timeout=1,
        ready_timeout=1, lock_stale_seconds=1800, textfile=tmp_path / "a.prom", enabled=True,
    )  # fmt: skip
    return AS.Controller(config)


def test_the_active_colour_and_the_lock_come_from_the_state_directory(tmp_path: Path) -> None:
    c = _controller(tmp_path)
    assert c.active_colour() == "green"
    assert c.held() is None
    hold = tmp_path / "state" / "autoscale.hold"
    hold.write_text("deploy x\n")
    assert "autoscale.hold" in c.held()
    # A hold older than the stale limit (a deploy that died) no longer stops scaling.
    os.utime(hold, (0, 0))
    assert c.held() is None
    (tmp_path / "state" / "state.json").write_text(json.dumps({"active": None}))
    assert c.active_colour() is None


def test_metrics_for_the_textfile_collector(tmp_path: Path) -> None:
    c = _controller(tmp_path)
    stab = AS.Stabiliser(window=300)
    decision = AS.decide(0, 3, [0.95] * 3, [0.3] * 3, TARGETS, 1, 3, stab)
    c.export("green", 3, decision, [0.95] * 3, [0.3] * 3)
    prom = (tmp_path / "a.prom").read_text()
    assert 'zapora_autoscaler_replicas_desired{colour="green"} 3' in prom
    assert 'zapora_autoscaler_replicas_current{colour="green"} 3' in prom
    assert 'zapora_autoscaler_at_max{colour="green"} 1' in prom
    assert 'zapora_autoscaler_utilisation_ratio{colour="green",resource="cpu"} 0.95' in prom
    assert "zapora_autoscaler_replicas_max 3" in prom


def test_env_count_follows_the_scale(tmp_path: Path) -> None:
    c = _controller(tmp_path)
    (tmp_path / "green").mkdir()
    env = tmp_path / "green" / ".env"
    env.write_text("ZAPORA_COLOUR=green\nZAPORA_API_EXTRA_REPLICAS=0\nZAPORA_API_CPUS=0.5\n")
    c.set_env_count("green", 3)
    lines = env.read_text().splitlines()
    assert "ZAPORA_API_EXTRA_REPLICAS=2" in lines and "ZAPORA_API_CPUS=0.5" in lines
    assert sum(line.startswith("ZAPORA_API_EXTRA_REPLICAS=") for line in lines) == 1
