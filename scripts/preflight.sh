#!/usr/bin/env bash
# Check what every target needs before it does anything: a reachable Docker daemon and Compose.
set -euo pipefail

if ! out=$(docker info --format '{{.ServerVersion}}' 2>&1); then
    echo "error: cannot reach the Docker daemon (${out##*$'\n'})." >&2
    echo "       Start it (e.g. sudo systemctl start docker), or check DOCKER_HOST and that your user may use Docker." >&2
    exit 1
fi
if ! docker compose version >/dev/null 2>&1 && ! command -v docker-compose >/dev/null; then
    echo "error: Docker Compose is missing: install the compose plugin (docker compose) or docker-compose." >&2
    exit 1
fi
