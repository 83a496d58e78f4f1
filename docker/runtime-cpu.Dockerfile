# kubeserve-runtime, CPU: the model server on onnxruntime, with the bundled sample models.
# Build from the repository root:
#   docker build -f docker/runtime-cpu.Dockerfile -t kubeserve-runtime:0.1.0 .

# --- The virtual environment: kubeserve with onnxruntime and OpenTelemetry (the tracing extra: docs/guide/observability.md),
# every version pinned by constraints.txt.
# Not the operator extra: kopf and kubernetes stay out of the runtime image (tests/deploy/test_packaging.py).
FROM python:3.11.15-slim-bookworm AS venv
# PIP_CONSTRAINT also pins what pip installs to build kubeserve itself (setuptools), which -c does not reach.
# PYTHONSAFEPATH: `python -m` in /src must not import its operator/ folder as the standard library's operator.
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_CONSTRAINT=/src/constraints.txt PYTHONSAFEPATH=1
WORKDIR /src
COPY pyproject.toml constraints.txt README.md ./
COPY runtime/ runtime/
COPY operator/ operator/
RUN python -m venv /opt/kubeserve/venv \
 && /opt/kubeserve/venv/bin/pip install -c constraints.txt '.[cpu,tracing]'

# --- The sample models, built with the samples extra (onnx; scikit-learn and skl2onnx train and export the tabular
# one) added to this stage's copy of the venv: the image copies the venv from the stage above, without them.
FROM venv AS samples
RUN /opt/kubeserve/venv/bin/pip install -c constraints.txt '.[cpu,samples]' \
 && /opt/kubeserve/venv/bin/python -m kubeserve.runtime.samples /opt/kubeserve/samples

# --- The image: the interpreter, the venv and the samples; nothing else from the build.
FROM python:3.11.15-slim-bookworm
COPY --from=venv /opt/kubeserve/venv /opt/kubeserve/venv
COPY --from=samples /opt/kubeserve/samples /opt/kubeserve/samples
# Bytecode was compiled at install time: at run time nothing is written (the root filesystem is read-only).
ENV PATH=/opt/kubeserve/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp
# A numeric user, so that Kubernetes' runAsNonRoot can verify it.
USER 65532:65532
EXPOSE 8080 8001
ENTRYPOINT ["kubeserve-runtime"]
CMD ["serve", "--config", "/etc/kubeserve/runtime.yaml"]
