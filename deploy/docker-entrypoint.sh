#!/bin/sh
# Courier's container entrypoint: wait for what this container's role needs, then become its command.
#
# COURIER_WAIT_FOR lists what to wait for before the command starts (space-separated; empty: nothing):
#   database  the database answers            (the migrate job)
#   migrated  the database is at the migrations' head, e.g. after the migrate job ran (web, worker)
#   broker    the Celery broker answers        (worker)
# for at most COURIER_WAIT_TIMEOUT_S seconds (default 120), saying once a second what it still waits
# for. Compose and Kubernetes start containers in no useful order, and podman does not run compose
# healthchecks, so each container waits for its own dependencies (`flask wait-for`, cli/wait.py).
set -e
if [ -n "${COURIER_WAIT_FOR:-}" ]; then
    # shellcheck disable=SC2086 # a list of words on purpose
    flask wait-for --timeout "${COURIER_WAIT_TIMEOUT_S:-120}" $COURIER_WAIT_FOR
fi
# exec: the command becomes PID 1 and receives the stop signal itself (gunicorn drains on SIGTERM).
exec "$@"
