"""playbooks/redis-member-remove.yml refuses, naming redis_remove_members, before it
touches any host: no host named, a string, a host still in both the redis and the
redis_sentinel group (it left nothing), fewer Sentinels left than the quorum. Run as the
docs show it on small inventories whose hosts are unreachable: a removal it accepts gets
past the check and stops at the first host it must reach (the remaining Sentinels)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.unit.local_playbook import run_unreachable

NAMED = "redis_remove_members ("
TOO_FEW = "at least redis_sentinel_quorum (2) Sentinels"


def _run(
    tmp_path: Path, redis: list[str], sentinels: list[str], removed: list[str], extra: object
) -> str:
    """The playbook on an inventory with `redis` and `sentinels` in their groups and
    `removed` in a group of their own; every host's address is unreachable. Returns the
    output, folded onto one line."""
    children = {"redis": redis, "redis_sentinel": sentinels, "redis_removed": removed}
    return run_unreachable(tmp_path, "redis-member-remove.yml", children, extra)


@pytest.mark.parametrize(
    ("redis", "sentinels", "removed", "extra", "said"),
    [
        (["db1", "db2"], ["db1", "db2", "mon1"], [], None, NAMED),
        (["db1"], ["db1", "db2", "mon1"], ["db2"], {"redis_remove_members": "db2"}, NAMED),
        (["db1", "db2"], ["db1", "db2", "mon1"], [], {"redis_remove_members": ["db2"]}, NAMED),
        (["db1", "db2"], ["db1"], ["mon1"], {"redis_remove_members": ["mon1"]}, TOO_FEW),
    ],
    ids=[
        "not named",
        "a string",
        "still in both groups",
        "fewer Sentinels than the quorum",
    ],
)
def test_a_wrong_removal_is_refused_before_any_host(
    tmp_path: Path,
    redis: list[str],
    sentinels: list[str],
    removed: list[str],
    extra: object,
    said: str,
) -> None:
    out = _run(tmp_path, redis, sentinels, removed, extra)
    assert said in out, out[-2000:]
    assert "Read what each remaining Sentinel sees" not in out, out[-2000:]


@pytest.mark.parametrize(
    ("redis", "sentinels", "removed"),
    [
        (["db1"], ["db1", "db2"], ["db2", "mon1"]),
        (["db1"], ["db1", "mon1"], ["db2"]),
        (["db1", "db2"], ["db1", "db2"], ["mon1"]),
    ],
    ids=["a data node and a Sentinel", "out of both groups", "a Sentinel"],
)
def test_a_removal_out_of_a_group_gets_past_the_check(
    tmp_path: Path, redis: list[str], sentinels: list[str], removed: list[str]
) -> None:
    gone = [h for h in ("db2", "mon1") if not (h in redis and h in sentinels)]
    out = _run(tmp_path, redis, sentinels, removed, {"redis_remove_members": gone})
    assert NAMED not in out and TOO_FEW not in out, out[-2000:]
    assert "UNREACHABLE" in out, out[-2000:]
