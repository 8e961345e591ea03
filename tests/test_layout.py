"""The package layout holds: no import cycles (lazy imports included), small modules, no kind
switches outside the per-kind objects, and the documented short names still import."""

import ast
import pathlib

import blt_jax

PKG = pathlib.Path(blt_jax.__file__).parent


def _module_name(path: pathlib.Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def _imports(path: pathlib.Path, modules: set[str]) -> set[str]:
    """blt_jax modules `path` imports anywhere in its body (function-level imports count)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name in modules}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for a in node.names:
                full = f"{node.module}.{a.name}"
                out.add(full if full in modules else node.module)
    return {m for m in out if m in modules}


def _graph() -> dict[str, set[str]]:
    files = {_module_name(p): p for p in PKG.rglob("*.py")}
    graph = {m: _imports(p, set(files)) - {m} for m, p in files.items()}
    # the top-level package only re-exports the documented short names
    graph["blt_jax"] = set()
    # importing a.b.c runs a/__init__ and a/b/__init__: those are light re-export-free docs
    return graph


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                return stack[stack.index(n):] + [n]
            if n not in state and (c := visit(n)):
                return c
        state[m] = 2
        stack.pop()
        return None

    for m in sorted(graph):
        if m not in state and (c := visit(m)):
            return c
    return None


def test_cycle_finder_finds_a_cycle():
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycles():
    graph = _graph()
    assert "blt_jax.model.factory" in graph and graph["blt_jax.inference.api"]
    assert _find_cycle(graph) is None, " -> ".join(_find_cycle(graph))


def test_modules_stay_small():
    big = {str(p.relative_to(PKG)): n for p in PKG.rglob("*.py")
           if (n := len(p.read_text().splitlines())) > 420}
    assert not big, big


def test_every_subpackage_says_what_it_owns():
    for init in PKG.glob("*/__init__.py"):
        doc = ast.get_docstring(ast.parse(init.read_text()))
        assert doc and len(doc.split()) >= 8, init


def test_documented_short_names_import():
    import blt_jax.hashing
    import blt_jax.patching
    import blt_jax.tokenizer
    from blt_jax import hashing, patching, tokenizer

    assert tokenizer.decode_bytes(tokenizer.encode("héllo")[1:-1]) == "héllo".encode()
    assert blt_jax.patching is patching and blt_jax.hashing is hashing
    assert callable(blt_jax.load) and callable(patching.patch_buffer)
    assert blt_jax.tokenizer is tokenizer


# Where comparing kind names is allowed: the per-kind objects themselves and the CLI.
KIND_OWNERS = {"model/kinds.py", "tools/cli.py"}
_COMPARISONS = (ast.Eq, ast.NotEq, ast.In, ast.NotIn)


def _is_kind(node: ast.AST) -> bool:
    """`kind`, `x_kind`, `cfg.kind`, `cfg.model.kind`, `model.kind.name` or `run["kind"]`."""
    if isinstance(node, ast.Attribute) and node.attr == "name":
        node = node.value
    if isinstance(node, ast.Subscript):
        return isinstance(node.slice, ast.Constant) and node.slice.value == "kind"
    name = node.attr if isinstance(node, ast.Attribute) else getattr(node, "id", "")
    return name == "kind" or name.endswith("_kind")


def _is_kind_name(node: ast.AST) -> bool:
    """A string literal, or a literal tuple/list/set of them ("blt", ("blt", "entropy"))."""
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        return bool(node.elts) and all(_is_kind_name(e) for e in node.elts)
    return isinstance(node, ast.Constant) and isinstance(node.value, str)


def _kind_comparisons(source: str) -> list[int]:
    """Lines that compare a kind with kind names: `kind == "blt"`, `cfg.kind in ("a", "b")`.

    Asking the kind object (`kind.decoder is None`) and checking a name against a vocabulary
    variable (`kind not in KINDS`) are not switches.
    """
    lines = set()
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Compare):
            continue
        operands = [node.left, *node.comparators]
        for op, a, b in zip(node.ops, operands, operands[1:]):
            if isinstance(op, _COMPARISONS) and (_is_kind(a) and _is_kind_name(b)
                                                 or _is_kind_name(a) and _is_kind(b)):
                lines.add(node.lineno)
    return sorted(lines)


def test_kind_checker_finds_kind_switches():
    src = ("if cfg.kind == 'blt':\n    pass\n"           # 1
           "x = kind in ('blt', 'entropy')\n"             # 3
           "for kind in ('a', 'b'):\n    pass\n"          # 4-5: a loop, not a comparison
           "y = model.kind.name != 'bpe'\n"               # 6
           "z = 'bpe' == run['kind']\n"                   # 7
           "w = cfg.model.kind not in ['blt']\n"          # 8
           "v = cfg.mode == 'space' and kind.decoder is None\n"  # 9: asks the kind object
           "u = kind not in KINDS or a_kind == b_kind\n"  # 10: vocabulary check, two kinds
           "t = 1 < cfg.model_kind == 'transformer'\n")   # 11: chained
    assert _kind_comparisons(src) == [1, 3, 6, 7, 8, 11]


def test_no_kind_switches_outside_the_per_kind_objects():
    found = {f"{rel}:{line}" for p in PKG.rglob("*.py")
             if (rel := str(p.relative_to(PKG))) not in KIND_OWNERS
             for line in _kind_comparisons(p.read_text())}
    assert not found, sorted(found)
