#!/usr/bin/python3
"""zapora-autoscaler: the API's replicas of the active colour on this app host follow load,
with the algorithm of Kubernetes' HorizontalPodAutoscaler v2 (docs/operator-guide.md,
"Autoscaling").

Every --interval seconds: read the active colour from the deploy's state.json, skip while a
deploy or rollback runs (its marker file on this host) or while no replica of the colour
runs (a deploy, a host removal or an operator stopped it: never started from zero), read
each running api replica's CPU use (a share of its CPU limit, from two reads of its cgroup's
CPU time a second apart) and memory use without inactive page cache (a share of its memory
limit) from the replica's own cgroup, v1 or v2, found through /proc/<its pid>/cgroup, as the
kubelet (cAdvisor) measures a container; the limits come from the Docker Engine API
(HostConfig). Docker's stats API is not read: some engines answer it with nothing while the
kernel's counters are right. Then compute the desired count (`decide`, a pure function), and
start or drain-and-stop replicas one slot at a time. Every decision is one JSON line on
stdout (the journal); node_exporter's textfile collector gets zapora_autoscaler_* metrics.

Replica slot i of a colour is Compose service `api` (i = 1) or `api-<i>`, publishing the
colour's API port + step * (i - 1). Up starts the lowest free slot and counts it once its
/health/ready answers 200 over TLS; down drains the highest slot: new connections to its
port are refused by an nftables rule (nginx then tries the next server without having sent
the request), the edge closes its kept-alive connections within the drain (its upstream
keepalive_time/keepalive_timeout are shorter), then SIGTERM (`docker compose stop`: gunicorn
finishes the requests in flight).

Only Debian 13's python3 and python3-docker are needed.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# ---------------------------------------------------------------------------------------
# The algorithm (pure): HPA v2's replica calculator and its scale-down stabilisation.


@dataclass(frozen=True)
class Policy:
    min_replicas: int
    max_replicas: int
    cpu_target: float = 0.70
    memory_target: float = 0.75
    tolerance: float = 0.1
    scale_down_window: float = 300.0


@dataclass(frozen=True)
class Usage:
    """One replica's use as a share of its limits; None when its sample is missing."""

    cpu: float | None
    memory: float | None


@dataclass(frozen=True)
class Decision:
    current: int
    desired: int
    recommendation: int
    per_metric: dict[str, dict[str, Any]]
    reason: str


@dataclass
class History:
    """Raw recommendations (time, replicas) within the scale-down window, of one colour."""

    entries: list[tuple[float, int]] = field(default_factory=list)
    colour: str | None = None


def _ceil(value: float) -> int:
    """ceil() that does not turn 2 * 1.5000000000000002 into 4."""
    return math.ceil(round(value, 9))


def _metric_recommendation(
    current: int, values: Sequence[float | None], target: float, tolerance: float
) -> tuple[int, float | None]:
    """HPA's calculation for one resource metric over `current` replicas: the usage ratio of
    the replicas that have a sample; then, when some have none, the ratio again with them
    counted at 0 for a scale-up and at the target for a scale-down (the conservative way);
    no change within the tolerance or when the missing ones flip the direction."""
    known = [v for v in values if v is not None]
    if not known or current <= 0:
        return current, None
    ratio = (sum(known) / len(known)) / target
    if abs(ratio - 1.0) <= tolerance:
        return current, ratio
    missing = len(values) - len(known)
    if missing == 0:
        return _ceil(current * ratio), ratio
    fill = 0.0 if ratio > 1.0 else target
    filled = (sum(known) + fill * missing) / len(values) / target
    if abs(filled - 1.0) <= tolerance or (ratio > 1.0) != (filled > 1.0):
        return current, filled
    return _ceil(len(values) * filled), filled


