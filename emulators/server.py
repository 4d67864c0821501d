"""The emulator as a server: moto's application, optionally without its transaction copy and
behind the DynamoDB model (docs/emulators.md).

In a test, ``EmulatorServer(...).start()`` serves on a thread of this process; for the
benchmarks and by hand, ``python -m emulators --port P [--plain-moto] [--store-model
dynamodb]`` serves in its own process.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from typing import Any

from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication,
    MotoRequestHandler,
    create_backend_app,
)
from werkzeug.serving import BaseWSGIServer, make_server

from emulators import moto_transactions
from emulators.dynamodb_model import MODELS, Model, ModelledAws

STORE_MODELS = ("none", *MODELS)


def application(plain_moto: bool = False, store_model: str | Model = "none",
                seed: int | None = None) -> Any:
    """moto's WSGI application as asked: patched unless ``plain_moto``, modelled unless
    ``store_model`` is "none"."""
    moto_transactions.install()
    app: Any = DomainDispatcherApplication(create_backend_app)
    if plain_moto:
        app = moto_transactions.plain_moto(app)
    if store_model != "none":
        model = MODELS[store_model] if isinstance(store_model, str) else store_model
        app = ModelledAws(app, model, seed)
    return app


class EmulatorServer:
    """The emulator on a thread of this process, bound to ``host`` (port 0: a free one)."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, plain_moto: bool = False,
                 store_model: str | Model = "none", seed: int | None = None) -> None:
        self.app = application(plain_moto, store_model, seed)
        self._server: BaseWSGIServer = make_server(host, port, self.app, threaded=True,
                                                   request_handler=MotoRequestHandler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True,
                                        name="emulator")

    @property
    def endpoint(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> EmulatorServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._thread.join()
        self._server.server_close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m emulators",
                                     description="moto, without its whole-table copy per "
                                     "transaction action, optionally behind a model of "
                                     "DynamoDB's latency, conflicts and throttling")
    parser.add_argument("-H", "--host", default="127.0.0.1")
    parser.add_argument("-p", "--port", type=int, default=5000)
    parser.add_argument("--plain-moto", action="store_true",
                        help="keep moto's own transactions (the whole-table copy)")
    parser.add_argument("--store-model", choices=STORE_MODELS, default="none",
                        help="the costs put in front of moto (default none)")
    parser.add_argument("--seed", type=int, default=None,
                        help="the model's random seed (default: a fresh one)")
    args = parser.parse_args(argv)
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no line per request
    server = EmulatorServer(args.host, args.port, args.plain_moto, args.store_model, args.seed)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        server._server.serve_forever()
    except (KeyboardInterrupt, SystemExit):
        pass
