FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY api api
COPY cli cli
COPY shared shared
COPY worker worker
COPY migrations migrations
RUN pip install --no-cache-dir . \
    && useradd --create-home tally \
    && mkdir -p /var/lib/tally-metrics && chown tally /var/lib/tally-metrics
USER tally
EXPOSE 8000
CMD ["tally", "api", "--bind", "0.0.0.0:8000"]
