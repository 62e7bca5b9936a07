"""Where a URL that a job names may lead: the one rule for a job's images and its LoRAs.

- http and https only, and a host on the allow-list when one is set (exact names, or
  `*.example.com` / `.example.com` for subdomains);
- every address the host resolves to is public (loopback only under the test setting
  I2V_ALLOW_LOOPBACK_IMAGES): one non-public address refuses the host, since a mixed answer is how
  DNS-rebinding attacks start;
- every redirect hop obeys the same rule, and callers connect to the addresses checked here, never
  resolving the name a second time (worker/image.py for images and the LoRA probe, the store's
  transfer engine for LoRA downloads).

The operator's own sources (the manifest, HF_ENDPOINT) are configuration, not job input: they do
not pass here (a private mirror is legitimate there).
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from typing import Callable


class EgressDenied(Exception):
    """A URL the rule refuses; `rule` is the invalid_input rule name (scheme, host_not_allowed,
    unresolvable, blocked_address)."""

    def __init__(self, rule: str, message: str) -> None:
        super().__init__(message)
        self.rule, self.message = rule, message


def address_allowed(addr: str, allow_loopback: bool = False) -> bool:
    """True for globally routable unicast addresses (and loopback when the test setting allows it)."""
    ip = ipaddress.ip_address(addr.split("%", 1)[0])  # drop an IPv6 zone id
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = ip.ipv4_mapped or ip.sixtofour
        if embedded is None and ip in ipaddress.ip_network("64:ff9b::/96"):  # NAT64 well-known prefix
            embedded = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if embedded is None and ip in ipaddress.ip_network("::/96") and int(ip) > 1:  # IPv4-compatible (deprecated)
            embedded = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if embedded is not None:
            return address_allowed(str(embedded), allow_loopback)
    if ip.is_loopback:
        return allow_loopback
    return bool(ip.is_global and not (ip.is_multicast or ip.is_reserved or ip.is_unspecified
                                        or ip.is_link_local or ip.is_private))


def host_allowed(host: str, allowlist: tuple[str, ...]) -> bool:
    """Exact host names, or `*.example.com` / `.example.com` entries for subdomains."""
    if not allowlist:
        return True
    host = host.lower().rstrip(".")
    for entry in allowlist:
        entry = entry.lower().rstrip(".")
        if entry.startswith(("*.", ".")):
            suffix = entry.lstrip("*")
            if host.endswith(suffix) or host == suffix[1:]:
                return True
        elif host == entry:
            return True
    return False


def check_target(url: str, scheme: str, host: str, allowlist: tuple[str, ...], setting: str = "") -> None:
    """The URL's own part of the rule: scheme and allow-list (`setting` names the allow-list)."""
    if scheme not in ("http", "https"):
        raise EgressDenied("scheme", f"only http and https URLs are fetched (got {scheme!r} in {url})")
    if not host:
        raise EgressDenied("scheme", f"URL has no host: {url}")
    if not host_allowed(host, allowlist):
        named = f"{setting}=" if setting else ""
        raise EgressDenied("host_not_allowed", f"host {host!r} is not in the allow-list ({named}{','.join(allowlist)})")


def literal_address(host: str) -> list[str] | None:
    """[host] when the host is an IP address (nothing to resolve), else None."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return None
    return [host]


def unresolvable(host: str, exc: BaseException) -> EgressDenied:
    return EgressDenied("unresolvable", f"host {host!r} could not be resolved: {exc}")


def checked(host: str, addrs: list[str], allow_loopback: bool) -> list[str]:
    """The addresses `host` resolved to, when every one is allowed."""
    if not addrs:
        raise EgressDenied("unresolvable", f"host {host!r} resolved to no address")
    blocked = [a for a in addrs if not address_allowed(a, allow_loopback)]
    if blocked:
        raise EgressDenied("blocked_address", f"host {host!r} resolves to a non-public address ({', '.join(blocked)}); "
                                              "only public internet hosts are fetched")
    return addrs


def system_resolve(host: str, port: int) -> list[str]:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


@dataclass(frozen=True)
class EgressPolicy:
    """The rule with its settings, for code that connects from threads (the store's transfer
    engine). `resolve` is injectable: (host, port) -> addresses."""

    allowlist: tuple[str, ...] = ()
    allow_loopback: bool = False
    setting: str = ""  # the allow-list's setting name, for messages
    resolve: Callable[[str, int], list[str]] = system_resolve

    def addresses(self, scheme: str, host: str, port: int) -> list[str]:
        """The checked addresses to connect to for one hop; raises EgressDenied."""
        check_target(f"{scheme}://{host}:{port}", scheme, host, self.allowlist, self.setting)
        addrs = literal_address(host)
        if addrs is None:
            try:
                addrs = self.resolve(host, port)
            except (OSError, UnicodeError) as exc:
                raise unresolvable(host, exc) from None
        return checked(host, addrs, self.allow_loopback)
