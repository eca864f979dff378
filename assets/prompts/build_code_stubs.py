"""Build code-completion prompts (a signature and its docstring, no body) from documented pure-Python
functions and methods:

    python assets/prompts/build_code_stubs.py                 # CPython's standard library (PSF licence)
        -> train/code_python_stdlib.jsonl (the committed file was made with CPython 3.11)
    python assets/prompts/build_code_stubs.py --packages networkx sympy mpmath ...
        -> train/code_python_packages.jsonl (installed packages; check each one's licence first)

Besides Code Alpaca's instructions, these give the training mix code of a second kind (completing a
documented function), with the same self-distillation treatment: only the prompt is kept, the
response is the base model's own.
"""
import argparse
import importlib
import inspect
import json
import pkgutil
import random
import sys
import warnings
from pathlib import Path
from types import ModuleType
from typing import Iterator

SKIP = {"antigravity", "this", "idlelib", "tkinter", "turtle", "turtledemo", "test", "lib2to3",
        "ensurepip", "venv", "pydoc_data", "__phello__", "xxlimited"}
INSTRUCTIONS = ["Complete this Python function.", "Implement the function below.",
                "Write the body of this Python function.", "Finish the following code.",
                "Fill in the implementation of this function.", "Here is a function stub. Implement it."]
TRAIN = Path(__file__).resolve().parent / "train"


def stdlib_module_names() -> list[str]:
    return [name for name in sorted(sys.stdlib_module_names) if name not in SKIP and not name.startswith("_")]


def package_module_names(package: str) -> list[str]:
    """The package and its public submodules, without test suites."""
    root = importlib.import_module(package)
    found = [info.name for info in pkgutil.walk_packages(getattr(root, "__path__", []), package + ".",
                                                         onerror=lambda name: None)]
    return [package] + [name for name in found if "._" not in name and ".tests" not in name]


def documented_functions(module: ModuleType) -> Iterator[tuple[str, object]]:
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


def build(module_names: list[str], out: Path) -> int:
    """Write one prompt per distinct stub; returns how many."""
    seen, rng = set(), random.Random(0)
    partial = out.with_suffix(".partial")  # renamed into place at the end: never a half-written file
    with open(partial, "w", encoding="utf-8") as handle:
        for module_name in module_names:
            try:
                module = importlib.import_module(module_name)
            except Exception:  # platform-only or optional-dependency modules are simply absent
                continue
            for qualified, function in documented_functions(module):
                text = stub(function)
                if text is None or text in seen:
                    continue
                seen.add(text)
                handle.write(json.dumps({"prompt": f"{rng.choice(INSTRUCTIONS)}\n\n{text}", "domain": "code",
                                         "module": module_name, "name": qualified}) + "\n")
    partial.replace(out)
    return len(seen)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--packages", nargs="+", help="installed packages to read instead of the standard library")
    args = parser.parse_args()
    warnings.simplefilter("ignore")  # importing hundreds of modules: deprecation noise only
    if args.packages:
        names = [name for package in args.packages for name in package_module_names(package)]
        out = TRAIN / "code_python_packages.jsonl"
    else:
        names, out = stdlib_module_names(), TRAIN / "code_python_stdlib.jsonl"
    print(f"{build(names, out)} prompts -> {out}")


if __name__ == "__main__":
    main()
