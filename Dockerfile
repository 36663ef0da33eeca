# One image for every modelgate process; docker-compose.yml picks the command.
FROM python:3.11-slim
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
