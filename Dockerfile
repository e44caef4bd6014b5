# One image for the API, the render workers and the webhook workers.
# CPU build by default; for NVIDIA GPUs: --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu124
# (and TORCH_SPEC for a CUDA build of torch that index holds).
FROM python:3.11-slim
ARG TORCH_SPEC="torch==2.13.0"
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
# The tested versions (constraints.txt), except torch, whose build (CPU/CUDA) TORCH_SPEC chooses.
RUN grep -v '^torch==' constraints.txt > /tmp/constraints.txt \
 && pip install --no-cache-dir ${TORCH_INDEX:+--index-url "$TORCH_INDEX"} "$TORCH_SPEC" \
 && pip install --no-cache-dir -c /tmp/constraints.txt '.[worker,api,monitor]'
ENV BATCHRENDER_HOME=/data
VOLUME /data
CMD ["batchrender", "--help"]
