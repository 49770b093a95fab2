# syntax=docker/dockerfile:1

# --- build: a virtualenv with chatstream and its pinned dependencies ---------
FROM python:3.11-slim AS build
WORKDIR /src
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
RUN python -m venv /opt/venv
COPY pyproject.toml constraints.txt README.md ./
COPY src ./src
RUN /opt/venv/bin/pip install -c constraints.txt .

# --- run: the virtualenv, the migrations, a non-root user ----------------------
FROM python:3.11-slim
RUN useradd --system --uid 10001 --home /app chatstream \
 && mkdir -p /app/data /app/spool && chown -R chatstream /app
WORKDIR /app
COPY --from=build /opt/venv /opt/venv
COPY alembic.ini ./
COPY alembic ./alembic
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    CHATSTREAM_HOST=0.0.0.0 \
    CHATSTREAM_PORT=8000 \
    CHATSTREAM_DATABASE_URL=sqlite+aiosqlite:////app/data/chatstream.db \
    CHATSTREAM_SPOOL_DIR=/app/spool
USER chatstream
EXPOSE 8000
VOLUME ["/app/data", "/app/spool"]
HEALTHCHECK --interval=30s --timeout=3s CMD python -c "import urllib.request,sys; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2)" || exit 1
# Migrations first, then the server as PID 1's child-free replacement (exec).
CMD ["sh", "-c", "chatstream migrate && exec chatstream serve"]
