"""gunicorn's worker for the API: uvicorn's, with gunicorn's TLS settings applied in full."""

from __future__ import annotations

import ssl
from collections.abc import Callable
from typing import Any

from uvicorn.config import Config

# uvicorn_worker ships no type information.
from uvicorn_worker import UvicornWorker as _UvicornWorker  # type: ignore[import-untyped]


class UvicornWorker(_UvicornWorker):  # type: ignore[misc]
    """uvicorn_worker hands gunicorn's certfile and keyfile to uvicorn, which builds the
    SSLContext itself and never calls gunicorn's `ssl_context` server hook, so a hook that
    raises the minimum TLS version (zapora.gunicorn_conf) would be skipped silently. This
    worker passes uvicorn's context through that hook, as gunicorn's own workers do."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.cfg.is_ssl:
            self.config.ssl_context_factory = self._ssl_context

    def _ssl_context(
        self, _config: Config, default_factory: Callable[[], ssl.SSLContext]
    ) -> ssl.SSLContext:
        context: ssl.SSLContext = self.cfg.ssl_context(self.cfg, default_factory)
        return context
