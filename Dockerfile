# One image for the daemon, the Dask scheduler and the Dask workers: workers must import
# streamimg (tasks reference its functions) with the same Python and library versions.
FROM python:3.11-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends libgl1 libglib2.0-0 \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY pyproject.toml README.md ./
COPY streamimg ./streamimg
COPY topologies ./topologies
RUN pip install --no-cache-dir '.[detect,track,serve,postgres]'
ENV OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1
ENTRYPOINT []
