# chatbot-backend: multi-stage, slim, non-root.
FROM python:3.11-slim AS build
WORKDIR /app
COPY requirements.txt .
RUN python -m venv /venv && /venv/bin/pip install --no-cache-dir -r requirements.txt

FROM python:3.11-slim
RUN useradd --system --uid 10001 --home-dir /app chatbot
WORKDIR /app
COPY --from=build /venv /venv
COPY --chown=chatbot:chatbot . .
ENV PATH=/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    CONFIG_PATH=/app/config.toml \
    HOST=0.0.0.0 \
    PORT=8080
RUN mkdir -p /app/data && chown chatbot:chatbot /app/data
USER chatbot
EXPOSE 8080
HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 \
    CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8080/health', timeout=2).status != 200)"
# Migrations are idempotent; run them, then serve (daphne's CLI through chatbot_site.serve, which
# bounds each connection). No --http-timeout: long streams must survive.
CMD ["sh", "-c", "python manage.py migrate --noinput && exec python -m chatbot_site.serve -b \"$HOST\" -p \"$PORT\" chatbot_site.asgi:application"]
