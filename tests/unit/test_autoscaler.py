"""The autoscaler's algorithm (roles/app/files/zapora_autoscaler.py: HPA v2's replica
calculation, tolerance, scale-down stabilisation, bounds), its reading of each replica's
cgroup (v1 and v2, in fake /proc and /sys/fs/cgroup trees) and its metrics file, without
Docker. The program against a real engine: tests/autoscaler_live/run.sh."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]


def _load() -> ModuleType:
    path = REPO / "roles" / "app" / "files" / "zapora_autoscaler.py"
    spec = importlib.util.spec_from_file_location("zapora_autoscaler", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["zapora_autoscaler"] = module
    spec.loader.exec_module(module)
    return module


A = _load()
POLICY = A.Policy(min_replicas=1, max_replicas=5)


def usages(cpu: list[float | None], memory: list[float | None] | None = None) -> list[object]:
    memory = memory if memory is not None else [0.05] * len(cpu)
    return [A.Usage(c, m) for c, m in zip(cpu, memory, strict=True)]


def test_within_the_tolerance_nothing_changes() -> None:
    # 0.75 / 0.70 = 1.071: within 10 %; 0.62 / 0.70 = 0.886: just outside, down.
    assert A.decide(POLICY, usages([0.75, 0.75]), A.History(), 0).desired == 2
    assert A.decide(POLICY, usages([0.66, 0.66]), A.History(), 0).desired == 2
    assert A.decide(POLICY, usages([0.62, 0.62]), A.History(), 0).recommendation == 2
    assert A.decide(POLICY, usages([0.70 * 1.11] * 2), A.History(), 0).desired == 3


def test_scales_up_at_once_by_the_usage_ratio() -> None:
    # HPA: desired = ceil(current * usage / target) = ceil(2 * 1.4 / 0.7) = 4.
    decision = A.decide(POLICY, usages([1.4, 1.4]), A.History(), 0)
    assert (decision.current, decision.desired, decision.reason) == (2, 4, "up")
    assert decision.per_metric["cpu"] == {"ratio": 2.0, "replicas": 4, "samples": 2}


def test_scales_down_only_after_the_stabilisation_window() -> None:
    history = A.History()
    # Busy at t=0 (recommendation 4 of 4 running), idle from t=15 on.
    assert A.decide(POLICY, usages([0.7] * 4), history, 0).desired == 4
    for t in range(15, 300, 15):
        decision = A.decide(POLICY, usages([0.1] * 4), history, t)
        assert decision.desired == 4, t
        assert decision.reason == "steady (limited by window)"
    # The busy recommendation is older than 300 s: down to the idle one, ceil(4 * 0.1/0.7).
    decision = A.decide(POLICY, usages([0.1] * 4), history, 301)
    assert (decision.desired, decision.reason) == (1, "down")


def test_scale_down_goes_to_the_highest_recommendation_in_the_window() -> None:
    history = A.History()
    A.decide(POLICY, usages([0.7] * 4), history, 0)  # 4
    A.decide(POLICY, usages([0.5] * 4), history, 200)  # ceil(4 * 0.714) = 3
    assert A.decide(POLICY, usages([0.1] * 4), history, 301).desired == 3
    assert A.decide(POLICY, usages([0.1] * 4), history, 501).desired == 1


def test_bounds() -> None:
    policy = A.Policy(min_replicas=2, max_replicas=3)
    high = A.decide(policy, usages([2.0, 2.0]), A.History(), 0)
    assert (high.recommendation, high.desired, high.reason) == (6, 3, "up (limited by max)")
    low = A.decide(policy, usages([0.05, 0.05, 0.05]), A.History(), 0)
    assert (low.desired, low.reason) == (2, "down (limited by min)")
    # Fewer than the minimum running (a replica died): back to the minimum at once.
    assert A.decide(policy, usages([0.5]), A.History(), 0).desired == 2
    # Nothing running: the minimum.
    assert A.decide(policy, [], A.History(), 0).desired == 2


def test_the_larger_of_the_two_metrics_wins() -> None:
    # CPU says 1 (0.1 / 0.7), memory says ceil(2 * 0.9 / 0.75) = 3.
    decision = A.decide(POLICY, usages([0.1, 0.1], [0.9, 0.9]), A.History(), 0)
    assert decision.per_metric["cpu"]["replicas"] == 1
    assert decision.per_metric["memory"]["replicas"] == 3
    assert decision.desired == 3
    # Memory alone within its tolerance, CPU high: CPU's.
    assert A.decide(POLICY, usages([1.05, 1.05], [0.75, 0.75]), A.History(), 0).desired == 3


def test_a_missing_sample_is_counted_the_conservative_way() -> None:
    # Up: the replica without a sample counts as idle: (1.4 + 0) / 2 / 0.7 = 1.0, no change.
    decision = A.decide(POLICY, usages([1.4, None]), A.History(), 0)
    assert decision.desired == 2
    # Up with a clear margin: (2.1 + 0) / 2 / 0.7 = 1.5 -> 3.
    assert A.decide(POLICY, usages([2.1, None]), A.History(), 0).desired == 3
    # Down: it counts as at the target: (0.1 + 0.7) / 2 / 0.7 = 0.571 -> ceil(2 * 0.571) = 2.
    assert A.decide(POLICY, usages([0.1, None, None]), A.History(), 0).desired == 3
    # No sample at all for CPU: no CPU recommendation; memory decides.
    decision = A.decide(POLICY, usages([None, None], [0.9, 0.9]), A.History(), 0)
    assert decision.per_metric["cpu"] == {"ratio": None, "replicas": 2, "samples": 0}
    assert decision.desired == 3


MIB = 1 << 20
LONG_ID = "d757c5b504e1a9300bba9a5b712871c697997192ca6bc2ba154d395adee12b14"


class FakeEngine:
    """The Docker API's inspect of running containers: pid and limits."""

    def __init__(self, containers: dict[str, tuple[int, int, int]]) -> None:
        self.containers = containers  # id -> (pid, NanoCpus, Memory)

    def inspect_container(self, container: str) -> dict[str, object]:
        if container not in self.containers:
            raise LookupError(f"404 No such container: {container}")
        pid, nano_cpus, memory = self.containers[container]
        return {"State": {"Pid": pid}, "HostConfig": {"NanoCpus": nano_cpus, "Memory": memory}}


