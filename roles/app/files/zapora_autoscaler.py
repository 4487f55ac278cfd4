#!/usr/bin/python3
# Installed by the Zapora app role (roles/app/files/zapora_autoscaler.py); docs/scaling.md.
"""zapora-autoscaler: keeps the API replicas of this host's active colour between
app_replicas_min and app_replicas_max, the way Kubernetes' HorizontalPodAutoscaler does.

Every interval it reads each running replica's CPU and memory use from the Docker
Engine API (the replica's cgroup counters, against the limits Compose gave it), then

    desired = ceil(current x average utilisation / target)     per metric, the larger wins

with nothing done while |utilisation / target - 1| <= tolerance; scale-up at once,
scale-down only to the highest count recommended during the stabilisation window;
clamped to [min, max]. It never scales a colour that is not the active one, nor while a
deploy or rollback holds the lock. A replica leaves the edge's rotation before it stops:
new connections to its port are refused (nftables, table inet zapora_autoscaler), which
the edge retries on another replica for every method since nothing was sent; requests in
flight and open connections finish during the drain, then the container gets SIGTERM
(gunicorn drains again for its graceful timeout) and is removed.

Every decision is one JSON line on stdout (the journal) with its inputs; desired,
current and at-max go to node exporter's textfile collector.

Standard library only: it runs with the host's python3.
"""

from __future__ import annotations

import argparse
import http.client
import json
import math
import os
import socket
import subprocess
import sys
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DOCKER_SOCKET = "/var/run/docker.sock"
NFT_TABLE = "zapora_autoscaler"
API_SERVICES = ("api", "api-extra")


# --- the algorithm (pure; tests/unit/test_autoscaler.py) ----------------------------------


@dataclass(frozen=True)
class Targets:
    cpu: float = 0.70
    memory: float = 0.75
    tolerance: float = 0.10


@dataclass(frozen=True)
class Proposal:
    """What one metric asks for: its average utilisation, ratio to target, replicas."""

    metric: str
    utilisation: float
    ratio: float
    replicas: int


def propose(current: int, metric: str, utilisations: list[float], target: float,
            tolerance: float) -> Proposal | None:
    """HPA's replica calculation for one metric; None without samples."""
    if not utilisations or current < 1:
        return None
    average = sum(utilisations) / len(utilisations)
    ratio = average / target
    if abs(ratio - 1.0) <= tolerance:
        replicas = current
    else:
        # The epsilon keeps 2 x 1.0000000001 from becoming 3 through float noise.
        replicas = max(1, math.ceil(current * ratio - 1e-9))
    return Proposal(metric, round(average, 4), round(ratio, 4), replicas)


def recommend(current: int, cpu: list[float], memory: list[float], targets: Targets) -> \
        tuple[int, list[Proposal]]:
    """The unstabilised recommendation: the largest of the metrics' proposals (HPA v2
    with several metrics); the current count when no metric has samples."""
    proposals = [
        p for p in (
            propose(current, "cpu", cpu, targets.cpu, targets.tolerance),
            propose(current, "memory", memory, targets.memory, targets.tolerance),
        ) if p is not None
    ]
    if not proposals:
        return current, []
    return max(p.replicas for p in proposals), proposals


def clamp(replicas: int, minimum: int, maximum: int) -> int:
    return max(minimum, min(maximum, replicas))


@dataclass
class Stabiliser:
    """HPA's scale-down stabilisation: the count goes down only to the highest
    recommendation of the last `window` seconds; up at once (scale-up window 0)."""

    window: float
    history: list[tuple[float, int]] = field(default_factory=list)

    def desired(self, now: float, current: int, recommendation: int) -> int:
        self.history = [(t, r) for t, r in self.history if now - t < self.window]
        self.history.append((now, recommendation))
        if recommendation >= current:
            return recommendation
        return min(current, max(r for _, r in self.history))


