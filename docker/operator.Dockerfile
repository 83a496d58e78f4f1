# kubeserve-operator: the kopf operator. No model runtime: the base package and the operator extra (kopf, kubernetes).
# Build from the repository root:
#   docker build -f docker/operator.Dockerfile -t kubeserve-operator:0.1.0 .

# --- The virtual environment: kubeserve[operator], every version pinned by constraints.txt.
FROM python:3.11.15-slim-bookworm AS venv
# PIP_CONSTRAINT also pins what pip installs to build kubeserve itself (setuptools), which -c does not reach.
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_CONSTRAINT=/src/constraints.txt
WORKDIR /src
COPY pyproject.toml constraints.txt README.md ./
COPY runtime/ runtime/
COPY operator/ operator/
RUN python -m venv /opt/kubeserve/venv \
 && /opt/kubeserve/venv/bin/pip install -c constraints.txt '.[operator]'

# --- The image: the interpreter and the venv.
FROM python:3.11.15-slim-bookworm
COPY --from=venv /opt/kubeserve/venv /opt/kubeserve/venv
# Bytecode was compiled at install time: at run time nothing is written (the root filesystem is read-only).
# USER: uid 65532 has no /etc/passwd entry, and without POD_ID (the chart sets it) kopf names its peering
# identity after getpass.getuser(), which reads $USER before falling back to the password database.
ENV PATH=/opt/kubeserve/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    USER=kubeserve-operator
# A numeric user, so that Kubernetes' runAsNonRoot can verify it.
USER 65532:65532
ENTRYPOINT ["kubeserve-operator"]
CMD ["run"]
