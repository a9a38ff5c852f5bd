"""Serve an app with a chosen HTTP server, for `bench_api.py`.

    python benchmarks/_serve_variant.py SERVER APP PORT [CONFIG]

SERVER: ours (webhook_plugin.runtime.http.server: uvicorn httptools + limits, what
`webhook-plugin serve` runs), uvicorn-httptools, uvicorn-h11 (plain uvicorn),
hypercorn-asyncio, hypercorn-trio. APP: runtime (the reference runtime from
CONFIG) or bare (`_bare_app.py`). With BENCH_NOFILE=N in the environment
it runs under `ulimit -n N`.
"""

from __future__ import annotations

import os
import resource
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))


def load_app(name: str, config_path: str | None):  # type: ignore[no-untyped-def]
    if name == "bare":
        from _bare_app import app

        return app
    from webhook_plugin.runtime.app import create_app
    from webhook_plugin.runtime.config import load_config

    return create_app(load_config(config_path))


def main() -> None:
    if "BENCH_NOFILE" in os.environ:  # `ulimit -n N`, soft and hard
        n = int(os.environ["BENCH_NOFILE"])
        resource.setrlimit(resource.RLIMIT_NOFILE, (n, n))
    server, app_name, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    config_path = sys.argv[4] if len(sys.argv) > 4 else None
    from webhook_plugin.cli import configure_logging

    configure_logging("console", "warning")
    app = load_app(app_name, config_path)
    if server == "ours":
        from webhook_plugin.runtime.http.server import serve

        serve(app, host="127.0.0.1", port=port)
    elif server.startswith("uvicorn-"):
        import uvicorn

        uvicorn.run(
            app,
            host="127.0.0.1",
            port=port,
            http=server.removeprefix("uvicorn-"),
            lifespan="on",
            access_log=False,
            log_level="warning",
        )
    elif server.startswith("hypercorn-"):
        from hypercorn.config import Config

        config = Config()
        config.bind = [f"127.0.0.1:{port}"]
        config.accesslog = None
        config.keep_alive_timeout = 5
        config.read_timeout = 10  # its only protection against slow clients
        config.backlog = 2048
        if server == "hypercorn-trio":
            import trio
            from hypercorn.trio import serve as trio_serve

            trio.run(trio_serve, app, config)
        else:
            import asyncio

            from hypercorn.asyncio import serve as asyncio_serve

            asyncio.run(asyncio_serve(app, config))
    else:
        raise SystemExit(f"unknown server {server!r}")


if __name__ == "__main__":
    main()
