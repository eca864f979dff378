"""Build train/code_python_stdlib.jsonl: code-completion prompts (a signature and its docstring, no
body) from the pure-Python functions and methods of CPython's standard library (PSF licence).

Code Alpaca's 2017 prompts are the only other code prompts bundled; these add a second code source
(completing a documented function) with the same self-distillation treatment: only the prompt is
kept, the response is the base model's own. Run with the interpreter whose stdlib you want
(the committed file was made with CPython 3.11):  python assets/prompts/build_stdlib_code.py
"""
import importlib
import inspect
import json
import random
import sys
import warnings
from pathlib import Path

SKIP = {"antigravity", "this", "idlelib", "tkinter", "turtle", "turtledemo", "test", "lib2to3",
        "ensurepip", "venv", "pydoc_data", "__phello__", "xxlimited"}
INSTRUCTIONS = ["Complete this Python function.", "Implement the function below.",
                "Write the body of this Python function.", "Finish the following code.",
                "Fill in the implementation of this function.", "Here is a function stub. Implement it."]
OUT = Path(__file__).resolve().parent / "train" / "code_python_stdlib.jsonl"


def documented_functions(module):
    """(qualified name, function) for public pure-Python functions and methods defined in module."""
    for name, obj in vars(module).items():
        if name.startswith("_"):
            continue
        if inspect.isfunction(obj) and obj.__module__ == module.__name__:
            yield name, obj
        elif inspect.isclass(obj) and obj.__module__ == module.__name__:
            for method_name, method in vars(obj).items():
                if inspect.isfunction(method) and not method_name.startswith("_"):
                    yield f"{name}.{method_name}", method


def stub(function) -> str | None:
    """The function's def line(s) and docstring, indented as source, or None if unsuitable."""
    doc = inspect.getdoc(function)
    if not doc or not 60 <= len(doc) <= 1200 or '"""' in doc:
        return None
    try:
        signature = str(inspect.signature(function))
    except (TypeError, ValueError):
        return None
    if len(signature) > 200 or " at 0x" in signature:
        return None
    body = "\n".join(("    " + line) if line else "" for line in doc.splitlines())
    return f"def {function.__name__}{signature}:\n    \"\"\"{body.lstrip()}\n    \"\"\"\n"


def main() -> None:
    warnings.simplefilter("ignore")
    seen, rng = set(), random.Random(0)
    partial = OUT.with_suffix(".partial")  # renamed into place at the end: never a half-written file
    with open(partial, "w", encoding="utf-8") as handle:
        for module_name in sorted(sys.stdlib_module_names):
            if module_name in SKIP or module_name.startswith("_"):
                continue
            try:
                module = importlib.import_module(module_name)
            except Exception:  # platform-only modules (msvcrt, winreg, ...) are simply absent
                continue
            for qualified, function in documented_functions(module):
                text = stub(function)
                if text is None or text in seen:
                    continue
                seen.add(text)
                handle.write(json.dumps({"prompt": f"{rng.choice(INSTRUCTIONS)}\n\n{text}", "domain": "code",
                                         "module": module_name, "name": qualified}) + "\n")
    partial.replace(OUT)
    print(f"{len(seen)} prompts -> {OUT}")


if __name__ == "__main__":
    main()
