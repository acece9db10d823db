"""The network under check's dns and tcp steps: every node of the broker resolved and
reached over TCP, each failure kept with its reason rather than raised."""

import socket

__all__ = ["resolve", "reach"]


def resolve(nodes):
    """Given [(host, port)], return ({(host, port): [sockaddr]}, ["'host' (reason)"]): the
    nodes resolved, and those that did not resolve."""
    resolved, unresolved = {}, []
    for host, port in nodes:
        try:
            resolved[(host, port)] = [info[4] for info in
                                      socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)]
        except (socket.gaierror, UnicodeError) as error:
            unresolved.append(f"'{host}' ({getattr(error, 'strerror', None) or error})")
    return resolved, unresolved


def reach(resolved, timeout):
    """Given resolve()'s nodes, connect to each (its addresses in turn, until one answers);
    return (["ADDRESS port P"] reached, ["port P (ADDRESS: reason; ...)"] not reached)."""
    up, down = [], []
    for (_, port), addresses in resolved.items():
        errors = []
        for address in addresses:
            family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
            try:
                with socket.socket(family, socket.SOCK_STREAM) as sock:
                    sock.settimeout(timeout)
                    sock.connect(address)
                up.append(f"{address[0]} port {port}")
                break
            except OSError as error:
                reason = "timed out" if isinstance(error, socket.timeout) else error.strerror
                errors.append(f"{address[0]}: {reason or error}")
        else:
            down.append(f"port {port} ({'; '.join(errors)})")
    return up, down
