"""The package layout holds: no import cycles (lazy imports included), small modules, and the
documented short names still import."""

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
