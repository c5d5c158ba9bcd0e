# MLflow tracking server with basic auth, PostgreSQL backend and S3 (MinIO) artifacts. Same pins as the
# project (constraints.txt + constraints-overlay.txt: mlflow 3.17.2, Flask-WTF for the auth app's CSRF).
ARG PYTHON_IMAGE=python:3.11-slim-bookworm
FROM ${PYTHON_IMAGE}
ENV PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 \
    DO_NOT_TRACK=true MLFLOW_DISABLE_TELEMETRY=true
COPY constraints.txt /tmp/constraints.txt
COPY infra/docker/constraints-overlay.txt /tmp/constraints-overlay.txt
RUN grep -vE '^(boto3|botocore|s3transfer)==' /tmp/constraints.txt > /tmp/constraints-images.txt \
 && pip install -c /tmp/constraints-images.txt -c /tmp/constraints-overlay.txt \
        'mlflow[auth]==3.17.2' psycopg2-binary boto3 \
 && useradd --create-home --uid 1000 mlflow
COPY infra/mlflow/entrypoint.sh /usr/local/bin/mlflow-entrypoint
RUN chmod 755 /usr/local/bin/mlflow-entrypoint
USER mlflow
EXPOSE 5000
ENTRYPOINT ["/usr/local/bin/mlflow-entrypoint"]
CMD ["--host", "0.0.0.0", "--port", "5000"]
