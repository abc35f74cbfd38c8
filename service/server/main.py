"""``ats-serve``: start the server, log its effective configuration, drain on SIGTERM."""

from __future__ import annotations

import json
import logging
import signal
import threading
from collections.abc import Sequence

from service.config import describe, load_config
from service.logs import setup_logging

log = logging.getLogger("service")


def main(argv: Sequence[str] | None = None) -> int:
    config, sources = load_config(argv)
    setup_logging(config.log_format, config.log_level)
    effective = describe(config, sources)
    log.info(
        "effective configuration: %s",
        json.dumps({k: v["value"] for k, v in effective.items()}),
        extra={"fields": {"config": effective}},
    )
    from service.server.app import Server  # TensorFlow loads here, after logging is set up

    server = Server(config)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda number, frame: stop.set())
    server.start()
    stop.wait()
    server.drain()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
