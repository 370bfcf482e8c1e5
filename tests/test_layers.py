"""STYLE.md's house rules, enforced: who may import whom, and where the world is touched."""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parent.parent / "iptrace"


def _modules() -> list[tuple[str, ast.Module, str]]:
    out = []
    for path in sorted(PKG.rglob("*.py")):
        rel = path.relative_to(PKG.parent).with_suffix("").as_posix().replace("/", ".")
        text = path.read_text()
        out.append((rel, ast.parse(text), text))
    return out


def _imports(tree: ast.Module) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


DATAPLANES = {"iptables", "nftables"}
# The interface between the dataplanes and the layers above: packets, traces and protocols (iptrace.dataplane),
# kube-proxy's layout as a dataplane reports it (iptrace.layout).
# The node's routes (iptrace.routes) are read below them: the tracers answer `-o`/`oifname` with them.
INTERFACE = ("dataplane", "layout", "routes")


def test_dataplane_packages_import_only_errors_the_interface_and_themselves() -> None:
    for name, tree, _ in _modules():
        layer = _layer(name)
        if layer not in DATAPLANES and layer not in INTERFACE:
            continue
        allowed = {"iptrace.errors", "iptrace.records", "iptrace.layout", "iptrace.routes"} if layer in INTERFACE else {
            "iptrace.errors", "iptrace.records", *(f"iptrace.{m}" for m in INTERFACE), "iptrace.grammars", "iptrace.text",
            "iptrace.dumpfile"}
        for imported in _imports(tree):
            if imported.startswith("iptrace") and imported not in allowed:
                assert imported.startswith(f"iptrace.{layer}"), f"{name} imports {imported}"


def test_records_import_nothing_of_iptrace() -> None:
    """iptrace.records (building slots records fast) sits below the dataplane interface, beside errors."""
    for name, tree, _ in _modules():
        if name in ("iptrace.records", "iptrace.errors"):
            assert not [m for m in _imports(tree) if m.startswith("iptrace")], name


def test_conntrack_reader_imports_only_errors_the_interface_and_itself() -> None:
    """Like a dataplane: the conntrack package reads text and compares with a Tracer, nothing else; lark only
    in its grammar module (which imports it when a line needs lark's parser)."""
    seen = False
    for name, tree, _ in _modules():
        if _layer(name) != "conntrack":
            continue
        seen = True
        for imported in _imports(tree):
            if imported.startswith("iptrace"):
                assert imported in ("iptrace.errors", "iptrace.dataplane", "iptrace.grammars", "iptrace.text",
                                    "iptrace.dumpfile") or imported.startswith(
                    "iptrace.conntrack"), f"{name} imports {imported}"
            if imported.split(".")[0] == "lark":
                assert name == "iptrace.conntrack.grammar", f"{name} imports lark"
    assert seen


def test_third_party_owners() -> None:
    owners = {"lark": {"iptables", "nftables", "conntrack"}, "paramiko": {"collect"}, "kubernetes": {"collect"}, "click": {"cli"},
              "urllib3": {"collect"}}
    for name, tree, _ in _modules():
        layer = _layer(name)
        for imported in _imports(tree):
            top = imported.split(".")[0]
            if top in owners:
                assert layer in owners[top], f"{name} imports {top}; only {owners[top]} may"


def test_render_and_analysis_layers_do_no_io() -> None:
    pure = {*INTERFACE, "records", *DATAPLANES, "conntrack", "kube", "explain", "render"}
    for name, tree, text in _modules():
        if _layer(name) not in pure:
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
                assert node.func.id not in ("print", "open", "input", "exit"), f"{name} calls {node.func.id}()"
        assert "sys.exit" not in text, name
        assert "subprocess" not in _imports(tree), name


def test_no_bare_except_exception_in_library_layers() -> None:
    for name, tree, _ in _modules():
        if _layer(name) == "cli":
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.ExceptHandler) and isinstance(node.type, ast.Name) \
                    and node.type.id in ("Exception", "BaseException"):
                # Clean-up-and-re-raise is fine; swallowing every error is not.
                last = node.body[-1]
                assert isinstance(last, ast.Raise) and last.exc is None, f"{name}:{node.lineno} swallows {node.type.id}"
            if isinstance(node, ast.ExceptHandler):
                assert node.type is not None, f"{name}:{node.lineno} has a bare except"


def test_layers_above_the_dataplanes_read_them_only_through_the_interface() -> None:
    """kube, explain and render know dataplanes only as iptrace.dataplane's types (STYLE.md "The shape of the
    house"); picking a dataplane by its input is iptrace.dataplanes' job, used by collect and cli."""
    for name, tree, _ in _modules():
        if _layer(name) not in ("kube", "explain", "render", "conntrack"):
            continue
        for imported in _imports(tree):
            layer = imported.split(".")[1] if imported.startswith("iptrace.") else ""
            assert layer not in (*DATAPLANES, "dataplanes", "collect", "cli"), f"{name} imports {imported}"


def test_only_collect_and_cli_pick_a_dataplane() -> None:
    for name, tree, _ in _modules():
        if "iptrace.dataplanes" in _imports(tree):
            assert _layer(name) in ("collect", "cli"), f"{name} imports iptrace.dataplanes"


def test_modules_stay_small_enough_to_read_in_one_sitting() -> None:
    sizes = {name: len(text.splitlines()) for name, _, text in _modules()}
    assert max(sizes.values()) <= 900, sorted(sizes.items(), key=lambda kv: -kv[1])[:3]
    big = [name for name, n in sizes.items() if n > 600]
    assert len(big) <= 1, f"more than one module over 600 lines: {big}"


def test_collect_imports_its_clients_inside_functions() -> None:
    """paramiko and kubernetes cost ~1 s to import: only a collection that uses them pays for it."""
    import subprocess
    import sys

    modules = sorted(p.stem for p in (PKG / "collect").glob("*.py") if p.stem != "__init__")
    code = ("import sys\n" + "".join(f"import iptrace.collect.{m}\n" for m in modules)
            + "print(','.join(m for m in ('paramiko', 'kubernetes', 'websocket', 'urllib3', 'yaml') "
              "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"imported at module level: {out.stdout.strip()}"
