"""Day-two changes of the Redis tier on the lab, run as docs/redis.md shows them
(`site.yml --tags redis`), while a customer posts orders through the edge.

- Sentinels down: with every Sentinel stopped the role cannot learn the primary, and the
  tier holds data, so the play stops with a message naming the Sentinels asked and what
  to check, before it touches a data node: the primary stays primary, its replica
  connected. The Sentinels are started again in a `finally`.
- A setting that needs a restart (`redis_maxmemory`, set in a group_vars file of an
  overlay of the lab's inventory: the operator's "edit group_vars") and the play re-run:
  the data nodes restart one at a time (the replica, then the primary after one Sentinel
  failover), every node runs the new value, 0 orders fail, none acknowledged is lost.
  Afterwards the test puts the lab back as it was without a second rolling restart (it
  would measure the same thing again: 110 s of CI with the data tier held alone): each
  node's configuration file as the role rendered it from the lab's inventory (kept
  before the change) and the old value set live (CONFIG SET), so the next run of the
  role finds nothing to change.

Cost on the lab: the refusal about 15-25 s; the change one run of the play with a
rolling restart (printed).
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from tests.e2e.conftest import INVENTORY, REPO, Lab, on_every, run_documented
from tests.e2e.order_writer import OrderWriter
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

# Not the lab's value (the role's default, 256mb): the change the test makes and reverts.
CHANGED_MAXMEMORY = "257mb"
CHANGED_BYTES = str(257 * 1024 * 1024)
LAB_BYTES = str(256 * 1024 * 1024)
CONF = "/etc/redis/zapora/redis.conf"


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


def rolling_change(lab: Lab, probe: str, inventory: Path, want_bytes: str) -> str:
    """site.yml --tags redis with `inventory` under the order writer: every data node
    restarted and running `want_bytes`, at most one failover, no failed order."""
    before = node_state(lab, probe)
    epoch = config_epoch(lab, probe)
    with OrderWriter(limit_s=400) as writer:
        time.sleep(3)
        started = time.monotonic()
        run = run_documented("site.yml", "--tags redis", inventory=inventory, timeout=600)
        took = time.monotonic() - started
        pair = wait_healthy(lab, probe, 60)
        time.sleep(3)
    after = node_state(lab, probe)
    failovers = config_epoch(lab, probe) - epoch
    report = (
        f"site.yml --tags redis (maxmemory {want_bytes}): {took:.0f} s, {failovers} failover(s), "
        f"primary now {data_nodes(lab)[pair.primary]}; {writer.summary()}"
    )
    print(report)
    assert run.returncode == 0, run.stdout[-4000:]
    for host, (run_id, maxmemory) in after.items():
        assert run_id != before[host][0], f"{host} was not restarted"
        assert maxmemory == want_bytes, f"{host} runs maxmemory {maxmemory}"
    assert failovers <= 1, report
    assert writer.failed == 0, f"{report}: {writer.failures[:10]}"
    missing = writer.missing(lab)
    assert not missing, f"acknowledged orders missing: {missing}"
    return report


def test_a_changed_setting_restarts_one_data_node_at_a_time_under_orders(
    lab: Lab,
    client: str,  # noqa: F811 - pytest fixture
) -> None:
    wait_healthy(lab, client, 60)
    assert {m for _, m in node_state(lab, client).values()} == {LAB_BYTES}
    changed = overlay_with("redis-maxmemory", f"redis_maxmemory: {CHANGED_MAXMEMORY}")
    nodes = data_nodes(lab)
    on_every(lab, list(nodes.values()), f"cp -p {CONF} {CONF}.e2e-before")
    try:
        rolling_change(lab, client, changed, CHANGED_BYTES)
    finally:
        # Back to the lab's inventory without a restart: the file the role rendered from
        # it, and the old value set live.
        on_every(lab, list(nodes.values()), f"mv {CONF}.e2e-before {CONF}")
        live = ("CONFIG", "SET", "maxmemory", LAB_BYTES)
        replies = ask(lab, client, *(Call(a, live, "admin") for a in nodes))
        assert replies == ["OK"] * len(nodes), replies
        wait_api_ready(60)
    assert {m for _, m in node_state(lab, client).values()} == {LAB_BYTES}
