# The producer and the trainer in one image; docker-compose.yml picks the program by command.
#   docker build -t stream-trainer .
#   docker run --rm stream-trainer stream-trainer run --config /app/configs/docker.yaml
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TF_CPP_MIN_LOG_LEVEL=1

WORKDIR /app

# The pinned dependencies first, in their own layer: TensorFlow is most of the image, and a
# change to our code should not download it again.
COPY pyproject.toml README.md ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

COPY stream_trainer ./stream_trainer
COPY producer ./producer
RUN pip install --no-deps .
COPY configs ./configs

# Not root. The /data folders exist in the image, owned by the user, so that named volumes
# mounted there start out writable.
RUN useradd --create-home --uid 1000 app \
    && mkdir -p /data/checkpoints /data/export /data/snapshots /data/tensorboard \
    && chown -R app:app /data
USER app

# Trainer and producer metrics (configs/docker.yaml).
EXPOSE 9100 9101

CMD ["stream-trainer", "run", "--config", "/app/configs/docker.yaml"]
