#!/bin/sh
# Container entry point: wait for PostgreSQL (bounded), apply migrations before the API or a
# worker starts, then become the command. Settings come from the environment:
#   NAS_DATABASE_URL     postgresql+psycopg://... waits for that host; anything else does not
#   NAS_DB_WAIT_SECONDS  how long to wait for the database (default 60)
#   NAS_MIGRATE          0 skips `nas-service db upgrade` (default 1)
set -eu

wait_for_database() {
    case "${NAS_DATABASE_URL:-}" in
        postgres://*|postgresql://*|postgresql+*://*) ;;
        *) return 0 ;;
    esac
    # The image has no pg_isready: a TCP connect to the URL's host and port is enough to know
    # the server is up; the migration step then proves it accepts our credentials.
    python - <<'PY'
import os, socket, sys, time
from urllib.parse import urlsplit

url = urlsplit(os.environ["NAS_DATABASE_URL"])
host, port = url.hostname or "localhost", url.port or 5432
deadline = time.monotonic() + float(os.environ.get("NAS_DB_WAIT_SECONDS", "60"))
while True:
    try:
        socket.create_connection((host, port), timeout=2).close()
        print(f"entrypoint: database {host}:{port} is reachable", file=sys.stderr)
        break
    except OSError as e:
        if time.monotonic() > deadline:
            sys.exit(f"entrypoint: database {host}:{port} not reachable: {e}")
        time.sleep(1)
PY
}

# The subcommand: `nas-service serve ...` -> serve.
command_name=""
if [ "$#" -ge 2 ] && [ "$(basename "$1")" = "nas-service" ]; then
    command_name="$2"
fi

case "$command_name" in
    serve|worker)
        wait_for_database
        if [ "${NAS_MIGRATE:-1}" != "0" ]; then
            echo "entrypoint: nas-service db upgrade" >&2
            nas-service db upgrade
        fi
        ;;
esac

exec "$@"
