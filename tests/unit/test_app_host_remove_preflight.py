"""playbooks/app-host-remove.yml refuses, naming app_remove_hosts, before it touches any
host: no host named, a host still in the app group, a removal that empties the group.
Run as the docs show it on small inventories whose hosts are unreachable: a removal it
accepts gets past the check and stops at the first host it must reach (the deploy lock)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.unit.local_playbook import run_unreachable

CHECK = "Assert the hosts are named, out of the app group, and the group keeps a host"


def _run(tmp_path: Path, app: list[str], removed: list[str], extra: object) -> str:
    """The playbook on an inventory with `app` in the app group and `removed` in a group of
    their own; every host's address is unreachable. Returns the output."""
    children = {"app": app, "app_removed": removed, "edge": [], "monitoring": []}
    return run_unreachable(tmp_path, "app-host-remove.yml", children, extra)


@pytest.mark.parametrize(
    ("app", "removed", "extra"),
    [
        (["app1", "app2"], [], None),
        (["app1", "app2"], [], {"app_remove_hosts": "app2"}),
        (["app1", "app2"], [], {"app_remove_hosts": ["app2"]}),
        ([], ["app1", "app2"], {"app_remove_hosts": ["app1", "app2"]}),
    ],
    ids=["not named", "a string", "still in the group", "the group left empty"],
)
def test_a_wrong_removal_is_refused_before_any_host(
    tmp_path: Path, app: list[str], removed: list[str], extra: object
) -> None:
    out = _run(tmp_path, app, removed, extra)
    assert "app_remove_hosts must list the app hosts to remove" in out, out[-2000:]
    assert "Take the deploy lock" not in out, out[-2000:]


def test_a_removal_out_of_the_group_gets_past_the_check(tmp_path: Path) -> None:
    out = _run(tmp_path, ["app1"], ["app2"], {"app_remove_hosts": ["app2"]})
    assert "app_remove_hosts must list" not in out, out[-2000:]
    assert CHECK in out and "Take the deploy lock" in out, out[-2000:]
    assert "UNREACHABLE" in out, out[-2000:]
