"""orchestrate's allowlist proxy, one per networked sandboxed run.

`python -I -S sandbox_proxy.py RUNS NAME PACKAGE_PARENT HOST...`

Started by the agent's wrapper (outside the sandbox, its child: it lives as
long as the run, and needs no orchestrator process). It waits on the Unix
socket RUNS/NAME for `sandbox_bridge` to hand it the sandbox's listening
socket, then serves HTTP CONNECT (any TLS or other TCP stream) and plain
HTTP in absolute form (`http://` base URLs such as a local model server),
each to a host that an entry allows (`core.hostmatch`). A refused
connection is one line in the agent's log (its stderr):
`sandbox: blocked HOST:PORT`. Builtin modules only (`_socket`, `_thread`,
not `socket`, `threading`: 1.6 MB less per proxy), so that it costs a few
MB per agent (bench/ reports it).
"""
import os
import select
import sys

import _socket
import _thread


HEAD_LIMIT = 64 * 1024


def connect(host: str, port: int) -> "_socket.socket":
    """socket.create_connection, from the builtin module."""
    error: OSError = OSError(f"cannot resolve {host}")
    for family, kind, proto, _, address in _socket.getaddrinfo(host, port, 0,
                                                               _socket.SOCK_STREAM):
        sock = _socket.socket(family, kind, proto)
        sock.settimeout(30)
        try:
            sock.connect(address)
            sock.settimeout(None)
            return sock
        except OSError as err:
            sock.close()
            error = err
    raise error


def read_head(client: _socket.socket) -> tuple[bytes, bytes]:
    """The request's head (through the blank line) and what came after it."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = client.recv(8192)
        if not chunk or len(data) > HEAD_LIMIT:
            raise ConnectionError("no request")
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    return head, rest


def target_of(head: bytes) -> tuple[str, str, int, bytes | None]:
    """(method, host, port, the head to send upstream or None for CONNECT)."""
    lines = head.decode("latin-1").split("\r\n")
    method, target, version = lines[0].split(" ", 2)
    if method.upper() == "CONNECT":
        host, _, port = target.rpartition(":")
        return method, host.strip("[]"), int(port), None
    if not target.lower().startswith("http://"):
        raise ValueError("not a proxy request")
    rest = target[len("http://"):]
    authority, slash, path = rest.partition("/")
    host, port = authority, 80
    if authority.startswith("["):
        host, _, tail = authority[1:].partition("]")
        port = int(tail[1:]) if tail.startswith(":") else 80
    elif ":" in authority:
        host, text = authority.rsplit(":", 1)
        port = int(text)
    headers = [line for line in lines[1:] if line.split(":", 1)[0].strip().lower()
               not in ("proxy-connection", "proxy-authorization", "connection", "keep-alive")]
    upstream = [f"{method} /{path if slash else ''} {version}", *headers, "Connection: close"]
    return method, host, port, ("\r\n".join(upstream) + "\r\n\r\n").encode("latin-1")


def relay(a: _socket.socket, b: _socket.socket) -> None:
    """Both ways until both sides are done."""
    open_ends = {a: b, b: a}
    while open_ends:
        ready, _, _ = select.select(list(open_ends), [], [], 300)
        if not ready:
            return
        for source in ready:
            try:
                data = source.recv(65536)
            except OSError:
                data = b""
            sink = open_ends[source]
            if data:
                try:
                    sink.sendall(data)
                    continue
                except OSError:
                    return
            del open_ends[source]
            try:
                sink.shutdown(_socket.SHUT_WR)
            except OSError:
                pass


def serve(client: _socket.socket, allowed: list[str], host_allowed) -> None:
    upstream = None
    try:
        head, rest = read_head(client)
        try:
            method, host, port, request = target_of(head)
        except (ValueError, IndexError):
            client.sendall(b"HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\n")
            return
        if not host_allowed(host, port, allowed):
            shown = f"[{host}]" if ":" in host else host
            os.write(2, f"sandbox: blocked {shown}:{port}\n".encode())
            client.sendall(b"HTTP/1.1 403 Forbidden\r\nContent-Type: text/plain\r\n"
                           b"Connection: close\r\n\r\nblocked by orchestrate's sandbox\n")
            return
        try:
            upstream = connect(host, port)
        except OSError as err:
            client.sendall(f"HTTP/1.1 502 Bad Gateway\r\nConnection: close\r\n\r\n{err}\n"
                           .encode())
            return
        if request is None:
            client.sendall(b"HTTP/1.1 200 Connection Established\r\n\r\n")
        else:
            upstream.sendall(request)
        if rest:
            upstream.sendall(rest)
        relay(client, upstream)
    except OSError:
        pass
    finally:
        client.close()
        if upstream is not None:
            upstream.close()


def receive_listener(name: str, parent: int) -> "_socket.socket | None":
    """The sandbox's listening socket, from the bridge; None if our parent
    (the wrapper) ended first."""
    door = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    door.bind(name)
    door.listen(1)
    door.settimeout(1.0)
    try:
        while True:
            try:
                fd, _ = door._accept()
            except TimeoutError:
                if os.getppid() != parent:
                    return None
                continue
            conn = _socket.socket(fileno=fd)
            _, ancillary, _, _ = conn.recvmsg(16, _socket.CMSG_SPACE(4))
            conn.sendall(b"k")
            conn.close()
            for level, kind, data in ancillary:
                if level == _socket.SOL_SOCKET and kind == _socket.SCM_RIGHTS:
                    return _socket.socket(fileno=int.from_bytes(data[:4], sys.byteorder))
    finally:
        door.close()
        os.unlink(name)


def main(argv: list[str]) -> None:
    runs, name, package_parent, *allowed = argv
    sys.path.insert(0, package_parent)
    from orchestrate.core.hostmatch import host_allowed
    parent = os.getppid()
    os.chdir(runs)
    listener = receive_listener(name, parent)
    if listener is None:
        return
    listener.settimeout(1.0)
    _thread.stack_size(256 * 1024)
    while True:
        try:
            fd, _ = listener._accept()
        except TimeoutError:
            if os.getppid() != parent:   # the wrapper is gone: so is the run
                return
            continue
        client = _socket.socket(fileno=fd)
        client.settimeout(None)
        _thread.start_new_thread(serve, (client, allowed, host_allowed))


if __name__ == "__main__":
    main(sys.argv[1:])
