"""Day-two changes of the Redis tier on the lab, run as docs/redis.md shows them
(`site.yml --tags redis`), while a customer posts orders through the edge.

- Sentinels down: with every Sentinel stopped the role cannot learn the primary, and the
  tier holds data, so the play stops with a message naming the Sentinels asked and what
  to check, before it touches a data node: the primary stays primary, its replica
  connected. The Sentinels are started again in a `finally`.

A changed setting's rolling restart of the data nodes runs with every other tier's in
test_rolling_changes.py; its helpers (overlay_with, node_state, config_epoch) are here.

Cost on the lab: the refusal about 15-25 s.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from tests.e2e.conftest import INVENTORY, REPO, Lab, on_every, run_documented
from tests.e2e.test_redis import (  # noqa: F401 - the client fixture
    MASTER,
    SENTINEL_PORT,
    Call,
    ask,
    client,
    data_nodes,
    pairs,
    wait_api_ready,
    wait_healthy,
)

pytestmark = [pytest.mark.e2e, pytest.mark.lab(shared=("app",), exclusive=("data",))]


def folded(text: str) -> str:
    """Ansible's output with the message's line folding undone."""
    return re.sub(r"\s+", " ", text)


def test_without_a_sentinel_the_role_refuses_and_the_primary_stays(
    lab: Lab,
    client: str,  # noqa: F811 - pytest fixture
) -> None:
    before = wait_healthy(lab, client, 60)
    sentinels = lab.groups["redis_sentinel"]
    started = time.monotonic()
    try:
        on_every(lab, sentinels, "systemctl stop redis-sentinel")
        run = run_documented("site.yml", "--tags redis", timeout=300)
    finally:
        on_every(lab, sentinels, "systemctl start redis-sentinel")
    took = time.monotonic() - started
    out = folded(run.stdout)
    assert run.returncode != 0, run.stdout[-3000:]
    said = re.search(r"No Sentinel answered SENTINEL get-master-addr-by-name (.*?)\"", out)
    assert said, run.stdout[-3000:]
    message = said.group(0)
    print(f"site.yml --tags redis with the Sentinels down: refused in {took:.1f} s: {message}")
    for host in sentinels:
        assert host in message, f"the message does not name the Sentinel on {host}: {message}"
    wanted = ("not a first install", "systemctl start redis-sentinel", "redis_sentinel_password")
    for words in wanted:
        assert words in message, f"{words!r} missing from: {message}"
    # Nothing was changed before the refusal, and the tier is as it was.
    recap = dict(re.findall(r"^(\S+)\s+: ok=\d+\s+changed=(\d+)", run.stdout, re.M))
    assert all(v == "0" for v in recap.values()), recap
    assert wait_healthy(lab, client, 60) == before
    wait_api_ready(60)


def overlay_with(name: str, settings: str) -> Path:
    """The lab's inventory with one more group_vars file (`settings`), loaded last: what an
    operator's edit of group_vars amounts to. Two levels under the repository like
    inventory/lab, so the lab's files find its key and secrets as they do there."""
    overlay = REPO / ".cache" / f"inventory-{name}"
    all_vars = overlay / "group_vars" / "all"
    all_vars.mkdir(parents=True, exist_ok=True)
    for old in all_vars.iterdir():
        old.unlink()
    hosts = overlay / "hosts.yml"
    hosts.unlink(missing_ok=True)
    hosts.symlink_to(INVENTORY / "hosts.yml")
    for f in sorted((INVENTORY / "group_vars" / "all").iterdir()):
        (all_vars / f.name).symlink_to(f)
    (all_vars / "zz-operator-change.yml").write_text(f"---\n{settings}\n")
    return overlay


def node_state(lab: Lab, probe: str) -> dict[str, tuple[str, str]]:
    """Each data node's run_id (a new one after a restart) and maxmemory (bytes)."""
    nodes = data_nodes(lab)
    replies = ask(
        lab,
        probe,
        *(Call(a, ("INFO", "server"), "admin") for a in nodes),
        *(Call(a, ("CONFIG", "GET", "maxmemory"), "admin") for a in nodes),
    )
    out: dict[str, tuple[str, str]] = {}
    for i, address in enumerate(nodes):
        run_id = re.search(r"^run_id:(\w+)", replies[i], re.M)
        assert run_id, replies[i]
        out[nodes[address]] = (run_id.group(1), replies[len(nodes) + i].split("\n")[-1])
    return out


def config_epoch(lab: Lab, probe: str) -> int:
    """Sentinel's configuration epoch of the master: one more per failover."""
    here = lab.hosts[probe].address
    reply = ask(lab, probe, Call(here, ("SENTINEL", "MASTER", MASTER), port=SENTINEL_PORT))[0]
    return int(pairs(reply)[0]["config-epoch"])
