"""A real S3-protocol server for the tests: moto's server app on 127.0.0.1, with fault injection.

It is moto's ``ThreadedMotoServer`` with two additions in front of the app:

* faults: answer 5xx to the next N requests that match a method and key fragment, or
  stop the server (every open connection cut) when such a request arrives;
* atomic conditional writes: moto checks ``If-None-Match``/``If-Match`` and then writes in
  two steps; S3, MinIO and R2 do both atomically. Requests carrying those headers are
  serialised so that the server under test has S3's semantics.

Data lives in moto's in-process backend, so it survives ``stop()`` / ``start()`` on the
same port, like a real server restarting.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
from werkzeug.serving import BaseWSGIServer, make_server

ACCESS_KEY = "fragua-test-key"
SECRET_KEY = "fragua-test-secret-value"
REGION = "us-east-1"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class Fault:
    method: str
    fragment: str
    times: int  # how many matching requests get the fault
    status: int = 503  # 0: stop the server instead of answering
    armed_by: tuple[str, str] | None = None  # (method, fragment) of a request that must come first
    seen: int = 0
    hits: list[str] = field(default_factory=list)

    def matches(self, method: str, path: str) -> bool:
        if self.armed_by is not None:
            if method == self.armed_by[0] and self.armed_by[1] in path:
                self.armed_by = None
            return False
        return method == self.method and self.fragment in path


class _Handler(MotoRequestHandler):
    """Remembers its connection so that stop() can cut it, as a dying server would."""

    def setup(self) -> None:
        super().setup()
        self.server.connections.add(self.connection)  # type: ignore[attr-defined]

    def finish(self) -> None:
        self.server.connections.discard(self.connection)  # type: ignore[attr-defined]
        super().finish()


class S3TestServer:
    def __init__(self) -> None:
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.requests: list[tuple[str, str]] = []
        self._faults: list[Fault] = []
        self._lock = threading.Lock()
        self._conditional = threading.Lock()
        self._app = DomainDispatcherApplication(create_backend_app)
        self._server: BaseWSGIServer | None = None
        self._thread: threading.Thread | None = None
        self.on_stop: Callable[[], None] | None = None

    # lifecycle --------------------------------------------------------------------------

    def start(self) -> None:
        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request otherwise
        server = make_server("127.0.0.1", self.port, self._wsgi, threaded=True, request_handler=_Handler)
        server.connections = set()  # type: ignore[attr-defined]
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        for connection in list(server.connections):  # type: ignore[attr-defined]
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if self._thread is not None:
            self._thread.join(timeout=10)

    @property
    def running(self) -> bool:
        return self._server is not None

    def restart_after(self, seconds: float) -> threading.Thread:
        def later() -> None:
            time.sleep(seconds)
            self.start()

        thread = threading.Thread(target=later, daemon=True)
        thread.start()
        return thread

    # faults -----------------------------------------------------------------------------

    def fail(self, method: str, fragment: str, *, times: int, status: int = 503, armed_by: tuple[str, str] | None = None) -> Fault:
        """Answer ``status`` to the next ``times`` requests of ``method`` whose path has ``fragment``
        (only once a request matching ``armed_by`` has been served, when given)."""
        fault = Fault(method, fragment, times, status, armed_by)
        with self._lock:
            self._faults.append(fault)
        return fault

    def stop_on(self, method: str, fragment: str, *, after: int = 0) -> Fault:
        """Stop the server (cutting every connection) at the (after+1)-th matching request."""
        fault = Fault(method, fragment, times=1, status=0, seen=-after)
        with self._lock:
            self._faults.append(fault)
        return fault

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def _fault_for(self, method: str, path: str) -> Fault | None:
        with self._lock:
            self.requests.append((method, path))
            for fault in self._faults:
                if fault.matches(method, path):
                    fault.seen += 1
                    if 0 < fault.seen <= fault.times:
                        fault.hits.append(path)
                        return fault
        return None

    def _wsgi(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        method, path = environ["REQUEST_METHOD"], environ.get("PATH_INFO", "")
        fault = self._fault_for(method, path)
        if fault is not None and fault.status == 0:
            threading.Thread(target=self._stop_from_request, daemon=True).start()
            time.sleep(5)  # the connection is cut before this request is answered
            start_response("503 Service Unavailable", [("Content-Type", "text/plain")])
            return [b"stopped"]
        if fault is not None:
            body = (
                f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{"SlowDown" if fault.status == 503 else "InternalError"}</Code>'
                f"<Message>injected by the test server</Message></Error>"
            ).encode()
            start_response(f"{fault.status} Injected", [("Content-Type", "application/xml"), ("Content-Length", str(len(body)))])
            return [body]
        if "HTTP_IF_NONE_MATCH" in environ or "HTTP_IF_MATCH" in environ:
            with self._conditional:
                return list(self._app(environ, start_response))
        return self._app(environ, start_response)

    def _stop_from_request(self) -> None:
        self.stop()
        if self.on_stop is not None:
            self.on_stop()
