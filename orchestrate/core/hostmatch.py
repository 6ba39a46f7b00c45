"""Does a `network` entry allow `host:port`? (pure, and importless on purpose:
the sandbox's proxy imports this module alone, and a proxy runs beside
every networked sandboxed agent, so its memory is counted per agent)."""


def split_host_port(entry: str) -> tuple[str, str | None]:
    """("host", "port" or None); a bracketed IPv6 address keeps its brackets."""
    if entry.startswith("["):
        end = entry.find("]")
        if end < 0:
            return entry, None
        rest = entry[end + 1:]
        return entry[:end + 1], rest[1:] if rest.startswith(":") else None
    host, colon, port = entry.rpartition(":")
    if not colon or ":" in host:      # a bare IPv6 address has colons of its own
        return entry, None
    return host, port


def host_allowed(host: str, port: int, entries: "tuple[str, ...] | list[str]") -> bool:
    """`host` allows every port, `*.d` every name under d (not d itself),
    `host:port` only that port; names compare without case."""
    host = host.lower().strip("[]")
    for entry in entries:
        name, wanted = split_host_port(entry.lower())
        name = name.strip("[]")
        if wanted is not None and wanted != str(port):
            continue
        if name == host or (name.startswith("*.") and host.endswith(name[1:])):
            return True
    return False
