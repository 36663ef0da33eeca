# Stages: build (the project's wheel); azureml-scoring (the scoring container Azure ML runs,
# `docker build --target azureml-scoring`, docs/azure.md); and the last, default stage: one
# image for every modelgate process (docker-compose.yml picks the command).

FROM python:3.11-slim AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY app ./app
COPY workers ./workers
COPY templates ./templates
COPY static ./static
COPY data ./data
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

# The scoring service in its Azure ML mode: the model from AZUREML_MODEL_DIR (Azure ML mounts
# it), liveness /health/live, readiness /health/ready and scoring /score on port 5001; the
# endpoint's router checks the key before a request reaches the container.
FROM python:3.11-slim AS azureml-scoring
ENV PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN useradd --create-home --uid 10001 modelgate
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
USER modelgate
WORKDIR /home/modelgate
EXPOSE 5001
ENTRYPOINT ["python", "-m", "app.serving.azureml"]
CMD ["--host", "0.0.0.0", "--port", "5001"]

# One image for every modelgate process; docker-compose.yml picks the command.
FROM python:3.11-slim AS modelgate
ENV PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1 MODELGATE_HOME=/data
RUN useradd --create-home --uid 10001 modelgate && mkdir -p /data && chown modelgate /data
WORKDIR /srv/modelgate
COPY pyproject.toml README.md ./
COPY app ./app
COPY workers ./workers
COPY templates ./templates
COPY static ./static
COPY data ./data
RUN pip install --no-cache-dir -e .
USER modelgate
EXPOSE 5000 8000 8443
CMD ["modelgate", "up"]
