"""Code-completion training prompts for `bench train medusa|eagle --data`: HumanEval-shaped openings (a function's
signature and docstring, the body left to the target) taken from the running Python's standard library.

Every public top-level function with a docstring and a body of at least --min-body-lines lines becomes one
{"text": ..., "source": "<module path>:<line>"} line: the file's one-line imports of names the function uses, then
the function from its `def` to the end of its docstring, as HumanEval's prompts are built. Test packages and
private names are skipped, and any opening whose letters and digits equal an evaluation prompt's (with
$DECODEBENCH_DATA or --data-dir set) is dropped.
The draw is seeded; the output depends on the Python version, which the first line's "python" field records.

    python scripts/code_prompts.py --out ckpt/data/stdlib-code-prompts.jsonl --prompts 320
"""

from __future__ import annotations

import argparse
import ast
import json
import platform
import random
import sysconfig
from pathlib import Path

from bench.drafter_data import evaluation_texts, normalize
from tasks.base import resolve_data_dir

SKIPPED_PARTS = {"test", "tests", "idlelib", "lib2to3", "site-packages", "dist-packages", "__pycache__", "turtledemo"}
MAX_CHARS = 1500  # longer openings are skipped (HumanEval's are a few hundred characters)


def openings(path: Path, min_body_lines: int) -> list[tuple[int, str]]:
    """(line, text) of every usable function opening in one module."""
    source = path.read_text(encoding="utf-8", errors="replace")
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return []
    lines = source.splitlines()
    imports = [n for n in tree.body if isinstance(n, ast.Import | ast.ImportFrom) and n.lineno == n.end_lineno]
    found = []
    for node in tree.body:
        if not isinstance(node, ast.FunctionDef) or node.name.startswith("_") or ast.get_docstring(node) is None:
            continue
        doc = node.body[0]
        if node.end_lineno - doc.end_lineno < min_body_lines:
            continue
        used = {n.id for n in ast.walk(node) if isinstance(n, ast.Name)}
        header = "".join(lines[n.lineno - 1].strip() + "\n" for n in imports if _bound(n) & used)
        text = header + ("\n" if header else "") + "\n".join(lines[node.lineno - 1 : doc.end_lineno]) + "\n"
        if len(text) <= MAX_CHARS:
            found.append((node.lineno, text))
    return found


def _bound(node: ast.Import | ast.ImportFrom) -> set[str]:
    """The names an import statement binds."""
    return {alias.asname or alias.name.split(".")[0] for alias in node.names}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--prompts", type=int, default=320)
    parser.add_argument("--min-body-lines", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-dir", default=None, help="Evaluation data to exclude (else $DECODEBENCH_DATA).")
    args = parser.parse_args()
    root = Path(sysconfig.get_paths()["stdlib"])
    data_dir = resolve_data_dir(args.data_dir)
    excluded = evaluation_texts(data_dir) if data_dir else set()
    pool = []
    for path in sorted(root.rglob("*.py")):
        relative = path.relative_to(root)
        if SKIPPED_PARTS & set(relative.parts) or any(p.startswith("_") for p in relative.parts[:-1]):
            continue
        pool += [(f"{relative.as_posix()}:{line}", text) for line, text in openings(path, args.min_body_lines)
                 if normalize(text) not in excluded]  # fmt: skip
    if args.prompts > len(pool):
        raise SystemExit(f"error: --prompts {args.prompts}: the standard library gives {len(pool)}")
    drawn = random.Random(args.seed).sample(pool, args.prompts)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    python = platform.python_version()
    with args.out.open("w", encoding="utf-8") as f:
        for i, (source, text) in enumerate(drawn):
            f.write(json.dumps({"text": text, "source": source, **({"python": python} if i == 0 else {})}) + "\n")
    print(f"{args.prompts} prompts of {len(pool)} (Python {python} standard library) -> {args.out}")


if __name__ == "__main__":
    main()
