"""Every ``pairvm.*`` function through Salt's real loader, in a fresh salt-call on a lab host.

The functions live in several files that share the virtual name ``pairvm``
(docs/architecture.md): the loader must offer each public function of each
file, with its docstring, and the library must import as plain Python in
every kind of module that uses it (execution module, state, the host
command's salt-call).
"""

import ast

from tests.lab.hosts import REPO


def defined_functions():
    """``pairvm.<name>`` of every public function of the files that share the name (read, not run)."""
    found = set()
    for path in (REPO / "_modules").glob("pairvm*.py"):
        tree = ast.parse(path.read_text())
        shared = any(isinstance(node, ast.Assign) and ast.unparse(node.value) == "boundary.VIRTUAL_NAME"
                     for node in tree.body)
        if not shared:
            continue
        aliases = {}
        for node in tree.body:
            if isinstance(node, ast.Assign) and ast.unparse(node.targets[0]) == "__func_alias__":
                aliases = ast.literal_eval(node.value)
        found |= {f"pairvm.{aliases.get(node.name, node.name)}" for node in tree.body
                  if isinstance(node, ast.FunctionDef) and not node.name.startswith("_")}
    return found


def test_the_loader_offers_every_function_of_every_file(salt_call):
    listed = set(salt_call("sys.list_functions", "pairvm"))
    listed = {name for name in listed if name.split(".")[0] == "pairvm"}
    wanted = defined_functions()
    assert len(wanted) > 20
    assert listed == wanted


def test_each_function_has_its_docstring_through_the_loader(salt_call):
    docs = salt_call("sys.doc", "pairvm")
    for name in defined_functions():
        assert "CLI Example:" in (docs.get(name) or ""), name


def test_the_host_setup_module_loads_beside_them(salt_call):
    assert "pairvm_host.defaults" in salt_call("sys.list_functions", "pairvm_host")
    assert salt_call("pairvm_host.defaults")["volume_groups"] == ["here", "there"]
