"""Make the ``tensorrt-stubs`` package usable by mypy (``python trt_stubs.py OUTDIR``).

The published stubs (generated with pybind11-stubgen) cannot be used as installed:

- they are installed as ``tensorrt/__init__.pyi`` and ``tensorrt_bindings/*.pyi`` without a
  ``py.typed`` marker, so mypy ignores them in site-packages (PEP 561) and every TensorRT name
  silently becomes ``Any``;
- ``tensorrt_bindings/tensorrt.pyi`` has syntax errors mypy refuses to get past (parameters named
  ``in``, parameters without a default after ones with a default);
- the module defines ``bool = DataType.BOOL``, which shadows the builtin in every ``-> bool``
  annotation; some annotations are ``...`` or the undefined ``capsule``.

:func:`prepare_stubs` copies the two stub packages into ``OUTDIR`` and repairs those lines only
(the API they describe is untouched); point ``MYPYPATH`` at ``OUTDIR`` and run mypy with
``mypy_tensorrt.ini`` (which also silences the remaining generator noise inside the stubs).
"""

from __future__ import annotations

import re
import shutil
import sys
from pathlib import Path

_DEF_RE = re.compile(r"^(\s*def \w+\()(.*)(\)\s*(?:->\s*(.*?))?:\s*)$")


def _split_params(text: str) -> list[str]:
    out: list[str] = []
    depth = 0
    cur = ""
    for ch in text:
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        if ch == "," and depth == 0:
            out.append(cur)
            cur = ""
        else:
            cur += ch
    if cur.strip():
        out.append(cur)
    return out


def _fix_annotation(text: str) -> str:
    text = re.sub(r"\bbool\b", "builtins.bool", text)
    text = re.sub(r"\bcapsule\b", "typing.Any", text)
    return text


def fix_def(line: str) -> str:
    """Repair one ``def`` line of a generated stub (other lines are returned unchanged)."""
    m = _DEF_RE.match(line)
    if m is None:
        return line
    params = _split_params(m.group(2))
    seen_default = False
    fixed: list[str] = []
    for p in params:
        q = re.sub(r"^(\s*)in(\s*:)", r"\1in_\2", p)
        name, _, rest = q.partition(":")
        if rest:
            ann, eq, default = rest.partition("=")
            ann = " " + _fix_annotation(ann.strip()) + (" " if eq else "")
            if ann.strip() == "...":
                ann = " typing.Any" + (" " if eq else "")
            q = f"{name}:{ann}{eq}{default}"
        if "=" in q:
            seen_default = True
        elif seen_default and not name.strip().startswith("*"):
            q = q + " = ..."
        fixed.append(q)
    ret = m.group(3)
    ret_ann = m.group(4)
    if ret_ann is not None:
        new_ann = "typing.Any" if ret_ann.strip() == "..." else _fix_annotation(ret_ann)
        ret = ret.replace(ret_ann, new_ann, 1)
    return m.group(1) + ",".join(fixed) + ret


def fix_stub_text(text: str) -> str:
    lines = [fix_def(line) for line in text.split("\n")]
    header = "import builtins\nimport typing\nimport typing_extensions\n"
    return header + "\n".join(lines)


def prepare_stubs(out_dir: Path) -> Path:
    """Copy and repair the installed TensorRT stubs into ``out_dir``; return it.

    ImportError when ``tensorrt-stubs`` is not installed.
    """
    import tensorrt_stubs  # noqa: F401  (only to locate the distribution)

    site = Path(tensorrt_stubs.__file__).resolve().parent.parent
    out_dir.mkdir(parents=True, exist_ok=True)
    for pkg in ("tensorrt", "tensorrt_bindings"):
        src = site / pkg
        if not any(src.glob("*.pyi")):
            raise ImportError(f"tensorrt-stubs is installed but '{src}' holds no .pyi files")
        dest = out_dir / pkg
        if dest.exists():
            shutil.rmtree(dest)
        dest.mkdir()
        for pyi in src.glob("*.pyi"):
            (dest / pyi.name).write_text(fix_stub_text(pyi.read_text(encoding="utf-8")), encoding="utf-8")
    return out_dir


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python trt_stubs.py OUTDIR")
    print(prepare_stubs(Path(sys.argv[1])))
