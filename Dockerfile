# The API, the workers, beat and Flower: the locked runtime dependencies only (no
# embedded servers, no honcho).
FROM python:3.11-slim
WORKDIR /app
COPY requirements/runtime.txt requirements/runtime.txt
RUN pip install --no-cache-dir --require-hashes -r requirements/runtime.txt
COPY pyproject.toml README.md ./
COPY api api
COPY cli cli
COPY client client
COPY shared shared
COPY worker worker
COPY migrations migrations
RUN pip install --no-cache-dir --no-deps . && useradd --create-home tally
USER tally
EXPOSE 8000
CMD ["tally", "api", "--bind", "0.0.0.0:8000"]
