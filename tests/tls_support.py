"""TLS test material made by ``trustme`` (a throw-away CA, a server certificate for 127.0.0.1, a
client certificate from a second CA), the emulator served over HTTPS, and a loopback CONNECT proxy
that counts the tunnels it opened."""

from __future__ import annotations

import select
import socket
import threading
from dataclasses import dataclass
from pathlib import Path

import httpx
import trustme
from support import ManagedProcess, free_port, python_module, wait_until


@dataclass(frozen=True)
class TlsFiles:
    ca: Path  # trusts the server certificate
    server_cert: Path
    server_key: Path
    client_ca: Path  # issued the client certificate (the server requires it for mTLS)
    client_cert: Path  # certificate + key in one PEM
    client_key: Path


def make_tls_files(directory: Path) -> TlsFiles:
    directory.mkdir(parents=True, exist_ok=True)
    ca, client_ca = trustme.CA(), trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    client = client_ca.issue_cert("capillary-connector@example.com")
    files = TlsFiles(*(directory / n for n in ("ca.pem", "server.pem", "server.key", "client-ca.pem",
                                              "client.pem", "client.key")))
    ca.cert_pem.write_to_path(str(files.ca))
    server.cert_chain_pems[0].write_to_path(str(files.server_cert))
    for pem in server.cert_chain_pems[1:]:
        pem.write_to_path(str(files.server_cert), append=True)
    server.private_key_pem.write_to_path(str(files.server_key))
    client_ca.cert_pem.write_to_path(str(files.client_ca))
    client.cert_chain_pems[0].write_to_path(str(files.client_cert))
    client.private_key_pem.write_to_path(str(files.client_key))
    return files


def start_https_emulator(tmp_path: Path, tls: TlsFiles, *args: str, mtls: bool = False) -> tuple[str, ManagedProcess]:
    """The project's emulator over HTTPS (optionally requiring a client certificate)."""
    port = free_port()
    extra = ["--tls-cert", str(tls.server_cert), "--tls-key", str(tls.server_key)]
    if mtls:
        extra += ["--tls-client-ca", str(tls.client_ca)]
    proc = ManagedProcess(python_module("connector.dev.emulator", "--port", str(port), *extra, *args),
                          log_path=tmp_path / f"emulator-{port}.log")
    url = f"https://127.0.0.1:{port}"
    cert = (str(tls.client_cert), str(tls.client_key)) if mtls else None
    import ssl

    ctx = ssl.create_default_context(cafile=str(tls.ca))
    if cert:
        ctx.load_cert_chain(*cert)
    wait_until(lambda: httpx.get(f"{url}/__emulator/health", timeout=1, verify=ctx).status_code == 200, 30,
               what="HTTPS emulator")
    return url, proc


class ConnectProxy:
    """An HTTP CONNECT proxy on 127.0.0.1 that only tunnels to 127.0.0.1, optionally requiring
    ``Proxy-Authorization``; ``targets`` lists the host:port of each tunnel it opened."""

    def __init__(self, authorization: str | None = None) -> None:
        self.authorization = authorization
        self.targets: list[str] = []
        self.refused = 0
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(16)
        self.port = self._sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self._closed = True
        self._sock.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = conn.recv(4096)
                if not chunk:
                    return
                head += chunk
            lines = head.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
            method, target, _ = lines[0].split(" ", 2)
            headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:] if ":" in line)}
            host, _, port = target.rpartition(":")
            if self.authorization is not None and headers.get("proxy-authorization") != self.authorization:
                self.refused += 1
                conn.sendall(b"HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic\r\n"
                             b"Content-Length: 0\r\n\r\n")
                return
            if method != "CONNECT" or host != "127.0.0.1":  # loopback only
                conn.sendall(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
                return
            self.targets.append(target)
            with socket.create_connection((host, int(port))) as upstream:
                conn.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
                pair = {conn: upstream, upstream: conn}
                while True:
                    readable, _, _ = select.select(list(pair), [], [], 30)
                    if not readable:
                        return
                    for s in readable:
                        data = s.recv(65536)
                        if not data:
                            return
                        pair[s].sendall(data)
