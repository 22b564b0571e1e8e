# One Python layer of a cluster's image: pip installs a requirements file (and the files it
# includes with -r/-c) into the cluster's environment, /opt/venv, on top of PARENT. slurmlab
# builds it for its trainer's stack, for the trainer's test tools and for a project's own
# requirements (slurmlab/images.py); only the requirement files are in the build context.
ARG PARENT
FROM ${PARENT}
ARG LAYER
ARG REQUIREMENTS
ARG PIP_INDEX_URL
ARG TORCH_INDEX_URL
COPY requirements /opt/slurmlab/requirements/${LAYER}
RUN pip install --no-cache-dir --disable-pip-version-check --root-user-action=ignore \
      --index-url "${PIP_INDEX_URL}" --extra-index-url "${TORCH_INDEX_URL}" \
      -r "/opt/slurmlab/requirements/${LAYER}/${REQUIREMENTS}"