def decide(policy: Policy, usages: Sequence[Usage], history: History, now: float) -> Decision:
    """Desired replicas for the replicas measured in `usages` (one entry per running
    replica). Scale-up at once; scale-down only to the highest recommendation of the last
    `scale_down_window` seconds; always within [min, max]. `history` is updated."""
    current = len(usages)
    per_metric: dict[str, dict[str, Any]] = {}
    for name, target in (("cpu", policy.cpu_target), ("memory", policy.memory_target)):
        values = [getattr(u, name) for u in usages]
        replicas, ratio = _metric_recommendation(current, values, target, policy.tolerance)
        per_metric[name] = {
            "ratio": None if ratio is None else round(ratio, 4),
            "replicas": replicas,
            "samples": sum(v is not None for v in values),
        }
    # The larger of the two metrics' recommendations, as HPA takes the maximum. With no
    # replica running at all there is nothing to measure: back to the minimum.
    recommendation = (
        max(m["replicas"] for m in per_metric.values()) if current else policy.min_replicas
    )
    history.entries = [(t, r) for t, r in history.entries if t > now - policy.scale_down_window] + [
        (now, recommendation)
    ]
    limited_by = ""
    if recommendation >= current:
        desired = recommendation
    else:
        # Down only as far as the highest recommendation within the window.
        desired = min(current, max(r for _, r in history.entries))
        if desired > recommendation:
            limited_by = "window"
    clamped = max(policy.min_replicas, min(policy.max_replicas, desired))
    if clamped != desired:
        limited_by = "max" if clamped == policy.max_replicas else "min"
    reason = "up" if clamped > current else "down" if clamped < current else "steady"
    if limited_by:
        reason += f" (limited by {limited_by})"
    return Decision(current, clamped, recommendation, per_metric, reason)


# ---------------------------------------------------------------------------------------
# Reading a replica's cgroup, as the kubelet (cAdvisor) measures a container. Docker's stats
# API is not used: some engines answer it with nothing (dockerd logs "no metrics received",
# `docker stats` shows 0 %) while the kernel's counters are right.


@dataclass(frozen=True)
class CgroupFiles:
    """One container's counters: cumulative CPU time, memory in use, and memory.stat with
    the inactive page cache under `inactive_key`."""

    version: int
    cpu_usage: Path
    memory_usage: Path
    memory_stat: Path
    inactive_key: str


def cgroup_files(pid: int, proc_root: Path, cgroup_root: Path) -> CgroupFiles:
    """The cgroup files of the process `pid` (a container's init), from /proc/<pid>/cgroup:
    cgroup v1 when it names the cpuacct and memory controllers (a hybrid host also lists
    an empty v2 hierarchy as "0::"), each under the directory its hierarchy is mounted on,
    named by its controller list ("cpu,cpuacct", or "cpuacct" where mounted alone); else
    the v2 unified hierarchy."""
    if pid <= 0:
        raise FileNotFoundError(f"no process (pid {pid}): the container is not running")
    v1: dict[str, Path] = {}
    unified: Path | None = None
    for line in (proc_root / str(pid) / "cgroup").read_text().splitlines():
        _, hierarchy, path = line.split(":", 2)
        # v2's line "0::/path" has no controller list: its directory is the root's own.
        directory = cgroup_root / hierarchy / path.lstrip("/")
        if hierarchy:
            v1.update(dict.fromkeys(hierarchy.split(","), directory))
        else:
            unified = directory
    if "cpuacct" in v1 and "memory" in v1:
        cpu, memory = v1["cpuacct"], v1["memory"]
        return CgroupFiles(
            1,
            cpu / "cpuacct.usage",
            memory / "memory.usage_in_bytes",
            memory / "memory.stat",
            "total_inactive_file",
        )
    if unified is None:
        raise FileNotFoundError(f"{proc_root}/{pid}/cgroup names no cpuacct/memory nor v2 path")
    return CgroupFiles(
        2,
        unified / "cpu.stat",
        unified / "memory.current",
        unified / "memory.stat",
        "inactive_file",
    )


def _stat_value(path: Path, key: str) -> int:
    for line in path.read_text().splitlines():
        name, _, value = line.partition(" ")
        if name == key:
            return int(value)
    raise KeyError(f"{key} not in {path}")


