"""Where a webhook may be sent: not to this host, its network or a cloud's metadata service.

A webhook URL is given by an admin key but fetched by the service, from inside its network:
one that resolves to a loopback, link-local (169.254.169.254, the metadata service of most
clouds), private, shared, multicast, reserved or unspecified address would let a key reach
what only the service should. Such URLs are refused unless WEBHOOK_ALLOW_PRIVATE_ADDRESSES
is set, at registration and again before each delivery, since DNS can change in between.
"""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urlsplit

from app.core.errors import InvalidRequest


class UnsafeWebhookUrl(InvalidRequest):
    """The URL's host resolves where webhooks may not go (or does not resolve)."""


def _refused(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return (
        address.is_loopback
        or address.is_link_local
        or address.is_private
        or address.is_multicast
        or address.is_reserved
        or address.is_unspecified
        or not address.is_global
    )


def check_webhook_url(url: str, allow_private: bool) -> None:
    """Raises UnsafeWebhookUrl naming the address when `url` may not receive webhooks."""
    if allow_private:
        return
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        resolved = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise UnsafeWebhookUrl(f"The webhook URL's host {host!r} does not resolve ({exc}).", param="url") from exc
    for *_, sockaddr in resolved:
        address = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
        if _refused(address):
            raise UnsafeWebhookUrl(
                f"The webhook URL's host {host!r} resolves to {address}, a loopback, link-local, private, "
                "multicast or reserved address; webhooks go to public addresses only "
                "(WEBHOOK_ALLOW_PRIVATE_ADDRESSES allows others).",
                param="url",
            )
