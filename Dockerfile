# One image for the API, the Dask scheduler and the Dask workers:
# workers need the project's code to run its tasks.
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY pipeline ./pipeline
COPY api ./api
RUN pip install .
ENV HOST=0.0.0.0 PORT=5000
EXPOSE 5000 8786 8787
CMD ["python", "-m", "api"]