class Tree:
    """A fake /proc and /sys/fs/cgroup: one container per pid, v1 or v2, with the files the
    autoscaler reads; `cpu_ns` advances a container's CPU time."""

    def __init__(self, root: Path, version: int, v1_layout: str = "joined") -> None:
        self.proc, self.cgroup = root / "proc", root / "sys" / "fs" / "cgroup"
        self.version, self.v1_layout = version, v1_layout
        self.dirs: dict[int, dict[str, Path]] = {}

    def add(self, pid: int, path: str, memory: int, inactive_file: int) -> None:
        (self.proc / str(pid)).mkdir(parents=True)
        if self.version == 2:
            lines = [f"0::{path}"]
            dirs = {"cpu": self.cgroup, "memory": self.cgroup}
        elif self.v1_layout == "joined":
            # Debian's usual mounts: one hierarchy "cpu,cpuacct" (and "cpuacct" a symlink).
            lines = ["12:memory:" + path, "4:cpu,cpuacct:" + path, "0::" + path]
            dirs = {"cpu": self.cgroup / "cpu,cpuacct", "memory": self.cgroup / "memory"}
        else:
            # Each controller mounted alone, as on this project's CI machines.
            lines = ["4:memory:" + path, "2:cpuacct:" + path, "1:cpu:" + path, "0::" + path]
            dirs = {"cpu": self.cgroup / "cpuacct", "memory": self.cgroup / "memory"}
            (self.cgroup / "cpu,cpuacct").mkdir(parents=True, exist_ok=True)  # empty, unmounted
        (self.proc / str(pid) / "cgroup").write_text("\n".join(lines) + "\n")
        dirs = {k: d / path.lstrip("/") for k, d in dirs.items()}
        for d in dirs.values():
            d.mkdir(parents=True, exist_ok=True)
        self.dirs[pid] = dirs
        self.cpu_ns(pid, 5_000_000_000)
        if self.version == 1:
            (dirs["memory"] / "memory.usage_in_bytes").write_text(f"{memory}\n")
            stat = f"cache 1\ninactive_file 7\ntotal_cache 1\ntotal_inactive_file {inactive_file}\n"
        else:
            (dirs["memory"] / "memory.current").write_text(f"{memory}\n")
            stat = f"anon 1\nfile 2\nactive_file 3\ninactive_file {inactive_file}\n"
        (dirs["memory"] / "memory.stat").write_text(stat)

    def cpu_ns(self, pid: int, value: int) -> None:
        if self.version == 1:
            (self.dirs[pid]["cpu"] / "cpuacct.usage").write_text(f"{value}\n")
        else:
            (self.dirs[pid]["cpu"] / "cpu.stat").write_text(
                f"usage_usec {value // 1000}\nuser_usec 1\nsystem_usec 1\nnr_periods 0\n"
            )

    def read_cpu_ns(self, pid: int) -> int:
        if self.version == 1:
            return int((self.dirs[pid]["cpu"] / "cpuacct.usage").read_text())
        stat = (self.dirs[pid]["cpu"] / "cpu.stat").read_text().split()
        return int(stat[stat.index("usage_usec") + 1]) * 1000


