"""A local S3-compatible server for tests: moto's standalone server on 127.0.0.1.

Run as a script, it prints the port it listens on and serves until its
standard input closes (so it never outlives the test that started it).
"""

from __future__ import annotations

import logging
import sys


def main() -> None:
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    print(server._server.server_port, flush=True)  # noqa: SLF001 - moto exposes no accessor
    try:
        sys.stdin.read()
    finally:
        server.stop()


if __name__ == "__main__":
    main()