def cpu_usage_ns(files: CgroupFiles) -> int:
    """The cgroup's CPU time so far, in nanoseconds (v1 cpuacct.usage; v2 cpu.stat's
    usage_usec)."""
    if files.version == 1:
        return int(files.cpu_usage.read_text())
    return _stat_value(files.cpu_usage, "usage_usec") * 1000


def working_set_bytes(files: CgroupFiles) -> int:
    """Memory in use without the inactive page cache the kernel reclaims first, as the
    kubelet's working set and `docker stats` count it."""
    usage = int(files.memory_usage.read_text())
    return max(usage - _stat_value(files.memory_stat, files.inactive_key), 0)


def cpu_share(used_ns: int, wall_ns: int, limit_cpus: float | None) -> float | None:
    """CPU time used over a stretch of wall time, as a share of the CPU limit."""
    if not limit_cpus or wall_ns <= 0 or used_ns < 0:
        return None
    return float(used_ns / wall_ns / limit_cpus)


def memory_share(working_set: int, limit_bytes: int | None) -> float | None:
    """The working set over the memory limit."""
    if not limit_bytes:
        return None
    return float(working_set / limit_bytes)


def limits_of(inspect: dict[str, Any]) -> tuple[float | None, int | None]:
    """The container's CPU limit (cores) and memory limit (bytes) from its HostConfig."""
    host = inspect.get("HostConfig") or {}
    cpus: float | None = None
    if host.get("NanoCpus"):
        cpus = host["NanoCpus"] / 1e9
    elif host.get("CpuQuota") and host.get("CpuPeriod"):
        cpus = host["CpuQuota"] / host["CpuPeriod"]
    return cpus, host.get("Memory") or None


# ---------------------------------------------------------------------------------------
# This host: state, replicas, actions.


@dataclass(frozen=True)
class Settings:
    policy: Policy
    interval: float
    state_dir: Path
    base_dir: Path
    textfile_dir: Path
    port_step: int
    api_ports: dict[str, int]
    ca_file: Path
    drain_seconds: float
    ready_timeout: float
    marker_stale_seconds: float
    compose: tuple[str, ...] = ("docker", "compose")
    nft: tuple[str, ...] = ("nft",)
    nft_table: str = "zapora_autoscaler"
    # Where the replicas' processes and cgroups are seen: this host's (an app host in the
    # lab shares the machine's cgroup hierarchy, --cgroupns=host).
    proc_root: Path = Path("/proc")
    cgroup_root: Path = Path("/sys/fs/cgroup")
    # The two CPU samples of one decision are this far apart.
    cpu_sample_seconds: float = 1.0


def slot_service(slot: int) -> str:
    return "api" if slot == 1 else f"api-{slot}"


def service_slot(service: str) -> int | None:
    if service == "api":
        return 1
    if service.startswith("api-") and service[4:].isdigit():
        return int(service[4:])
    return None


def active_colour(state_dir: Path) -> str | None:
    try:
        state = json.loads((state_dir / "state.json").read_text())
    except (OSError, ValueError):
        return None
    colour = state.get("active")
    return colour if colour in ("blue", "green") else None


def deploy_running(state_dir: Path, stale_seconds: float, now: float) -> bool:
    """A deploy or rollback writes this marker on every app host for its duration; one older
    than the deploy lock's staleness is a leftover of a dead run and is ignored."""
    try:
        age = now - (state_dir / "deploy.running").stat().st_mtime
    except OSError:
        return False
    return age < stale_seconds


def log(event: dict[str, Any]) -> None:
    print(json.dumps({"at": round(time.time(), 3), **event}, sort_keys=True), flush=True)