def host_on(tree: Tree, engine: FakeEngine, during_sleep: Callable[[], None] = lambda: None) -> Any:
    """A Host whose clock advances only while it sleeps, by the sample interval."""
    base = A.parse(["--min=1", "--max=4"])
    s = dataclasses.replace(base, proc_root=tree.proc, cgroup_root=tree.cgroup)
    clock = [1_000_000_000_000]

    def sleep(seconds: float) -> None:
        clock[0] += int(seconds * 1e9)
        during_sleep()

    return A.Host(s, engine, clock=lambda: clock[0], sleep=sleep)


@pytest.mark.parametrize(
    ("version", "layout"),
    [(1, "joined"), (1, "separate"), (2, "")],
    ids=["v1", "v1-separate", "v2"],
)
def test_usage_is_read_from_each_replicas_cgroup(
    tmp_path: Path, version: int, layout: str, capsys: pytest.CaptureFixture[str]
) -> None:
    tree = Tree(tmp_path, version, layout)
    # Two replicas, limits 0.2 CPU / 160 MiB and 1 CPU / 100 MiB.
    tree.add(101, f"/docker/{LONG_ID}", 100 * MIB, 20 * MIB)
    tree.add(202, "/system.slice/docker-c2.scope", 30 * MIB, 80 * MIB)
    engine = FakeEngine({"c1": (101, 200_000_000, 160 * MIB), "c2": (202, 10**9, 100 * MIB)})

    def busy() -> None:
        # Over the sample's 1 s: replica 1 used 0.1 s of CPU, replica 2 0.25 s.
        tree.cpu_ns(101, tree.read_cpu_ns(101) + 100_000_000)
        tree.cpu_ns(202, tree.read_cpu_ns(202) + 250_000_000)

    u1, u2 = host_on(tree, engine, busy).usages(["c1", "c2"])
    # 0.1 CPU of a 0.2 limit; (100 - 20) MiB of 160 MiB.
    assert (u1.cpu, u1.memory) == (pytest.approx(0.5), pytest.approx(0.5))
    # 0.25 CPU of 1; inactive page cache above usage counts as nothing in use.
    assert (u2.cpu, u2.memory) == (pytest.approx(0.25), 0.0)
    assert capsys.readouterr().out == ""


