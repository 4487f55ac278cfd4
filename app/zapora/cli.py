"""`zapora` command line: migrate, create-admin, openapi, worker, serve."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import os
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from zapora.settings import Settings


def get_settings() -> Settings:
    # Imported on use: `zapora healthcheck` (the image's HEALTHCHECK, run every 10 s) needs
    # no settings, and importing pydantic costs seconds on a loaded host.
    from zapora.settings import get_settings as load

    return load()


def _migrate(args: argparse.Namespace) -> int:
    from zapora.infra.logging import setup_logging
    from zapora.migrate import upgrade

    settings = get_settings()
    setup_logging(settings.log_level)
    upgrade(settings.database_url, args.revision)
    return 0


async def _create_admin(email: str, password: str, full_name: str) -> str:
    from zapora.services.common import Role
    from zapora.services.context import Infra
    from zapora.services.registry import Services

    infra = Infra.from_settings(get_settings())
    await infra.open()
    try:
        user = await Services.build(infra).auth.register(email, password, full_name, Role.admin)
        return str(user["id"])
    finally:
        await infra.close()


def _create_admin_cmd(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from zapora.api.schemas import RegisterIn
    from zapora.services.common import Conflict

    if args.password_file:
        password = Path(args.password_file).read_text().strip()
    elif os.environ.get("ZAPORA_ADMIN_PASSWORD"):
        password = os.environ["ZAPORA_ADMIN_PASSWORD"]
    else:
        password = getpass.getpass("Password: ")
    try:
        RegisterIn(email=args.email, password=password, full_name=args.full_name)
        user_id = asyncio.run(_create_admin(args.email, password, args.full_name))
    except ValidationError as exc:
        print(f"invalid input: {exc.errors()[0]['msg']}", file=sys.stderr)
        return 2
    except Conflict as exc:
        print(exc.detail, file=sys.stderr)
        return 1
    print(user_id)
    return 0


def _openapi(args: argparse.Namespace) -> int:
    from zapora.api.app import create_app
    from zapora.settings import Environment, Settings

    # The document does not depend on secrets; do not ask for them just to print it.
    print(json.dumps(create_app(Settings(environment=Environment.development)).openapi(), indent=2))
    return 0


async def _run_worker() -> None:
    from zapora.infra.metrics import start_metrics_server
    from zapora.services.context import Infra
    from zapora.services.events import OrderEventConsumer

    settings = get_settings()
    infra = Infra.from_settings(settings)
    await infra.open()
    if settings.worker_metrics_port:
        start_metrics_server(settings.metrics_host, settings.worker_metrics_port)
    consumer = OrderEventConsumer(infra)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, consumer.stop)
    try:
        await consumer.run()
    finally:
        await infra.close()


def _worker(args: argparse.Namespace) -> int:
    from zapora.infra.logging import setup_logging
    from zapora.infra.tracing import setup_tracing

    settings = get_settings()
    setup_logging(settings.log_level)
    setup_tracing(settings.service_name + "-worker", settings.otlp_endpoint)
    asyncio.run(_run_worker())
    return 0


def _serve(args: argparse.Namespace) -> int:
    os.execvp(  # noqa: S606 - replaces this process with gunicorn by design
        sys.executable,
        [
            sys.executable,
            "-m",
            "gunicorn",
            "--config",
            "python:zapora.gunicorn_conf",
            "zapora.api.app:create_app()",
        ],
    )


def _healthcheck(args: argparse.Namespace) -> int:
    """Liveness probe for the container's HEALTHCHECK: the port follows ZAPORA_BIND, the
    scheme ZAPORA_TLS_CERT_FILE (gunicorn_conf serves TLS when it is set)."""
    import ssl
    import urllib.request

    host, _, port = os.environ.get("ZAPORA_BIND", "127.0.0.1:8000").rpartition(":")
    if host in ("", "0.0.0.0", "[::]", "::"):  # noqa: S104 - a wildcard bind, probed on loopback
        host = "127.0.0.1"
    context = None
    scheme = "http"
    if os.environ.get("ZAPORA_TLS_CERT_FILE"):
        scheme = "https"
        # This process asking its own container on loopback whether it lives: no credential
        # is sent, and the edge and the deploy verify the certificate (docs/operator-guide.md).
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    url = f"{scheme}://{host}:{port}/health/live"
    try:
        with urllib.request.urlopen(url, timeout=2, context=context) as r:  # noqa: S310 - fixed scheme
            return 0 if r.status == 200 else 1
    except OSError:
        return 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="zapora", description="Zapora food-ordering API")
    sub = parser.add_subparsers(dest="command", required=True)
    migrate = sub.add_parser("migrate", help="upgrade the database schema (alembic)")
    migrate.add_argument("revision", nargs="?", default="head")
    migrate.set_defaults(func=_migrate)
    admin = sub.add_parser("create-admin", help="create an admin account")
    admin.add_argument("--email", required=True)
    admin.add_argument("--full-name", default="Administrator")
    admin.add_argument("--password-file", help="file holding the password (else prompt)")
    admin.set_defaults(func=_create_admin_cmd)
    sub.add_parser("openapi", help="print the OpenAPI document").set_defaults(func=_openapi)
    sub.add_parser("worker", help="consume the order-event stream").set_defaults(func=_worker)
    sub.add_parser("serve", help="run the API under gunicorn").set_defaults(func=_serve)
    sub.add_parser("healthcheck", help="exit 0 when this host's API is live").set_defaults(
        func=_healthcheck
    )
    args = parser.parse_args(argv)
    try:
        result: int = args.func(args)
    except ValueError as exc:  # settings refused (pydantic's ValidationError is a ValueError)
        print(f"zapora: configuration error: {exc}", file=sys.stderr)
        return 2
    return result


if __name__ == "__main__":
    sys.exit(main())
