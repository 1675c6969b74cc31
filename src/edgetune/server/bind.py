"""Where the server may listen: loopback addresses freely, any other only with a token."""

from __future__ import annotations

import ipaddress

from edgetune.errors import EdgetuneError

__all__ = ["check_bind", "is_loopback", "url_for"]


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1, also in
    brackets). The one loopback rule: for the address to bind and for Host headers."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind(host: str, token: str | None) -> None:
    """Refuse a non-loopback address without an access token."""
    if token is not None and not token.strip():
        raise EdgetuneError("the access token is empty; pass a non-empty --token")
    if not is_loopback(host) and not token:
        raise EdgetuneError(
            f"refusing to listen on {host}: other devices could reach the camera and the "
            f"samples. Pass an access token (--token T or $EDGETUNE_TOKEN) to require it, "
            f"or use --host 127.0.0.1")


def url_for(host: str, port: int, scheme: str = "http") -> str:
    """The address to open in a browser for a server bound to host:port."""
    shown = "127.0.0.1" if host in ("0.0.0.0", "", "::") else host
    if ":" in shown and not shown.startswith("["):
        shown = f"[{shown}]"
    return f"{scheme}://{shown}:{port}/"
