"""Network parts a gateway meets in production, for tests: an HTTP proxy, a TLS front, a private CA.

- :class:`ForwardProxy`: a threaded HTTP proxy. ``CONNECT host:port`` opens a tunnel (what
  ``HTTPS_PROXY`` gives an https upstream); an absolute-form request (``POST http://host/…``,
  what ``HTTP_PROXY``/``ALL_PROXY`` give a plain-http upstream) is forwarded in origin form,
  one request per connection. ``seen`` lists each request line it received.
- :class:`TLSFront`: terminates TLS with a certificate from :func:`make_ca` and forwards the
  bytes to a plain-http server (the simulator), so it can be an ``https://`` upstream.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import select
import socket
import socketserver
import ssl
import threading
from pathlib import Path
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


def _pipe(a: socket.socket, b: socket.socket, idle: float = 30.0) -> None:
    """Copy bytes both ways until either side closes (one thread; TLS-buffered bytes included)."""
    other = {a: b, b: a}
    try:
        while True:
            ready, _, _ = select.select([a, b], [], [], idle)
            if not ready:
                return
            for sock in ready:
                data = sock.recv(65536)
                if not data:
                    return
                while isinstance(sock, ssl.SSLSocket) and sock.pending():
                    data += sock.recv(sock.pending())
                other[sock].sendall(data)
    except OSError:
        return
    finally:
        for sock in (a, b):
            sock.close()


def _read_head(sock: socket.socket) -> tuple[bytes, bytes]:
    """(the head up to its blank line, whatever came after it) from ``sock``."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return b"", b""
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    return head, rest


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, handle):
        outer = handle

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                outer(self.request)

        super().__init__(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def port(self) -> int:
        return self.server_address[1]

    def stop(self) -> None:
        self.shutdown()
        self.server_close()


class ForwardProxy:
    def __init__(self) -> None:
        self.seen: list[str] = []
        self._server = _Server(self._handle)
        self.url = f"http://127.0.0.1:{self._server.port}"

    def _handle(self, conn: socket.socket) -> None:
        head, rest = _read_head(conn)
        if not head:
            return
        lines = head.decode("latin-1").split("\r\n")
        method, target, version = lines[0].split(" ")
        self.seen.append(f"{method} {target}")
        if method == "CONNECT":
            host, _, port = target.rpartition(":")
            upstream = socket.create_connection((host, int(port)))
            conn.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
            return _pipe(conn, upstream)
        self._forward(conn, method, urlsplit(target), version, lines[1:], rest)

    def _forward(self, conn, method, url, version, headers, rest) -> None:
        """One absolute-form request, sent on in origin form; the answer relayed, then both closed."""
        length = next((int(h.split(":", 1)[1]) for h in headers
                       if h.lower().startswith("content-length:")), 0)
        while len(rest) < length:
            rest += conn.recv(65536)
        kept = [h for h in headers if not h.lower().startswith(("connection:", "proxy-connection:"))]
        path = url.path + (f"?{url.query}" if url.query else "")
        head = "\r\n".join([f"{method} {path} {version}", *kept, "Connection: close"]) + "\r\n\r\n"
        upstream = socket.create_connection((url.hostname, url.port or 80))
        upstream.sendall(head.encode("latin-1") + rest)
        answer, body = _read_head(upstream)
        lines = [h for h in answer.split(b"\r\n") if not h.lower().startswith(b"connection:")]
        conn.sendall(b"\r\n".join([*lines, b"Connection: close"]) + b"\r\n\r\n" + body)
        _pipe(conn, upstream)

    def stop(self) -> None:
        self._server.stop()


class TLSFront:
    """``https://localhost:PORT`` in front of a plain-http server at ``target`` (host, port)."""

    def __init__(self, cert: Path, key: Path, target: tuple[str, int]) -> None:
        self._context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self._context.load_cert_chain(cert, key)
        self._target = target
        self._server = _Server(self._handle)
        self.url = f"https://localhost:{self._server.port}"

    def _handle(self, conn: socket.socket) -> None:
        try:
            tls = self._context.wrap_socket(conn, server_side=True)
        except (ssl.SSLError, OSError):
            return  # a client that does not trust the certificate hangs up here
        _pipe(tls, socket.create_connection(self._target))

    def stop(self) -> None:
        self._server.stop()


def make_ca(folder: Path) -> tuple[Path, Path, Path]:
    """A private CA and a server certificate for ``localhost``/127.0.0.1 it signed:
    (the CA's certificate, the server's certificate, the server's key), as PEM files."""
    now = dt.datetime.now(dt.UTC)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "tierguard test CA")])
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False),
                         critical=True)
          .add_extension(ca_ski, critical=False)
          .sign(ca_key, hashes.SHA256()))
    server = (x509.CertificateBuilder()
              .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
              .issuer_name(ca_name).public_key(key.public_key())
              .serial_number(x509.random_serial_number())
              .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
              .add_extension(x509.SubjectAlternativeName([
                  x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                  critical=False)
              .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
              .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
              .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
                             critical=False)
              .sign(ca_key, hashes.SHA256()))
    paths = folder / "ca.pem", folder / "server.pem", folder / "server.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(server.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return paths
