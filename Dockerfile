# nas-service image: the API (`nas-service serve`, the default command) and workers
# (`nas-service worker`) run from this one image.
#
#   docker build -t nas-service .                       # CPU build of torch
#   docker build -t nas-service:cuda \
#     --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu130 .   # a CUDA build
#   (pick the index of the CUDA version your driver supports)
#
# Fashion-MNIST comes from the Debian package dataset-fashion-mnist when the image's apt sources
# have it (Debian bookworm does). Otherwise, mount the four idx files read-only at
# /usr/share/datasets/fashion-mnist (or mount a folder of tasks and set NAS_DATASETS_DIR).

FROM python:3.11-slim

ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG TORCH_VERSION=2.13.0
ARG INSTALL_FASHION_MNIST=1

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    NAS_DATA_DIR=/var/lib/nas-service

RUN set -eux; \
    if [ "$INSTALL_FASHION_MNIST" = 1 ]; then \
      apt-get update; \
      if apt-get install -y --no-install-recommends dataset-fashion-mnist; then :; else \
        echo "dataset-fashion-mnist is not in this image's apt sources:" \
             "mount the data at /usr/share/datasets/fashion-mnist"; \
      fi; \
      rm -rf /var/lib/apt/lists/*; \
    fi

# torch alone and first: the largest layer, cached across changes to the project, and from the
# index the build argument names (the project's own range would otherwise let pip pick a build).
RUN pip install --index-url "$TORCH_INDEX_URL" "torch==$TORCH_VERSION"

WORKDIR /app
COPY . /app
RUN pip install "/app[postgres]" \
    && python -c "import torch, nas_service; print('nas-service', nas_service.__version__, 'torch', torch.__version__)"

RUN useradd --create-home --uid 10001 --user-group nas \
    && mkdir -p /var/lib/nas-service \
    && chown nas:nas /var/lib/nas-service \
    && chmod 0755 /app/docker/entrypoint.sh
USER nas

# The embedded default keeps its SQLite file and checkpoints here; mount a volume on it.
VOLUME ["/var/lib/nas-service"]
EXPOSE 8000

# python:3.11-slim has no curl; the port is the one in the default CMD.
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
  CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4).status != 200)"]

ENTRYPOINT ["/app/docker/entrypoint.sh"]
CMD ["nas-service", "serve", "--host", "0.0.0.0", "--port", "8000"]
