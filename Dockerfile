# One image for the API, the render workers and the webhook workers.
# torch is the CPU build by default (TORCH=cpu): torch alone from PyTorch's CPU index, because PyPI's
# Linux wheel is the CUDA build (several GB of nvidia packages, on amd64 and arm64 alike).
#   docker build --build-arg TORCH=cuda .          PyPI's build, for NVIDIA GPUs (CUDA 13)
#   docker build --build-arg TORCH_INDEX=URL .     torch from that index: a mirror of the CPU index, or
#                                                  another CUDA build, https://download.pytorch.org/whl/cuXYZ
# Everything else comes from PyPI at the versions in constraints.txt.
FROM python:3.11-slim-bookworm
ARG TORCH=cpu
ARG TORCH_INDEX=""
RUN apt-get update && apt-get install -y --no-install-recommends redis-tools && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY pyproject.toml README.md constraints.txt ./
COPY jobs jobs
COPY producer producer
COPY worker worker
COPY safety safety
COPY storage storage
COPY provenance provenance
COPY webhooks webhooks
# The tested versions (constraints.txt; its torch==X matches X+cpu and X+cuXYZ too). torch first and
# alone (--no-deps), so that nothing but torch comes from TORCH_INDEX; its dependencies come next.
RUN set -e; \
    torch="torch==$(sed -n 's/^torch==//p' constraints.txt)"; \
    case "$TORCH" in \
      cpu) index="${TORCH_INDEX:-https://download.pytorch.org/whl/cpu}" ;; \
      cuda) index="$TORCH_INDEX" ;; \
      *) echo "TORCH=$TORCH is not a choice: --build-arg TORCH=cpu (the default) or TORCH=cuda" >&2; exit 2 ;; \
    esac; \
    if [ -n "$index" ]; then \
      pip install --no-cache-dir --no-deps --index-url "$index" "$torch" || { \
        echo "no $torch from $index: pass --build-arg TORCH_INDEX=<a mirror of it>," \
             "or --build-arg TORCH=cuda for PyPI's build (several GB)" >&2; exit 1; }; \
    fi; \
    pip install --no-cache-dir -c constraints.txt '.[worker,api,monitor]'; \
    if [ "$TORCH" = cpu ] && [ -z "$TORCH_INDEX" ] && pip list 2>/dev/null | grep -i -E '^(nvidia-|cuda-)'; then \
      echo "TORCH=cpu, yet CUDA packages were installed (above)" >&2; exit 1; \
    fi
ENV BATCHRENDER_HOME=/data
VOLUME /data
CMD ["batchrender", "--help"]
