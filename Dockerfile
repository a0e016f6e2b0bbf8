# One image for every fxbroker service; docker-compose.yml picks the subcommand.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY sdk ./sdk
COPY service_common ./service_common
COPY web_service ./web_service
COPY ws_service ./ws_service
COPY endpoint_agent ./endpoint_agent
COPY fxbroker ./fxbroker
COPY migrations ./migrations
RUN pip install --no-cache-dir .
RUN useradd --create-home fxbroker
USER fxbroker
ENTRYPOINT ["fxbroker"]
