# One image for every fleetflow role; compose.yaml picks the command.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app

COPY pyproject.toml README.md ./
COPY client ./client
COPY coordinator ./coordinator
COPY worker ./worker
COPY examples ./examples
RUN pip install .

# gRPC port of the coordinator.
EXPOSE 50051
CMD ["fleetflow", "--help"]
