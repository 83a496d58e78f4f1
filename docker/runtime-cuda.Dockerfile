# kubeserve-runtime, CUDA: the model server on onnxruntime-gpu, with the bundled sample models.
# Build from the repository root:
#   docker build -f docker/runtime-cuda.Dockerfile -t kubeserve-runtime-cuda:0.1.0 .
#
# onnxruntime-gpu 1.31 from PyPI is built for CUDA 13 and cuDNN 9 (libcudart.so.13, libcublas.so.13,
# nvidia-cudnn-cu13): the base is NVIDIA's CUDA 13.0 runtime with cuDNN, which needs an NVIDIA driver
# >= 580 on the node. Ubuntu 24.04's Python is 3.12; every pinned dependency has wheels for it.

# --- The virtual environment: kubeserve with onnxruntime-gpu and OpenTelemetry (the tracing extra:
# docs/guide/observability.md). constraints.txt pins everything else;
# Not the operator extra: kopf and kubernetes stay out of the runtime image (tests/deploy/test_packaging.py).
# onnxruntime-gpu is not in it (it cannot share a venv with onnxruntime), so it is pinned here, to the
# same release as the CPU image's onnxruntime.
FROM nvidia/cuda:13.0.2-cudnn-runtime-ubuntu24.04 AS venv
ARG DEBIAN_FRONTEND=noninteractive
# PIP_CONSTRAINT also pins what pip installs to build kubeserve itself (setuptools), which -c does not reach.
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_CONSTRAINT=/src/constraints.txt
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml constraints.txt README.md ./
COPY runtime/ runtime/
COPY operator/ operator/
RUN python3 -m venv /opt/kubeserve/venv \
 && /opt/kubeserve/venv/bin/pip install -c constraints.txt '.[gpu,tracing]' 'onnxruntime-gpu==1.31.1'

# --- The sample models (plain ONNX files, the same for every image), built with the samples extra (onnx;
# scikit-learn and skl2onnx for the tabular one) in a throwaway stage.
FROM python:3.11.15-slim-bookworm AS samples
# PIP_CONSTRAINT also pins what pip installs to build kubeserve itself (setuptools), which -c does not reach.
# PYTHONSAFEPATH: `python -m` in /src must not import its operator/ folder as the standard library's operator.
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_CONSTRAINT=/src/constraints.txt PYTHONSAFEPATH=1
WORKDIR /src
COPY pyproject.toml constraints.txt README.md ./
COPY runtime/ runtime/
COPY operator/ operator/
RUN pip install -c constraints.txt '.[samples]' \
 && python -m kubeserve.runtime.samples /opt/kubeserve/samples

# --- The image: CUDA and cuDNN from the base, Python, the venv and the samples.
FROM nvidia/cuda:13.0.2-cudnn-runtime-ubuntu24.04
ARG DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 ca-certificates \
 && rm -rf /var/lib/apt/lists/*
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
