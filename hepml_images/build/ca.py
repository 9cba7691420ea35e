"""An extra CA bundle for builds behind TLS-intercepting proxies, served to the build only.

The classic builder has no build secrets. The bundle is therefore served over HTTP on the
Docker bridge's gateway address for the length of the build; each network step fetches it,
trusts it, and deletes it again in the same ``RUN`` (see ``render.writers``), so no layer,
label or environment variable of the image keeps it. The URL (not the bundle) is a build
argument, so it shows in ``docker history``; it is stable for a given bundle so that the
layer cache keeps working.
"""

from __future__ import annotations

import hashlib
import threading
from typing import TYPE_CHECKING

from hepml_images.errors import UsageError

if TYPE_CHECKING:
    from pathlib import Path
    from types import TracebackType

    from typing_extensions import Self

    from hepml_images.engine import Engine

#: The environment variable that ``--ca-bundle`` defaults to.
CA_ENV = "HEPML_CA_BUNDLE"
_DEFAULT_GATEWAY = "172.17.0.1"
_PORT_BASE = 20000
_PORT_SPAN = 20000


def read_bundle(path: Path) -> bytes:
    """The bundle's bytes; a clear error when it is not a PEM certificate bundle."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UsageError(
            f"cannot read the CA bundle {path}: {exc.strerror or exc}",
            hint=f"give a PEM file with --ca-bundle or {CA_ENV}",
        ) from None
    if b"-----BEGIN CERTIFICATE-----" not in data:
        raise UsageError(
            f"{path} holds no PEM certificate (no '-----BEGIN CERTIFICATE-----')",
            hint="on Debian the host bundle is /etc/ssl/certs/ca-certificates.crt",
        )
    return data


def bridge_gateway(engine: Engine) -> str:
    """The address build containers reach the host at (the default bridge's gateway)."""
    return engine.gateway() or _DEFAULT_GATEWAY


class CaServer:
    """Serve one bundle at one unguessable path until closed."""

    def __init__(self, data: bytes, host: str) -> None:
        import http.server  # noqa: PLC0415 - only builds with --ca-bundle serve anything

        digest = hashlib.sha256(data).hexdigest()
        self.path = f"/hepml-ca-{digest[:32]}.pem"
        body = data
        served = self.path

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path != served:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/x-pem-file")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002
                del format, args

        preferred = _PORT_BASE + int(digest[:8], 16) % _PORT_SPAN
        try:
            self._server = http.server.ThreadingHTTPServer((host, preferred), Handler)
        except OSError:
            self._server = http.server.ThreadingHTTPServer((host, 0), Handler)
        port = self._server.server_address[1]
        self.url = f"http://{host}:{port}{self.path}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Stop serving (and free the port)."""
        if self._thread.is_alive():
            self._server.shutdown()
        self._server.server_close()
