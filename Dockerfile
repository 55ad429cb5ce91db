# hyperv-operator image: `make docker-build` (needs a Docker engine), linted by `make docker-lint`.
# Runtime dependencies are the exact pins of pyproject.toml's [project.dependencies]; no dev extras.
ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
# gssapi and krb5 (Kerberos auth) build from source against MIT Kerberos' headers.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev libkrb5-dev \
    && rm -rf /var/lib/apt/lists/*
COPY pyproject.toml ./
COPY operator/ operator/
# A virtual environment in /opt/venv: copied whole into the runtime stage, no build tools there.
# The development code (simulated host, local control plane, demo, benchmarks) is removed: the
# runtime never imports it (import-linter contract in pyproject.toml, `make lint`).
RUN python -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir --no-compile . \
    && pkg="$(/opt/venv/bin/python -c 'import hyperv_operator, os; print(os.path.dirname(hyperv_operator.__file__))')" \
    && rm -rf "$pkg/simulator" "$pkg/envtest" "$pkg/demo.py" "$pkg/bench.py" "$pkg/bench_roundtrips.py" \
    && /opt/venv/bin/python -m compileall -q /opt/venv/lib \
    && /opt/venv/bin/hyperv-operator --help > /dev/null

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="hyperv-operator" \
      org.opencontainers.image.description="Kubernetes operator that provisions Hyper-V VMs from base VHDX files" \
      org.opencontainers.image.version="0.1.0" \
      org.opencontainers.image.licenses="Apache-2.0"
# Bytecode is precompiled at build time; the root filesystem is read-only at run time and /tmp is
# an emptyDir, so nothing tries to write next to the code.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp
# MIT Kerberos runtime libraries for Kerberos/Negotiate/CredSSP auth (krb5.conf: mount at /etc/krb5.conf).
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgssapi-krb5-2 libkrb5-3 \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /opt/venv /opt/venv
# 65532: the conventional unprivileged "nonroot" uid/gid; no login shell, no home directory.
USER 65532:65532
WORKDIR /tmp
EXPOSE 8080 8081
ENTRYPOINT ["hyperv-operator"]
CMD ["run", "--all-namespaces"]
