"""The package's public names mean one thing whatever was imported before: no name in
``weightspace.__all__`` is shadowed by a submodule (Python sets an imported submodule as an
attribute of its package, which hides the lazy export of the same name)."""

import importlib
import subprocess
import sys
from types import ModuleType

from test_layout import modules

import weightspace


def test_no_public_name_is_also_a_submodule():
    submodules = {name.split(".")[1] for _, name, _ in modules() if name.count(".") >= 1}
    assert not set(weightspace.__all__) & submodules


def test_every_public_name_is_the_documented_object_after_every_submodule_is_imported():
    for _, name, _ in modules():
        if not name.endswith("__main__"):
            importlib.import_module(name.removesuffix(".__init__"))
    for name in weightspace.__all__:
        obj = getattr(weightspace, name)
        assert not isinstance(obj, ModuleType), name
        assert obj is getattr(importlib.import_module(weightspace._EXPORTS[name]), name), name


def test_the_readme_imports_work_in_a_fresh_interpreter_in_either_order():
    # the failure users saw: importing a query function first turned `trajectory` into a module
    code = ("from weightspace import find_siblings, load_trajectory, trajectory\n"
            "import weightspace.tracking.runs as r\n"
            "assert trajectory is r.trajectory and callable(trajectory)\n"
            "import weightspace\n"
            "assert weightspace.trajectory is r.trajectory\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
