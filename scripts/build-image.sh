#!/usr/bin/env bash
# Build the cluster image from images/. Docker's layer cache makes this a no-op when nothing changed.
set -euo pipefail
cd "$(dirname "$0")/.."

: "${SLURMLAB_IMAGE:?see .env}" "${BASE_IMAGE:?see .env}"
# The build context is assembled in a temporary folder, so an installed slurmlab never writes
# into its own package: images/ plus the extra CA certificates for HTTPS inside the build (pip)
# and in jobs (dataset downloads).
context=$(mktemp -d "${TMPDIR:-/tmp}/slurmlab-image.XXXXXX")
trap 'rm -rf "${context}"' EXIT
cp -pR images/. "${context}/"
mkdir -p "${context}/context"
if [[ -n ${EXTRA_CA_BUNDLE:-} ]]; then
    [[ -r ${EXTRA_CA_BUNDLE} ]] || { echo "error: EXTRA_CA_BUNDLE=${EXTRA_CA_BUNDLE} is not readable; fix the path in .env or set it empty" >&2; exit 1; }
    cp "${EXTRA_CA_BUNDLE}" "${context}/context/extra-ca.pem"
else
    : >"${context}/context/extra-ca.pem"
fi

log=${TMPDIR:-/tmp}/slurmlab-image-build.log
started=${SECONDS}
if docker image inspect "${SLURMLAB_IMAGE}" >/dev/null 2>&1; then
    echo "== checking ${SLURMLAB_IMAGE} (log: ${log})"
else
    echo "== building ${SLURMLAB_IMAGE} (first build downloads torch: several minutes; log: ${log})"
fi
if ! docker build \
    --build-arg BASE_IMAGE="${BASE_IMAGE}" \
    --build-arg PIP_INDEX_URL="${PIP_INDEX_URL}" \
    --build-arg TORCH_INDEX_URL="${TORCH_INDEX_URL}" \
    --build-arg JOB_UID="${JOB_UID}" \
    -t "${SLURMLAB_IMAGE}" "${context}" >"${log}" 2>&1; then
    tail -40 "${log}" >&2
    echo "error: the image build failed (full log: ${log})" >&2
    exit 1
fi
echo "== image ${SLURMLAB_IMAGE} ready ($((SECONDS - started)) s)"
