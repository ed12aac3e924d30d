"""Runs in the Neutron venv (.venv-neutron), never in labgate's: the real Neutron API for the test suite.

    python -I neutron_host.py schema --config-file neutron.conf --config-file ml2_conf.ini
    python -I neutron_host.py serve --port 0 --port-file FILE --config-file neutron.conf --config-file ml2_conf.ini

`schema` builds the database the way Neutron's own unit tests do (the alembic migrations only run on MySQL/MariaDB):
create_all from the models at HEAD, then `neutron-db-manage stamp heads`.

`serve` hosts the WSGI app `neutron.wsgi.api:application` (Neutron 29 has no neutron-server command) on a threading
wsgiref server bound to 127.0.0.1, writes the port it listens on to --port-file once it accepts connections, stops
cleanly on SIGTERM, and stops by itself when its parent (the test run) is gone. Neutron reads its configuration from
sys.argv (oslo.config): every argument other than --port and --port-file is passed to it.

Identity (auth_strategy = noauth, no Keystone): a request without X-Project-Id acts as admin (Neutron's noauth
pipeline: project `fake_project_id`, admin context). Neutron's noauth pipeline ignores an X-Project-Id header: such a
request falls back to an admin context with no project and sees everything. So `serve` wraps the app: a request with
X-Project-Id gets the context Keystone's auth_token + Neutron's keystonecontext would give it, a non-admin member of
that project (X-User-Id defaults to `user-<project>`, X-Roles to `member,reader`; send X-Roles to change them, and
X-Service-Roles: service to act as Nova does with its service token).

Run it with `python -I` so that this file's folder (tests/openstack) is not put on sys.path.
"""

from __future__ import annotations

import argparse
import configparser
import os
import signal
import socketserver
import sys
import threading
import time
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server


def database_url(neutron_args: list[str]) -> str:
    """[database] connection from the --config-file arguments (the last file that sets it wins, as in oslo)."""
    url = None
    files = [neutron_args[i + 1] for i, a in enumerate(neutron_args) if a == "--config-file"]
    for path in files:
        parser = configparser.ConfigParser(interpolation=None)
        parser.read(path)
        if parser.has_option("database", "connection"):
            url = parser.get("database", "connection")
    if not url:
        raise SystemExit(f"no [database] connection in {files}")
    return url


def schema(neutron_args: list[str]) -> None:
    import sqlalchemy

    from neutron.db.migration.models import head

    engine = sqlalchemy.create_engine(database_url(neutron_args))
    head.get_metadata().create_all(engine)
    engine.dispose()
    print(f"schema: {len(head.get_metadata().tables)} tables created", flush=True)

    from neutron.db.migration import cli

    sys.argv = ["neutron-db-manage", *neutron_args, "stamp", "heads"]
    cli.main()
    print("schema: stamped heads", flush=True)


class ThreadingWSGIServer(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True
    allow_reuse_address = True


class QuietHandler(WSGIRequestHandler):
    def address_string(self) -> str:  # no reverse DNS per request
        return self.client_address[0]


def project_scoped(app):
    """A request with X-Project-Id acts as a member of that project (see the module's docstring)."""
    from neutron_lib import context

    def wrapped(environ, start_response):
        project = environ.get("HTTP_X_PROJECT_ID")
        if project:
            environ.setdefault("HTTP_X_USER_ID", f"user-{project}")
            environ.setdefault("HTTP_X_ROLES", "member,reader")
            environ["neutron.context"] = context.Context.from_environ(environ)
        return app(environ, start_response)

    return wrapped


def exit_with_parent() -> None:
    """Never outlive the test run that started this server (say it was killed, so its teardown never ran)."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1)
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def serve(port: int, port_file: str, neutron_args: list[str]) -> None:
    exit_with_parent()
    sys.argv = ["neutron-api", *neutron_args]
    from neutron.wsgi.api import application

    if application is None:
        raise SystemExit("neutron.wsgi.api did not build the application")
    server = make_server("127.0.0.1", port, project_scoped(application), server_class=ThreadingWSGIServer,
                         handler_class=QuietHandler)

    def stop(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    chosen = server.server_address[1]
    tmp = f"{port_file}.tmp"
    with open(tmp, "w") as f:
        f.write(f"{chosen}\n")
    os.replace(tmp, port_file)
    print(f"serving the Neutron API on http://127.0.0.1:{chosen}/", flush=True)
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        print("stopped", flush=True)
        sys.stderr.flush()
        os._exit(0)  # Neutron leaves non-daemon threads behind; the database is a file already committed to


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=["schema", "serve"])
    parser.add_argument("--port", type=int, default=0, help="0: any free port (written to --port-file)")
    parser.add_argument("--port-file")
    args, neutron_args = parser.parse_known_args()
    if args.mode == "schema":
        schema(neutron_args)
    else:
        if not args.port_file:
            parser.error("serve needs --port-file")
        serve(args.port, args.port_file, neutron_args)


if __name__ == "__main__":
    main()
