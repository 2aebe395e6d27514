# One image for the API and the workers (docker-compose.yml builds it twice: the API with CPU-only
# torch wheels, the workers with the CUDA wheels PyPI ships). Settings come from POLE_* variables.
FROM python:3.11-slim

ARG TORCH_INDEX=https://pypi.org/simple
ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    POLE_DATA_DIR=/data

RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --create-home --uid 1000 pole \
    && mkdir -p /data && chown pole /data

WORKDIR /opt/pole
# torch first, at the pinned pair (as the Makefile does), so installing pole never replaces it.
RUN pip install --index-url "$TORCH_INDEX" --extra-index-url https://pypi.org/simple \
    torch==2.14.1 torchvision==0.29.1
COPY pyproject.toml README.md ./
COPY ml ml
COPY app app
COPY worker worker
COPY migrations migrations
# Editable: app/alembic.ini finds migrations/ beside the packages.
RUN pip install -e .

USER pole
VOLUME /data
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s \
    CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2)" || exit 1
CMD ["pole", "serve", "--host", "0.0.0.0", "--port", "8000"]
