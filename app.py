"""mtp demo: see a language model guess the future, and make decoding faster without changing a token.

    python app.py                      # http://127.0.0.1:7860, embedded SmolLM2 + shipped checkpoint
    python app.py --host 0.0.0.0 --port 7860 [--model DIR_OR_HUB_ID] [--checkpoint DIR]

The demo's code is the package mtp/demo (one module per job); this file is its entry point.
GPU when one is present, else CPU.
"""

from mtp.demo.server import main

if __name__ == "__main__":
    main(__doc__)