def test_a_replica_without_a_limit_has_no_share_of_it(tmp_path: Path) -> None:
    tree = Tree(tmp_path, 2)
    tree.add(101, "/docker/c1", 100 * MIB, 0)
    (usage,) = host_on(tree, FakeEngine({"c1": (101, 0, 0)})).usages(["c1"])
    assert usage == A.Usage(None, None)


def test_a_replica_that_went_away_has_no_sample(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tree = Tree(tmp_path, 1)
    tree.add(101, "/docker/c1", 100 * MIB, 20 * MIB)
    tree.add(202, "/docker/c2", 100 * MIB, 20 * MIB)
    tree.add(303, "/docker/c3", 100 * MIB, 20 * MIB)
    engine = FakeEngine(
        {
            "c1": (101, 200_000_000, 160 * MIB),
            "c2": (202, 200_000_000, 160 * MIB),  # its cgroup goes during the sample
            "c3": (0, 200_000_000, 160 * MIB),  # stopped: inspect says pid 0
            "c5": (505, 200_000_000, 160 * MIB),  # no such process any more
        }
    )

    def stop_c2() -> None:
        tree.cpu_ns(101, tree.read_cpu_ns(101) + 100_000_000)
        shutil.rmtree(tree.dirs[202]["cpu"])

    usages = host_on(tree, engine, stop_c2).usages(["c1", "c2", "c3", "c4", "c5"])
    assert usages[0] == A.Usage(pytest.approx(0.5), pytest.approx(0.5))
    assert usages[1:] == [A.Usage(None, None)] * 4
    missing = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(m["event"], m["container"]) for m in missing] == [
        ("sample_missing", "c3"),
        ("sample_missing", "c4"),
        ("sample_missing", "c5"),
        ("sample_missing", "c2"),
    ]
    assert "cpuacct.usage" in missing[3]["error"]


def test_no_replica_no_sample_interval(tmp_path: Path) -> None:
    slept: list[float] = []
    host = A.Host(A.parse(["--min=1", "--max=2"]), FakeEngine({}), sleep=slept.append)
    assert host.usages([]) == []
    assert slept == []


def test_limits_come_from_the_host_config() -> None:
    assert A.limits_of({"HostConfig": {"NanoCpus": 200_000_000, "Memory": 64 << 20}}) == (
        0.2,
        64 << 20,
    )
    assert A.limits_of({"HostConfig": {"CpuQuota": 50_000, "CpuPeriod": 100_000}}) == (0.5, None)


def test_slots_and_services() -> None:
    assert [A.slot_service(i) for i in (1, 2, 10)] == ["api", "api-2", "api-10"]
    assert [A.service_slot(s) for s in ("api", "api-3", "worker", "api-x")] == [1, 3, None, None]


def test_active_colour_and_the_deploy_marker(tmp_path: Path) -> None:
    assert A.active_colour(tmp_path) is None
    (tmp_path / "state.json").write_text(json.dumps({"active": "green", "colours": {}}))
    assert A.active_colour(tmp_path) == "green"
    marker = tmp_path / "deploy.running"
    assert not A.deploy_running(tmp_path, 1800, 1e10)
    marker.write_text("deploy")
    now = marker.stat().st_mtime
    assert A.deploy_running(tmp_path, 1800, now + 60)
    # Older than the lock's staleness: a dead deploy's leftover.
    assert not A.deploy_running(tmp_path, 1800, now + 1801)


def test_metrics_file(tmp_path: Path) -> None:
    A.write_metrics(tmp_path, [("blue", 3, 2, False)], 1234.5)
    text = (tmp_path / "zapora_autoscaler.prom").read_text()
    assert 'zapora_autoscaler_replicas_desired{colour="blue"} 3' in text
    assert 'zapora_autoscaler_replicas_current{colour="blue"} 2' in text
    assert 'zapora_autoscaler_replicas_at_max{colour="blue"} 0' in text
    assert "zapora_autoscaler_last_decision_timestamp_seconds 1234.500" in text
    assert not list(tmp_path.glob("*.tmp"))