def decide(now: float, current: int, cpu: list[float], memory: list[float], targets: Targets,
           minimum: int, maximum: int, stabiliser: Stabiliser) -> dict[str, Any]:
    """One decision with every input that led to it (what the journal line carries)."""
    raw, proposals = recommend(current, cpu, memory, targets)
    bounded = clamp(raw, minimum, maximum)
    desired = clamp(stabiliser.desired(now, current, bounded), minimum, maximum)
    if desired > current:
        action = "scale-up"
    elif desired < current:
        action = "scale-down"
    elif bounded < current:
        action = "hold-stabilising"
    else:
        action = "none"
    return {
        "current": current,
        "proposals": [p.__dict__ for p in proposals],
        "recommendation": raw,
        "bounded": bounded,
        "desired": desired,
        "action": action,
        "at_max": desired >= maximum,
    }


def cpu_utilisation(previous: dict[str, Any], current: dict[str, Any], limit_cpus: float) -> \
        float | None:
    """Share of the CPU limit used between two stats samples (wall-clock based)."""
    if limit_cpus <= 0:
        return None
    used = current["cpu_ns"] - previous["cpu_ns"]
    wall = current["at_ns"] - previous["at_ns"]
    if wall <= 0 or used < 0:
        return None
    return float(used / wall / limit_cpus)


def memory_utilisation(stats: dict[str, Any]) -> float | None:
    """Working set against the limit, as `docker stats` and the kubelet count it (usage
    minus inactive file cache)."""
    memory = stats.get("memory_stats") or {}
    limit = memory.get("limit") or 0
    usage = memory.get("usage")
    if not limit or usage is None:
        return None
    detail = memory.get("stats") or {}
    inactive = detail.get("inactive_file", detail.get("total_inactive_file", 0))
    return float(max(usage - inactive, 0) / limit)


# --- the host: Docker, nftables, state files ---------------------------------------------


class DockerAPI:
    """The Docker Engine API over its UNIX socket."""

    def __init__(self, path: str = DOCKER_SOCKET) -> None:
        self.path = path

    def request(self, method: str, url: str, timeout: float = 60) -> Any:
        conn = http.client.HTTPConnection("docker", timeout=timeout)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        sock.connect(self.path)
        conn.sock = sock
        try:
            conn.request(method, url)
            resp = conn.getresponse()
            body = resp.read()
        finally:
            conn.close()
        if resp.status >= 400 and resp.status != 304:
            raise RuntimeError(f"docker {method} {url}: {resp.status} {body[:200]!r}")
        return json.loads(body) if body else None

    def replicas(self, colour: str) -> list[dict[str, Any]]:
        filters = json.dumps({"label": [f"com.docker.compose.project=zapora-{colour}"]})
        found = self.request("GET", "/containers/json?filters=" + urllib.parse.quote(filters))
        out = []
        for c in found:
            labels = c.get("Labels") or {}
            if labels.get("com.docker.compose.service") not in API_SERVICES:
                continue
            ports = [p.get("PublicPort") for p in c.get("Ports") or []
                     if p.get("PrivatePort") == 8000 and p.get("PublicPort")]
            out.append({
                "id": c["Id"],
                "name": (c.get("Names") or ["?"])[0].lstrip("/"),
                "service": labels.get("com.docker.compose.service"),
                "number": int(labels.get("com.docker.compose.container-number", "0")),
                "port": ports[0] if ports else None,
            })
        return sorted(out, key=lambda r: (r["service"] != "api", r["number"]))

    def sample(self, container: str) -> dict[str, Any]:
        stats = self.request("GET", f"/containers/{container}/stats?stream=false&one-shot=true")
        info = self.request("GET", f"/containers/{container}/json")
        host = info.get("HostConfig") or {}
        cpus = (host.get("NanoCpus") or 0) / 1e9
        if not cpus and host.get("CpuQuota", 0) > 0 and host.get("CpuPeriod"):
            cpus = host["CpuQuota"] / host["CpuPeriod"]
        return {
            "cpu_ns": ((stats.get("cpu_stats") or {}).get("cpu_usage") or {}).get("total_usage", 0),
            "at_ns": time.time_ns(),
            "limit_cpus": cpus,
            "memory": memory_utilisation(stats),
        }

    def stop_and_remove(self, container: str, timeout: int) -> None:
        self.request("POST", f"/containers/{container}/stop?t={timeout}", timeout=timeout + 30)
        self.request("DELETE", f"/containers/{container}?v=true")


