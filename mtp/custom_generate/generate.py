"""transformers' `generate(custom_generate=<this directory's parent>)` entry: MTP decoding (mtp.hf_generate).

transformers copies this file into its module cache and calls its `generate(model=..., **generate's
arguments)`; the code lives in the installed `mtp` package.
"""

from mtp.hf_generate import generate

__all__ = ["generate"]
