# usagebot container image (docs/operations.md, "Container"). Build: docker build -t usagebot .
# Every RUN step below is exercised by tests/deploy/test_recipes.py in a fresh virtualenv.

# -- build: the wheel, from exactly the files the package needs
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY bot ./bot
COPY rules ./rules
COPY integrations ./integrations
COPY storage ./storage
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

# -- runtime: the wheel and its dependencies in a virtualenv, run as an unprivileged user
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    USAGEBOT_CONFIG=/etc/usagebot/config.toml \
    PATH=/opt/usagebot/venv/bin:$PATH
RUN useradd --system --uid 10001 --home-dir /var/lib/usagebot --create-home usagebot
COPY --from=build /wheels /wheels
RUN python -m venv /opt/usagebot/venv && /opt/usagebot/venv/bin/pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
USER usagebot
WORKDIR /var/lib/usagebot
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s CMD ["python", "-c", "import urllib.request, sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=4).status == 200 else 1)"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["usagebot"]
CMD ["serve"]