class FakeHost:
    """Stands in for Docker, Compose and nftables in `step`: what it was asked to do."""

    def __init__(self, running: dict[int, float]) -> None:
        self.running = running
        self.calls: list[tuple[str, int]] = []

    def replicas(self, colour: str) -> dict[int, str]:
        return {slot: f"c{slot}" for slot in self.running}

    def usages(self, containers: list[str]) -> list[object]:
        return [A.Usage(self.running[int(c[1:])], 0.2) for c in containers]

    def start(self, colour: str, slot: int) -> bool:
        self.calls.append(("start", slot))
        return True

    def drain_and_stop(self, colour: str, slot: int) -> None:
        self.calls.append(("drain", slot))


def settings(tmp_path: Path, **policy: int) -> object:
    return A.parse(
        [
            f"--min={policy.get('min', 1)}",
            f"--max={policy.get('max', 4)}",
            f"--state-dir={tmp_path}",
            f"--textfile-dir={tmp_path}",
        ]
    )


def test_step_starts_the_lowest_free_slots_and_drains_the_highest(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "state.json").write_text(json.dumps({"active": "blue"}))
    host = FakeHost({1: 1.4, 3: 1.4})
    A.step(settings(tmp_path), host, A.History(), 0)
    assert host.calls == [("start", 2), ("start", 4)]
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    decision = next(line for line in lines if line["event"] == "decision")
    assert (decision["colour"], decision["current"], decision["desired"]) == ("blue", 2, 4)
    assert decision["usage"][0] == {"slot": 1, "cpu": 1.4, "memory": 0.2}
    assert (
        'zapora_autoscaler_replicas_at_max{colour="blue"} 1'
        in (tmp_path / "zapora_autoscaler.prom").read_text()
    )

    host = FakeHost({1: 0.05, 2: 0.05, 3: 0.05})
    A.step(settings(tmp_path), host, A.History(), 0)
    assert host.calls == [("drain", 3), ("drain", 2)]


def test_step_never_acts_during_a_deploy_or_without_an_active_colour(tmp_path: Path) -> None:
    host = FakeHost({1: 2.0})
    assert A.step(settings(tmp_path), host, A.History(), 0) is None
    (tmp_path / "state.json").write_text(json.dumps({"active": "blue"}))
    (tmp_path / "deploy.running").write_text("deploy")
    now = (tmp_path / "deploy.running").stat().st_mtime
    assert A.step(settings(tmp_path), host, A.History(), now) is None
    assert host.calls == []


def test_a_colour_switch_forgets_the_other_colours_recommendations(tmp_path: Path) -> None:
    (tmp_path / "state.json").write_text(json.dumps({"active": "blue"}))
    history = A.History()
    A.step(settings(tmp_path), FakeHost({1: 1.4, 2: 1.4}), history, 0)
    assert history.colour == "blue" and history.entries == [(0, 4)]
    (tmp_path / "state.json").write_text(json.dumps({"active": "green"}))
    host = FakeHost({1: 0.05, 2: 0.05})
    A.step(settings(tmp_path), host, history, 15)
    assert history.colour == "green" and history.entries == [(15, 1)]
    assert host.calls == [("drain", 2)]


def test_step_never_starts_a_colour_that_no_replica_runs(tmp_path: Path) -> None:
    """A host removal, a deploy or an operator stopped every replica: left stopped."""
    (tmp_path / "state.json").write_text(json.dumps({"active": "blue"}))
    host = FakeHost({})
    assert A.step(settings(tmp_path, min=2), host, A.History(), 0) is None
    assert host.calls == []
    assert not (tmp_path / "zapora_autoscaler.prom").exists()
