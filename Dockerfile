# The app on a CUDA GPU, e.g. as a Hugging Face Docker Space. Installed the way CI and users install:
# scripts/setup.sh, its CUDA branch (SETUP_GPU=1: no GPU is visible while the image builds).
#
#   docker build -t cot-finetune .
#   docker run --gpus all -p 7860:7860 cot-finetune        # http://127.0.0.1:7860
#
# Base: PyPI's torch 2.13.0 (the pin in constraints-cpu.txt) is built for CUDA 13.0 and brings its own
# CUDA, cuDNN and NCCL libraries as wheels, so the base image only has to match that CUDA version (the
# host driver must be >= 580) and set up the NVIDIA container runtime. Ubuntu 24.04 gives Python 3.12.
FROM nvidia/cuda:13.0.2-base-ubuntu24.04

ARG DEBIAN_FRONTEND=noninteractive

# Python 3.12 with its headers, and a C compiler: Triton (Unsloth's kernels, torch.compile) compiles a
# small launcher with them on first use. Pinned to the upstream versions of Ubuntu 24.04; the glob
# takes Ubuntu's security updates, and a base image on another release fails here instead of drifting.
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
        gcc=4:13.2.* \
        libc6-dev=2.39-* \
        python3.12=3.12.3-* \
        python3.12-dev=3.12.3-* \
        python3.12-venv=3.12.3-* \
    && rm -rf /var/lib/apt/lists/*

# Hugging Face Spaces run the container as uid 1000, which Ubuntu 24.04 gives to its 'ubuntu' user.
# The virtual environment belongs to that user, so setup.sh installs and converts as the user who runs.
RUN if id -u ubuntu >/dev/null 2>&1; then userdel --remove ubuntu; fi \
    && useradd --create-home --uid 1000 --shell /bin/bash user \
    && install -d -o user -g user /home/user/app /opt/venv

USER 1000:1000
# app.py's --host and --port default to these (Gradio reads GRADIO_SERVER_*): `docker run -e` changes them.
ENV HOME=/home/user \
    PATH=/opt/venv/bin:$PATH \
    VIRTUAL_ENV=/opt/venv \
    HF_HOME=/home/user/.cache/huggingface \
    PYTHONUNBUFFERED=1 \
    GRADIO_SERVER_NAME=0.0.0.0 \
    GRADIO_SERVER_PORT=7860 \
    PORT=7860
WORKDIR /home/user/app
RUN python3.12 -m venv /opt/venv

# What setup.sh reads, first: editing the app's code then reuses this layer (torch and the stack).
# It also converts the embedded model once into ~/.cache/cot-finetune, so the app starts on it at once.
COPY --chown=user:user requirements.txt requirements-gpu.txt requirements-dev.txt constraints-cpu.txt ./
COPY --chown=user:user scripts/setup.sh scripts/
COPY --chown=user:user finetune/__init__.py finetune/
COPY --chown=user:user finetune/models/__init__.py finetune/models/embedded.py finetune/models/
RUN SETUP_GPU=1 PIP_NO_CACHE_DIR=1 PIP_CONSTRAINT=/home/user/app/constraints-cpu.txt bash scripts/setup.sh

COPY --chown=user:user . .

EXPOSE 7860
HEALTHCHECK --interval=30s --timeout=10s --start-period=180s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/' % os.environ.get('GRADIO_SERVER_PORT', '7860'), timeout=5)"]
CMD ["python", "app.py", "--preload", "embedded"]
