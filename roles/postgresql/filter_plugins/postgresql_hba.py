"""Addresses of the hosts of inventory groups, for pg_hba."""

from __future__ import annotations

import ipaddress
from typing import Any


def _is_ip(value: object) -> bool:
    try:
        ipaddress.ip_address(str(value))
    except ValueError:
        return False
    return True


def host_address(host: str, hostvars: Any) -> str | None:
    """The address a host connects from: postgresql_host_address (set by this role on
    database hosts), its gathered default IPv4 address, or an IP ansible_host."""
    hv = hostvars[host]
    own = hv.get("postgresql_host_address")
    if own:
        return str(own)
    facts = hv.get("ansible_facts") or {}
    default = (facts.get("default_ipv4") or {}).get("address")
    if default:
        return str(default)
    ansible_host = hv.get("ansible_host")
    if _is_ip(ansible_host):
        return str(ansible_host)
    return None


def group_addresses(group_names: list[str], groups: Any, hostvars: Any) -> list[str | None]:
    """Addresses of every host of the named groups (None where unknown), deduplicated."""
    hosts: list[str] = []
    for name in group_names:
        for host in groups.get(name, []):
            if host not in hosts:
                hosts.append(host)
    addresses: list[str | None] = []
    for host in hosts:
        address = host_address(host, hostvars)
        if address not in addresses:
            addresses.append(address)
    return addresses


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {"postgresql_group_addresses": group_addresses}
