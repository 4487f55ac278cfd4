"""Filters for the docker role's preflight: address pools that clash with the host."""

from __future__ import annotations

import ipaddress
from typing import Any

# Interfaces dockerd creates itself: their networks come from the pools being checked.
_DOCKER_IFACE_PREFIXES = ("docker", "br-", "veth")


def host_networks(facts: dict[str, Any]) -> list[str]:
    """IPv4 networks of the host's interfaces (Docker's own bridges excluded), as CIDRs."""
    nets: list[str] = []
    for iface in facts.get("interfaces", []):
        if iface.startswith(_DOCKER_IFACE_PREFIXES) or iface == "lo":
            continue
        data = facts.get(iface.replace("-", "_"), {})
        for addr in [data.get("ipv4")] + list(data.get("ipv4_secondaries", [])):
            if addr and addr.get("address") and addr.get("netmask"):
                iface_net = ipaddress.ip_interface(f"{addr['address']}/{addr['netmask']}")
                nets.append(str(iface_net.network))
    return nets


def docker_network_clashes(candidates: list[str], others: list[str]) -> list[str]:
    """Each 'candidate overlaps other' pair; invalid CIDRs are reported as such."""
    clashes: list[str] = []
    for cand in candidates:
        try:
            cand_net = ipaddress.ip_network(str(cand), strict=False)
        except ValueError:
            clashes.append(f"{cand} is not a valid network")
            continue
        for other in others:
            other_net = ipaddress.ip_network(str(other), strict=False)
            if cand_net.version == other_net.version and cand_net.overlaps(other_net):
                clashes.append(f"{cand} overlaps {other}")
    return clashes


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {
            "docker_host_networks": host_networks,
            "docker_network_clashes": docker_network_clashes,
        }
