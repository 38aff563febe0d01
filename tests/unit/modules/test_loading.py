"""The files that share the virtual name ``pairvm``: one gate, and no function twice.

Salt's loader merges the public functions of every file whose ``__virtual__``
returns the same name; on a duplicate name the first file loaded wins
silently, and one file whose gate fails hides the functions of the files not
loaded yet. So every such file has the same gate, and each public name is
defined once. (tests/functional/test_loading.py loads them all through the
real loader.)
"""

import ast
import inspect

from pairvmlib import boundary
from tests.unit.conftest import REPO
from tests.unit.fakehost import MODULES


def shares_the_name(path):
    tree = ast.parse(path.read_text())
    for node in tree.body:
        targets = [getattr(t, "id", "") for t in getattr(node, "targets", [])]
        if isinstance(node, ast.Assign) and "__virtualname__" in targets:
            return ast.unparse(node.value) == "boundary.VIRTUAL_NAME"
    return False


def public_functions(module):
    aliases = getattr(module, "__func_alias__", {})
    return {aliases.get(name, name) for name, obj in vars(module).items()
            if inspect.isfunction(obj) and not name.startswith("_") and obj.__module__ == module.__name__}


def test_the_fake_host_loads_every_file_that_shares_the_name():
    sharing = {path.stem for path in (REPO / "_modules").glob("*.py") if shares_the_name(path)}
    assert sharing == set(MODULES)


def test_every_file_has_the_same_gate_and_wraps_each_public_function():
    for name, module in MODULES.items():
        assert module.__virtual__ is boundary.virtual, name
        for function in public_functions(module):
            func = getattr(module, {v: k for k, v in getattr(module, "__func_alias__", {}).items()}.get(
                function, function))
            assert getattr(func, "__wrapped__", None) is not None, f"{name}.{function} is not wrapped"
            assert "CLI Example:" in inspect.getdoc(func), f"{name}.{function} has no CLI Example"


def test_no_public_function_is_defined_twice():
    seen = {}
    for name, module in MODULES.items():
        for function in public_functions(module):
            assert function not in seen, f"pairvm.{function} is in {seen.get(function)} and {name}"
            seen[function] = name
    assert len(seen) > 20


def test_a_missing_binding_closes_every_file_alike(monkeypatch):
    monkeypatch.setattr(boundary, "HAS_LIBVIRT", False)
    answers = {name: module.__virtual__() for name, module in MODULES.items()}
    assert len({str(answer) for answer in answers.values()}) == 1
    assert next(iter(answers.values()))[0] is False
