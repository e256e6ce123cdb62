"""Architecture guard: SQL lives in the persistence layer (``dicom_node/index/``) and nowhere else.

Every other module calls query functions of :mod:`dicom_node.index`; a second database implementation
can then be added behind those functions without touching their callers.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "dicom_node"
PERSISTENCE = PACKAGE / "index"
#: A string literal that starts like an SQL statement (keywords as this code base writes them: upper case).
SQL_START = re.compile(r"^\s*(SELECT|INSERT|UPDATE|DELETE|CREATE|WITH|PRAGMA|DROP|ALTER|BEGIN|COMMIT)\s")
EXECUTE = {"execute", "executemany", "executescript"}


def _strings(node: ast.AST) -> list[str]:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, ast.JoinedStr) and node.values:
        first = node.values[0]
        return [first.value] if isinstance(first, ast.Constant) and isinstance(first.value, str) else []
    return []


def offences(path: Path, root: Path = PACKAGE.parent) -> list[str]:
    """``file:line what`` for each SQL statement or database call in one module (one per line and kind)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    rel = path.relative_to(root)
    found: list[str] = []
    for node in ast.walk(tree):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in EXECUTE):
            found.append(f"{rel}:{node.lineno} calls .{node.func.attr}()")
        for text in _strings(node):
            if SQL_START.match(text):
                found.append(f"{rel}:{getattr(node, 'lineno', 0)} SQL text {text.strip()[:40]!r}")
    # An f-string and its first literal part both match: report the line once.
    return list(dict.fromkeys(found))


def test_no_sql_outside_the_persistence_layer() -> None:
    modules = [p for p in sorted(PACKAGE.rglob("*.py")) if PERSISTENCE not in p.parents]
    assert modules, "no modules found"
    found = [line for path in modules for line in offences(path)]
    assert not found, "SQL outside dicom_node/index/ (move it into a query function there):\n" + "\n".join(found)


def test_the_guard_sees_sql(tmp_path: Path) -> None:
    """The scanner itself: it flags an execute call and SQL literals, plain and f-string, not prose."""
    sample = tmp_path / "sample.py"
    sample.write_text('q = "SELECT 1"\nf = f"UPDATE t SET a = {1}"\ndef g(c):\n    c.execute(q)\n'
                      'msg = "Select a model"\ndoc = "Update the model store"\n', encoding="utf-8")
    found = offences(sample, tmp_path)
    assert [f.split(" ", 1)[0] for f in found] == ["sample.py:1", "sample.py:2", "sample.py:4"]
