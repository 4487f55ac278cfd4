"""Filters that turn the firewall role's service catalogue into nftables rules.

A service says which hosts run it (`on_groups`) and who may reach it (`from_groups`,
`from_networks`, `from_anywhere`); these filters resolve the groups to addresses
from the inventory so the template only prints them.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from typing import Any

from ansible.errors import AnsibleFilterError


def _is_ip(value: Any) -> bool:
    try:
        ipaddress.ip_address(str(value))
    except ValueError:
        return False
    return True


def invalid_networks(networks: list[Any]) -> list[str]:
    """The entries that are not an IPv4/IPv6 address or network."""
    bad = []
    for net in networks:
        try:
            ipaddress.ip_network(str(net), strict=False)
        except ValueError:
            bad.append(str(net))
    return bad


def host_address(hostvars: Mapping[str, Any], host: str) -> str | None:
    """The address other hosts see `host` at.

    firewall_address if set; else ansible_host when it is an IP; else the host's
    default IPv4 address from its facts (gathered in the same play).
    """
    hv = hostvars[host]
    explicit = hv.get("firewall_address")
    if explicit:
        return str(explicit)
    ansible_host = hv.get("ansible_host")
    if ansible_host and _is_ip(ansible_host):
        return str(ansible_host)
    facts = hv.get("ansible_facts") or {}
    default_v4 = (facts.get("default_ipv4") or {}).get("address")
    return str(default_v4) if default_v4 else None


def firewall_rules(
    services: list[Mapping[str, Any]],
    hostvars: Mapping[str, Any],
    groups: Mapping[str, list[str]],
    group_names: list[str],
    local_container_services: list[str] | None = None,
) -> list[dict[str, Any]]:
    """The services this host runs, each with its resolved sources.

    A service named in `local_container_services` (or with `from_local_containers`) is
    also open to containers on the same host.
    """
    local = set(local_container_services or [])
    mine = set(group_names) | {"all"}
    rules = []
    for svc in services:
        name = svc.get("name", "?")
        if not set(svc.get("on_groups", [])) & mine:
            continue
        ports = [int(p) for p in svc.get("ports", [])]
        proto = svc.get("proto", "tcp")
        if proto not in ("tcp", "udp") or not ports:
            raise AnsibleFilterError(
                f"firewall service '{name}': proto must be tcp or udp and ports non-empty"
            )
        anywhere = bool(svc.get("from_anywhere", False))
        sources: list[str] = []
        unresolved: list[str] = []
        for group in svc.get("from_groups", []):
            for host in groups.get(group, []):
                addr = host_address(hostvars, host)
                if addr:
                    sources.append(addr)
                else:
                    unresolved.append(host)
        bad = invalid_networks(svc.get("from_networks", []))
        if bad:
            raise AnsibleFilterError(
                f"firewall service '{name}': from_networks has invalid entries: {bad}"
            )
        sources += [str(n) for n in svc.get("from_networks", [])]
        nets = sorted(
            {ipaddress.ip_network(s, strict=False) for s in sources},
            key=lambda n: (n.version, n),
        )
        rules.append(
            {
                "name": name,
                "proto": proto,
                "ports": sorted(set(ports)),
                "anywhere": anywhere,
                "local_containers": bool(svc.get("from_local_containers", False))
                or name in local,
                "v4": [str(n) for n in nets if n.version == 4],
                "v6": [str(n) for n in nets if n.version == 6],
                "unresolved": unresolved,
            }
        )
    return rules


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {
            "firewall_rules": firewall_rules,
            "firewall_invalid_networks": invalid_networks,
        }
