"""gunicorn settings for `zapora serve` and the container: uvicorn workers, graceful drain."""

from __future__ import annotations

import os
import shutil
import ssl
from typing import Any

from zapora.infra.logging import setup_logging

# Before gunicorn logs its first line, so that line is JSON too.
setup_logging(os.environ.get("ZAPORA_LOG_LEVEL", "INFO"))

bind = os.environ.get("ZAPORA_BIND", "0.0.0.0:8000")
workers = int(os.environ.get("ZAPORA_WORKERS", "2"))
worker_class = "zapora.gunicorn_worker.UvicornWorker"
# TLS on the API's port (the edge's upstream, docs/operator-guide.md "Internal TLS"): a
# certificate from the internal CA and its key, both files; unset, the port is plain HTTP
# (development, the app's tests). Read again by every new worker, so a renewed certificate
# is served after a SIGHUP to the master (workers replaced gracefully), without a restart.
certfile = os.environ.get("ZAPORA_TLS_CERT_FILE") or None
keyfile = os.environ.get("ZAPORA_TLS_KEY_FILE") or None
# On SIGTERM gunicorn stops accepting and gives in-flight requests this long to finish.
graceful_timeout = int(os.environ.get("ZAPORA_GRACEFUL_TIMEOUT", "30"))
timeout = 60
# An idle keep-alive connection is closed after this long. Longer than the edge keeps its
# idle upstream connections (nginx's upstream keepalive_timeout, 60 s by default), so
# nginx always closes first: with 5 s, nginx could reuse a connection at the moment the
# API closed it and answer a POST 502 ("upstream prematurely closed connection"; seen in
# a failover bench whose clients paused 5 s between retries). nginx does not resend a POST.
keepalive = 75
accesslog = None
# gunicorn's own lines (boot, worker exits, timeouts) join the same JSON stream on stdout.
logconfig_dict: dict[str, Any] = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"loguru": {"class": "zapora.infra.logging.InterceptHandler"}},
    "root": {"level": "INFO", "handlers": ["loguru"]},
    "loggers": {
        "gunicorn.error": {"handlers": ["loguru"], "level": "INFO", "propagate": False},
        "gunicorn.access": {"handlers": [], "propagate": False},
    },
}
# The runtime control socket is not used; its default lives in $HOME, which the image lacks.
control_socket_disable = True
# Workers must not share a connection pool created before fork.
preload_app = False


def ssl_context(config: Any, default_ssl_context_factory: Any) -> ssl.SSLContext:
    """TLS 1.3 only: every client of this port is ours (the edge, the deploy's checks)."""
    context: ssl.SSLContext = default_ssl_context_factory()
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    return context


def on_starting(server: Any) -> None:
    # Stale files from a previous run would be summed into the new counters.
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if directory:
        shutil.rmtree(directory, ignore_errors=True)
        os.makedirs(directory, exist_ok=True)


def when_ready(server: Any) -> None:
    """Prometheus metrics on their own listener (ZAPORA_METRICS_PORT, 0 = off), never on the
    public port: the counters include revenue. Served by the master, summed over workers."""
    from zapora.infra.metrics import start_metrics_server

    port = int(os.environ.get("ZAPORA_METRICS_PORT", "9110"))
    if port:
        start_metrics_server(os.environ.get("ZAPORA_METRICS_HOST", "0.0.0.0"), port)  # noqa: S104


def child_exit(server: Any, worker: Any) -> None:
    from zapora.infra.metrics import mark_process_dead

    mark_process_dead(worker.pid)
