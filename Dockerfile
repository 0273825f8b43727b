# The image every manifest in deploy/k8s names (tune workers, the study Job, `mlflow server`); it can
# also run `dask worker` for `launch`. Build it from the repository root:
#   docker build -t fmnist-exp:0.1.0 .
# and push it where the cluster pulls images from (docs/scale-out.md, 'Dask' and 'Kubernetes').
FROM python:3.11-slim-bookworm

# Fashion-MNIST from Debian, where the loader looks (/usr/share/datasets/fashion-mnist): no download at run time
RUN apt-get update \
    && apt-get install -y --no-install-recommends dataset-fashion-mnist \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app
COPY pyproject.toml README.md MLproject conda.yaml ./
COPY fmnist_exp ./fmnist_exp
COPY experiments ./experiments
COPY examples ./examples
# editable: the study files stay in /app/experiments, where the code finds them
RUN pip install --no-cache-dir -e ".[cluster]"

RUN useradd --uid 10001 --create-home fmnist
USER 10001
ENV PYTHONUNBUFFERED=1
CMD ["python", "-m", "fmnist_exp", "--help"]
