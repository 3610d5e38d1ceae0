# One image for the API, the Dask scheduler and the Dask workers:
# workers need the project's code to run its tasks.
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY pipeline ./pipeline
COPY api ./api
RUN pip install .
# Not root: a worker runs whatever tasks it is given. data/ is where the embedded
# defaults (SQLite, local files) write when no MongoDB or S3 is configured.
RUN useradd --create-home --uid 10001 imagepipe && mkdir -p data && chown imagepipe data
USER imagepipe
# HOST=0.0.0.0: inside a container only every interface can be reached through a
# published port. Only the API's port is declared: `docker run -P` publishes every
# declared port on every host interface, and the scheduler's 8786 runs any code it
# is sent. Publish the dashboard yourself on loopback if you want it
# (-p 127.0.0.1:8787:8787).
ENV HOST=0.0.0.0 PORT=5000
EXPOSE 5000
CMD ["python", "-m", "api"]