class Host:
    """The Docker engine, the cgroups, Compose and nftables of this host."""

    def __init__(
        self,
        settings: Settings,
        client: Any,
        clock: Callable[[], int] = time.monotonic_ns,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.s = settings
        self.api = client
        self.clock = clock
        self.sleep = sleep

    def replicas(self, colour: str) -> dict[int, str]:
        """Running api replicas of the colour: slot -> container id."""
        found: dict[int, str] = {}
        for c in self.api.containers(
            filters={"label": f"com.docker.compose.project=zapora-{colour}", "status": "running"}
        ):
            slot = service_slot((c.get("Labels") or {}).get("com.docker.compose.service", ""))
            if slot is not None and slot <= self.s.policy.max_replicas:
                found[slot] = c["Id"]
        return found

    def usages(self, containers: Sequence[str]) -> list[Usage]:
        """Each container's use of its limits: its cgroup's CPU time read for all of them,
        once more `cpu_sample_seconds` later, and its working set at the second read."""
        first: dict[str, tuple[float | None, int | None, CgroupFiles, int, int]] = {}
        for container in containers:
            try:
                inspect = self.api.inspect_container(container)
                cpus, memory = limits_of(inspect)
                files = cgroup_files(inspect["State"]["Pid"], self.s.proc_root, self.s.cgroup_root)
                first[container] = (cpus, memory, files, self.clock(), cpu_usage_ns(files))
            except Exception as error:  # noqa: BLE001 - a replica that went away: no sample
                self._missing(container, error)
        if first:
            self.sleep(self.s.cpu_sample_seconds)
        found: list[Usage] = []
        for container in containers:
            if container not in first:
                found.append(Usage(None, None))
                continue
            cpus, memory, files, then, used = first[container]
            try:
                now, used_now = self.clock(), cpu_usage_ns(files)
                working_set = working_set_bytes(files)
            except (OSError, ValueError, KeyError) as error:
                self._missing(container, error)
                found.append(Usage(None, None))
                continue
            cpu = cpu_share(used_now - used, now - then, cpus)
            found.append(Usage(cpu, memory_share(working_set, memory)))
        return found

    @staticmethod
    def _missing(container: str, error: Exception) -> None:
        log({"event": "sample_missing", "container": container[:12], "error": str(error)})

    def port(self, colour: str, slot: int) -> int:
        return self.s.api_ports[colour] + self.s.port_step * (slot - 1)

    def _compose(self, colour: str, *args: str) -> None:
        directory = self.s.base_dir / colour
        # The command and its arguments come from this program's settings, not from input.
        subprocess.run(  # noqa: S603
            [*self.s.compose, "--project-directory", str(directory), *args],
            check=True,
            capture_output=True,
            text=True,
            timeout=120,
        )

    def ready(self, colour: str, slot: int) -> bool:
        context = ssl.create_default_context(cafile=str(self.s.ca_file))
        url = f"https://127.0.0.1:{self.port(colour, slot)}/health/ready"
        deadline = time.monotonic() + self.s.ready_timeout
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(url, context=context, timeout=5) as answer:
                    if answer.status == 200:
                        return True
            except (OSError, urllib.error.URLError):
                pass
            time.sleep(1)
        return False

    def start(self, colour: str, slot: int) -> bool:
        self._compose(colour, "up", "--detach", "--no-deps", slot_service(slot))
        if self.ready(colour, slot):
            return True
        self._compose(colour, "stop", slot_service(slot))
        return False

    def _nft(self, script: str) -> None:
        subprocess.run(  # noqa: S603 - nft with a script built from integers
            [*self.s.nft, "-f", "-"], input=script, check=True, text=True, timeout=30
        )

    def refuse_new_connections(self, port: int) -> None:
        """New TCP connections to the published port are answered with a reset (nginx:
        connect refused, the next server, nothing sent); established ones go on. The port
        is matched on the connection's original destination, before Docker's DNAT."""
        table = self.s.nft_table
        # A connection's first packet (SYN alone), not "ct state new": conntrack takes up a
        # connection it had not tracked (established before conntrack ran) as new again.
        rule = f"tcp flags syn / fin,syn,rst,ack ct original proto-dst {port} reject with tcp reset"
        self._nft(
            f"table inet {table} {{\n"
            f"  chain forward {{ type filter hook forward priority -10; policy accept; }}\n"
            f"  chain output {{ type filter hook output priority -10; policy accept; }}\n"
            f"}}\n"
            f'add rule inet {table} forward meta l4proto tcp {rule} comment "drain {port}"\n'
            f'add rule inet {table} output meta l4proto tcp {rule} comment "drain {port}"\n'
        )

    def accept_again(self) -> None:
        self._nft(f"table inet {self.s.nft_table}\ndelete table inet {self.s.nft_table}\n")

    def drain_and_stop(self, colour: str, slot: int) -> None:
        self.refuse_new_connections(self.port(colour, slot))
        try:
            time.sleep(self.s.drain_seconds)
            self._compose(colour, "stop", slot_service(slot))
        finally:
            self.accept_again()


def write_metrics(
    textfile_dir: Path, rows: Iterable[tuple[str, int, int, bool]], decided_at: float
) -> None:
    """zapora_autoscaler_* for node_exporter's textfile collector, written by rename."""
    lines = [
        "# HELP zapora_autoscaler_replicas_desired Replicas the autoscaler wants for the colour.",
        "# TYPE zapora_autoscaler_replicas_desired gauge",
        "# HELP zapora_autoscaler_replicas_current Running api replicas of the colour.",
        "# TYPE zapora_autoscaler_replicas_current gauge",
        "# HELP zapora_autoscaler_replicas_at_max 1 when the colour runs its most replicas.",
        "# TYPE zapora_autoscaler_replicas_at_max gauge",
        "# HELP zapora_autoscaler_last_decision_timestamp_seconds Time of the last decision.",
        "# TYPE zapora_autoscaler_last_decision_timestamp_seconds gauge",
        f"zapora_autoscaler_last_decision_timestamp_seconds {decided_at:.3f}",
    ]
    for colour, desired, current, at_max in rows:
        lines += [
            f'zapora_autoscaler_replicas_desired{{colour="{colour}"}} {desired}',
            f'zapora_autoscaler_replicas_current{{colour="{colour}"}} {current}',
            f'zapora_autoscaler_replicas_at_max{{colour="{colour}"}} {int(at_max)}',
        ]
    path = textfile_dir / "zapora_autoscaler.prom"
    temporary = path.with_suffix(".prom.tmp")
    temporary.write_text("\n".join(lines) + "\n")
    os.replace(temporary, path)


def step(settings: Settings, host: Host, history: History, now: float) -> Decision | None:
    """One decision for the active colour, and its action."""
    colour = active_colour(settings.state_dir)
    if colour is None:
        log({"event": "skip", "reason": "no active colour in state.json"})
        return None
    if deploy_running(settings.state_dir, settings.marker_stale_seconds, now):
        log({"event": "skip", "reason": "deploy running", "colour": colour})
        return None
    if history.colour != colour:
        # A switch: the other colour's recommendations say nothing about this one.
        history.entries, history.colour = [], colour
    running = host.replicas(colour)
    if not running:
        # Nothing to measure, and nothing this program stopped: a deploy, a host removal
        # (app-host-remove.yml) or an operator stopped the colour here, and Docker's restart
        # policy brings back a replica that crashed. Starting it again would undo them.
        log({"event": "skip", "reason": "no replica of the active colour runs", "colour": colour})
        return None
    usages = host.usages([running[slot] for slot in sorted(running)])
    decision = decide(settings.policy, usages, history, now)
    log(
        {
            "event": "decision",
            "colour": colour,
            "current": decision.current,
            "desired": decision.desired,
            "recommendation": decision.recommendation,
            "reason": decision.reason,
            "metrics": decision.per_metric,
            "usage": [
                {"slot": s, "cpu": u.cpu, "memory": u.memory}
                for s, u in zip(sorted(running), usages, strict=True)
            ],
            "targets": {"cpu": settings.policy.cpu_target, "memory": settings.policy.memory_target},
            "bounds": [settings.policy.min_replicas, settings.policy.max_replicas],
        }
    )
    current = decision.current
    if decision.desired > current:
        for slot in [s for s in range(1, settings.policy.max_replicas + 1) if s not in running][
            : decision.desired - current
        ]:
            ok = host.start(colour, slot)
            log({"event": "started" if ok else "start_failed", "colour": colour, "slot": slot})
            current += int(ok)
    elif decision.desired < current:
        for slot in sorted(running, reverse=True)[: current - decision.desired]:
            log(
                {
                    "event": "draining",
                    "colour": colour,
                    "slot": slot,
                    "seconds": settings.drain_seconds,
                }
            )
            host.drain_and_stop(colour, slot)
            log({"event": "stopped", "colour": colour, "slot": slot})
            current -= 1
    write_metrics(
        settings.textfile_dir,
        [(colour, decision.desired, current, current >= settings.policy.max_replicas)],
        now,
    )
    return decision


def parse(argv: Sequence[str]) -> Settings:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--min", type=int, required=True)
    p.add_argument("--max", type=int, required=True)
    p.add_argument("--cpu-target", type=float, default=0.70)
    p.add_argument("--memory-target", type=float, default=0.75)
    p.add_argument("--tolerance", type=float, default=0.1)
    p.add_argument("--scale-down-window", type=float, default=300)
    p.add_argument("--interval", type=float, default=15)
    p.add_argument("--state-dir", type=Path, default=Path("/var/lib/zapora/rollout"))
    p.add_argument("--base-dir", type=Path, default=Path("/opt/zapora"))
    p.add_argument("--textfile-dir", type=Path, default=Path("/var/lib/prometheus/node-exporter"))
    p.add_argument("--port-step", type=int, default=100)
    p.add_argument("--blue-port", type=int, default=8001)
    p.add_argument("--green-port", type=int, default=8002)
    p.add_argument("--ca-file", type=Path, default=Path("/etc/zapora/api-tls/ca.crt"))
    p.add_argument("--drain-seconds", type=float, default=30)
    p.add_argument("--ready-timeout", type=float, default=120)
    p.add_argument("--marker-stale-seconds", type=float, default=1800)
    p.add_argument("--compose", default="docker compose", help="the Compose command")
    # The live test checks its drain rules with "nft -c" (parsed and checked by the kernel,
    # not applied): it runs on a shared machine's network namespace.
    p.add_argument("--nft", default="nft", help="the nft command")
    a = p.parse_args(argv)
    if not 1 <= a.min <= a.max:
        p.error("--min and --max must satisfy 1 <= min <= max")
    return Settings(
        policy=Policy(
            a.min, a.max, a.cpu_target, a.memory_target, a.tolerance, a.scale_down_window
        ),
        interval=a.interval,
        state_dir=a.state_dir,
        base_dir=a.base_dir,
        textfile_dir=a.textfile_dir,
        port_step=a.port_step,
        api_ports={"blue": a.blue_port, "green": a.green_port},
        ca_file=a.ca_file,
        drain_seconds=a.drain_seconds,
        ready_timeout=a.ready_timeout,
        marker_stale_seconds=a.marker_stale_seconds,
        compose=tuple(a.compose.split()),
        nft=tuple(a.nft.split()),
    )


def main(argv: Sequence[str] | None = None, client_factory: Callable[[], Any] | None = None) -> int:
    settings = parse(sys.argv[1:] if argv is None else argv)
    if client_factory is None:
        import docker  # type: ignore[import-untyped]  # python3-docker (Debian)

        def client_factory() -> Any:
            return docker.APIClient(base_url="unix:///var/run/docker.sock", timeout=30)

    host = Host(settings, client_factory())
    history = History()
    stopping = False

    def stop(_signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    log(
        {
            "event": "start",
            "min": settings.policy.min_replicas,
            "max": settings.policy.max_replicas,
            "interval": settings.interval,
        }
    )
    while not stopping:
        began = time.monotonic()
        try:
            step(settings, host, history, time.time())
        except Exception as error:  # noqa: BLE001 - one failed round must not end the service
            log({"event": "error", "error": f"{type(error).__name__}: {error}"})
        while not stopping and time.monotonic() - began < settings.interval:
            time.sleep(0.5)
    return 0


if __name__ == "__main__":
    sys.exit(main())
