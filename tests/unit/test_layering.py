"""Import layering: the library never reaches back into the command-line tools."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "mova_train"


def _imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_no_mova_train_module_imports_data_tools():
    offenders = {
        str(path.relative_to(PACKAGE.parent)): sorted(
            m for m in _imported_modules(path) if m.split(".")[0] == "data_tools"
        )
        for path in sorted(PACKAGE.rglob("*.py"))
    }
    offenders = {k: v for k, v in offenders.items() if v}
    assert not offenders, f"mova_train modules import data_tools (move the code into mova_train): {offenders}"
    assert len(list(PACKAGE.rglob("*.py"))) > 20  # the walk really saw the package


def test_predict_does_not_import_the_fit_entry_point():
    imported = _imported_modules(PACKAGE / "predict.py")
    assert "mova_train.train" not in imported and "mova_train.config.instantiate" in imported


def test_strategy_and_optimizer_targets_are_classes():
    """No pass-through factory: every `_target_` of conf/strategy and conf/optimizer names a class."""
    import inspect

    from hydra.utils import get_object
    from omegaconf import OmegaConf

    conf = PACKAGE.parent / "conf"
    targets = {
        f"{group}/{path.name}": OmegaConf.load(path).get("_target_")
        for group in ("strategy", "optimizer")
        for path in sorted((conf / group).glob("*.yaml"))
    }
    assert len(targets) >= 6
    functions = {k: t for k, t in targets.items() if t is not None and not inspect.isclass(get_object(t))}
    assert not functions, f"these _target_s name functions, not classes: {functions}"
