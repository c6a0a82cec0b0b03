"""The package layout's import direction: core <- eval <- cli, and svf_kernels depends on torch only.

Read from the source with ``ast`` (every ``import`` and ``from ... import``, relative ones
resolved, including imports inside functions), so a lazy import cannot hide a wrong direction.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SVF = ROOT / "python" / "svf"
KERNELS = ROOT / "svf_kernels"


def _module_name(path: Path, package_root: Path, package: str) -> str:
    parts = list(path.relative_to(package_root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join([package, *parts])


def _imports(path: Path, module: str) -> set[str]:
    """Absolute names of every module ``path`` imports (relative imports resolved)."""
    is_package = path.name == "__init__.py"
    package = module if is_package else module.rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            names.add(target)
            names.update(f"{target}.{alias.name}" for alias in node.names)
    return names


def _modules(package_root: Path, package: str) -> dict[str, Path]:
    return {_module_name(p, package_root, package): p for p in sorted(package_root.rglob("*.py"))}


def _core_modules() -> dict[str, Path]:
    return {m: p for m, p in _modules(SVF, "svf").items()
            if not m.startswith(("svf.eval", "svf.cli"))}


def test_layout_has_core_eval_and_cli_apart():
    assert (SVF / "eval" / "__init__.py").is_file() and (SVF / "cli" / "__init__.py").is_file()
    core = _core_modules()
    assert {"svf.scorer", "svf.training", "svf.steering", "svf.steering_field"} <= set(core)
    assert not any("evaluat" in m or "judge" in m or m.endswith(("demo", "cli")) for m in core)


@pytest.mark.parametrize("module", sorted(_core_modules()))
def test_core_never_imports_eval_or_cli(module):
    path = _core_modules()[module]
    bad = sorted(n for n in _imports(path, module)
                 if n == "svf.eval" or n.startswith(("svf.eval.", "svf.cli")))
    assert not bad, f"core module {module} imports {bad}"


def test_eval_never_imports_cli():
    modules = _modules(SVF, "svf")
    assert {"svf.eval.evaluation", "svf.eval.stages"} <= set(modules)
    for module, path in modules.items():
        if module.startswith("svf.eval"):
            bad = sorted(n for n in _imports(path, module) if n.startswith("svf.cli"))
            assert not bad, f"{module} imports {bad}"


def test_kernels_depend_on_torch_only():
    modules = _modules(KERNELS, "svf_kernels")
    assert {"svf_kernels.ops.op", "svf_kernels.modules.row_fields"} <= set(modules)
    for module, path in modules.items():
        bad = sorted(n for n in _imports(path, module)
                     if n.split(".")[0] in {"svf", "transformers", "numpy"})
        assert not bad, f"{module} imports {bad}"


def test_the_checker_sees_a_relative_import_into_eval(tmp_path):
    """The check can fail: a core-style relative import of ``..eval`` inside a function is found."""
    f = tmp_path / "mod.py"
    f.write_text("def g():\n    from .eval.judges import vader_compound\n    from . import cli\n")
    found = _imports(f, "svf.mod")
    assert "svf.eval.judges" in found and "svf.cli" in found


def test_kernels_keep_the_op_layer_apart_from_the_module_layer():
    """``svf_kernels.ops`` (op, checks, dispatch, reference, backends) never imports the module
    layer; the modules reach the ops only through ``svf_kernels.ops``' public names."""
    modules = _modules(KERNELS, "svf_kernels")
    assert {"svf_kernels.ops.op", "svf_kernels.ops.dispatch", "svf_kernels.ops.reference",
            "svf_kernels.modules.row_fields", "svf_kernels.modules.fused_steering_field"} <= set(modules)
    for module, path in modules.items():
        names = _imports(path, module)
        if module.startswith("svf_kernels.ops"):
            bad = sorted(n for n in names if n.startswith("svf_kernels.modules"))
            assert not bad, f"{module} imports {bad}"
        if module.startswith("svf_kernels.modules"):
            private = sorted(n for n in names if n.startswith("svf_kernels.ops")
                             and n.rpartition(".")[2].startswith("_"))
            assert not private, f"{module} imports private names of the op layer: {private}"