def log(event: str, **fields: Any) -> None:
    line = {"at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "event": event, **fields}
    print(json.dumps(line, sort_keys=True), flush=True)


def nft(script: str) -> bool:
    try:
        subprocess.run(["/usr/sbin/nft", "-f", "-"], input=script, text=True, check=True,
                       capture_output=True, timeout=30)
        return True
    except (OSError, subprocess.SubprocessError) as exc:
        log("drain-rule-failed", error=str(exc)[:300])
        return False


def nft_table() -> bool:
    """Our own table (the firewall role replaces only its own): new connections to a
    draining replica's published port are refused before Docker forwards them."""
    return nft(
        f"table inet {NFT_TABLE}\ndelete table inet {NFT_TABLE}\n"
        f"table inet {NFT_TABLE} {{\n"
        "  set draining { type inet_service; }\n"
        "  chain forward {\n"
        "    type filter hook forward priority filter - 20; policy accept;\n"
        "    ct state new ct status dnat meta l4proto tcp ct original proto-dst @draining"
        " reject with tcp reset\n"
        "  }\n"
        "}\n"
    )


@dataclass
class Config:
    state_dir: Path
    base_dir: Path
    minimum: int
    maximum: int
    targets: Targets
    interval: float
    scale_down_window: float
    drain_seconds: float
    stop_timeout: int
    ready_timeout: float
    lock_stale_seconds: float
    textfile: Path | None
    enabled: bool

    @classmethod
    def load(cls, path: Path) -> Config:
        raw = json.loads(path.read_text())
        return cls(
            state_dir=Path(raw["state_dir"]),
            base_dir=Path(raw["base_dir"]),
            minimum=int(raw["replicas_min"]),
            maximum=int(raw["replicas_max"]),
            targets=Targets(float(raw["cpu_target"]), float(raw["memory_target"]),
                            float(raw["tolerance"])),
            interval=float(raw["interval_seconds"]),
            scale_down_window=float(raw["scale_down_window_seconds"]),
            drain_seconds=float(raw["drain_seconds"]),
            stop_timeout=int(raw["stop_timeout_seconds"]),
            ready_timeout=float(raw["ready_timeout_seconds"]),
            lock_stale_seconds=float(raw["lock_stale_seconds"]),
            textfile=Path(raw["textfile"]) if raw.get("textfile") else None,
            enabled=bool(raw.get("enabled", True)),
        )


class Controller:
    def __init__(self, config: Config, docker: DockerAPI | None = None) -> None:
        self.config = config
        self.docker = docker or DockerAPI()
        self.stabilisers: dict[str, Stabiliser] = {}
        self.previous: dict[str, dict[str, Any]] = {}
        self.events = {"up": 0, "down": 0}
        self.drain_ready = False

    # state on the host
    def active_colour(self) -> str | None:
        try:
            state = json.loads((self.config.state_dir / "state.json").read_text())
        except (OSError, ValueError):
            return None
        colour = state.get("active")
        return colour if colour in ("blue", "green") else None

    def held(self) -> str | None:
        """Why scaling must wait: a deploy or rollback holds the lock (not stale)."""
        for name in ("autoscale.hold", "deploy.lock"):
            path = self.config.state_dir / name
            try:
                age = time.time() - path.stat().st_mtime
            except OSError:
                continue
            if age < self.config.lock_stale_seconds:
                return f"{name} present ({int(age)} s old)"
        return None

    def set_env_count(self, colour: str, replicas: int) -> None:
        """Keep the colour's .env in step, so `docker compose up` keeps this count."""
        env = self.config.base_dir / colour / ".env"
        try:
            lines = env.read_text().splitlines()
        except OSError:
            return
        key = "ZAPORA_API_EXTRA_REPLICAS="
        lines = [line for line in lines if not line.startswith(key)] + [f"{key}{replicas - 1}"]
        tmp = env.with_suffix(".tmp")
        tmp.write_text("\n".join(lines) + "\n")
        os.chmod(tmp, 0o600)
        tmp.replace(env)

    # one tick
    def measure(self, replicas: list[dict[str, Any]]) -> tuple[list[float], list[float], list[Any]]:
        cpu: list[float] = []
        memory: list[float] = []
        detail = []
        seen = set()
        for r in replicas:
            seen.add(r["id"])
            try:
                s = self.docker.sample(r["id"])
            except (OSError, RuntimeError, ValueError) as exc:
                detail.append({"replica": r["name"], "error": str(exc)[:200]})
                continue
            before = self.previous.get(r["id"])
            self.previous[r["id"]] = s
            c = cpu_utilisation(before, s, s["limit_cpus"]) if before else None
            if c is not None:
                cpu.append(c)
            if s["memory"] is not None:
                memory.append(s["memory"])
            detail.append({"replica": r["name"], "port": r["port"],
                           "cpu": None if c is None else round(c, 4),
                           "memory": None if s["memory"] is None else round(s["memory"], 4)})
        self.previous = {k: v for k, v in self.previous.items() if k in seen}
        return cpu, memory, detail

    def tick(self) -> None:
        colour = self.active_colour()
        if colour is None:
            log("decision", action="none", reason="no active colour on this host")
            return
        replicas = self.docker.replicas(colour)
        current = len(replicas)
        cpu, memory, detail = self.measure(replicas)
        held = self.held()
        stabiliser = self.stabilisers.setdefault(colour, Stabiliser(self.config.scale_down_window))
        decision = decide(time.time(), current, cpu, memory, self.config.targets,
                          self.config.minimum, self.config.maximum, stabiliser)
        decision.update(colour=colour, replicas=detail,
                        targets=self.config.targets.__dict__,
                        bounds=[self.config.minimum, self.config.maximum])
        if current == 0:
            decision.update(action="none", desired=0, reason="the active colour runs no replica")
        elif held:
            decision.update(action="held", reason=held)
        elif not self.config.enabled:
            decision.update(action="disabled", reason="app_autoscale_enabled is false")
        elif len(cpu) < current and decision["action"] == "scale-down":
            # A replica without a CPU sample yet (just started) would drag the average down.
            decision.update(action="hold-warming", reason="not every replica has a CPU sample")
        log("decision", **decision)
        self.export(colour, current, decision, cpu, memory)
        if decision["action"] == "scale-up":
            self.scale_up(colour, replicas, decision["desired"])
        elif decision["action"] == "scale-down":
            self.scale_down(colour, replicas, decision["desired"])

    def scale_up(self, colour: str, replicas: list[dict[str, Any]], desired: int) -> None:
        started = time.monotonic()
        project = self.config.base_dir / colour
        self.set_env_count(colour, desired)
        result = subprocess.run(  # noqa: S603 - fixed argv, no shell
            ["/usr/bin/docker", "compose", "up", "--detach", "--no-recreate", "--no-deps",
             "--scale", f"api-extra={desired - 1}", "api-extra"],
            cwd=project, capture_output=True, text=True, timeout=300, check=False)
        if result.returncode != 0:
            log("scale-up-failed", colour=colour, desired=desired, error=result.stderr[-500:])
            return
        known = {r["id"] for r in replicas}
        new = [r for r in self.docker.replicas(colour) if r["id"] not in known]
        ready = [self.wait_ready(r) for r in new]
        self.events["up"] += 1
        log("scaled-up", colour=colour, before=len(replicas), after=len(replicas) + len(new),
            new=[r["name"] for r in new], ready=ready,
            seconds=round(time.monotonic() - started, 2))

    def wait_ready(self, replica: dict[str, Any]) -> bool:
        deadline = time.monotonic() + self.config.ready_timeout
        while time.monotonic() < deadline:
            try:
                conn = http.client.HTTPConnection("127.0.0.1", replica["port"], timeout=5)
                conn.request("GET", "/health/ready")
                status = conn.getresponse().status
                conn.close()
                if status == 200:
                    return True
            except (OSError, http.client.HTTPException, TypeError):
                pass
            time.sleep(1)
        return False

    def scale_down(self, colour: str, replicas: list[dict[str, Any]], desired: int) -> None:
        started = time.monotonic()
        # Replica 1 (service api) never goes: the newest extra replicas go first.
        extras = sorted((r for r in replicas if r["service"] == "api-extra"),
                        key=lambda r: r["number"], reverse=True)
        leaving = extras[: max(len(replicas) - desired, 0)]
        if not leaving:
            return
        ports = ", ".join(str(r["port"]) for r in leaving if r["port"])
        if ports and not self.drain_ready:
            self.drain_ready = nft_table()
        drained = bool(ports) and self.drain_ready and nft(
            f"add element inet {NFT_TABLE} draining {{ {ports} }}\n")
        log("draining", colour=colour, replicas=[r["name"] for r in leaving], ports=ports,
            refused_at_port=drained, seconds=self.config.drain_seconds)
        time.sleep(self.config.drain_seconds)
        for r in leaving:
            try:
                self.docker.stop_and_remove(r["id"], self.config.stop_timeout)
            except (OSError, RuntimeError) as exc:
                log("stop-failed", replica=r["name"], error=str(exc)[:300])
        if drained:
            nft(f"delete element inet {NFT_TABLE} draining {{ {ports} }}\n")
        self.set_env_count(colour, desired)
        self.events["down"] += 1
        log("scaled-down", colour=colour, before=len(replicas), after=desired,
            removed=[r["name"] for r in leaving], seconds=round(time.monotonic() - started, 2))

    def export(self, colour: str, current: int, decision: dict[str, Any], cpu: list[float],
               memory: list[float]) -> None:
        if self.config.textfile is None or not self.config.textfile.parent.is_dir():
            return
        label = f'{{colour="{colour}"}}'

        def avg(values: list[float]) -> float:
            return round(sum(values) / len(values), 4) if values else 0.0

        held = 1 if decision["action"] == "held" else 0
        metrics = [
            ("zapora_autoscaler_replicas_desired", "gauge",
             "API replicas the autoscaler wants for the active colour on this host.",
             [(label, decision["desired"])]),
            ("zapora_autoscaler_replicas_current", "gauge",
             "API replicas of the active colour running on this host.", [(label, current)]),
            ("zapora_autoscaler_at_max", "gauge",
             "1 when the desired count is at app_replicas_max.",
             [(label, 1 if decision["desired"] >= self.config.maximum else 0)]),
            ("zapora_autoscaler_replicas_max", "gauge", "app_replicas_max.",
             [("", self.config.maximum)]),
            ("zapora_autoscaler_replicas_min", "gauge", "app_replicas_min.",
             [("", self.config.minimum)]),
            ("zapora_autoscaler_utilisation_ratio", "gauge",
             "Average use of the replicas' limits, per resource.",
             [(f'{{colour="{colour}",resource="cpu"}}', avg(cpu)),
              (f'{{colour="{colour}",resource="memory"}}', avg(memory))]),
            ("zapora_autoscaler_held", "gauge",
             "1 while a deploy or rollback holds the lock.", [("", held)]),
            ("zapora_autoscaler_scale_events_total", "counter",
             "Scale operations since the controller started.",
             [('{direction="up"}', self.events["up"]),
              ('{direction="down"}', self.events["down"])]),
            ("zapora_autoscaler_last_run_timestamp_seconds", "gauge",
             "When the controller last decided.", [("", round(time.time(), 3))]),
        ]
        lines = []
        for name, kind, help_text, samples in metrics:
            lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
            lines += [f"{name}{labels} {value}" for labels, value in samples]
        tmp = self.config.textfile.with_suffix(".tmp")
        tmp.write_text("\n".join(lines) + "\n")
        tmp.replace(self.config.textfile)

    def run(self) -> None:
        self.drain_ready = nft_table()
        log("started", bounds=[self.config.minimum, self.config.maximum],
            targets=self.config.targets.__dict__, interval=self.config.interval,
            scale_down_window=self.config.scale_down_window, drain_rule=self.drain_ready)
        while True:
            began = time.monotonic()
            try:
                self.tick()
            except Exception as exc:  # noqa: BLE001 - a controller must outlive one bad tick
                log("tick-failed", error=f"{type(exc).__name__}: {exc}"[:500])
            time.sleep(max(self.config.interval - (time.monotonic() - began), 1.0))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--config", type=Path, default=Path("/etc/zapora/autoscaler.json"))
    parser.add_argument("--once", action="store_true", help="decide once and exit")
    args = parser.parse_args(argv)
    controller = Controller(Config.load(args.config))
    if args.once:
        controller.drain_ready = nft_table()
        controller.tick()
        return 0
    controller.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
