"""``import xdl`` stays cheap and reaches the documented submodules lazily."""
import subprocess
import sys

import pytest

import xdl


def run_python(code):
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_documented_submodules_are_reachable_from_import_xdl():
    # As the README writes it: import xdl; xdl.classifiers.load_model(...)
    out = run_python(
        "import sys, xdl\n"
        "heavy = [m for m in ('xdl.classifiers', 'xdl.solver', 'xdl.layers', 'cupy', "
        "'matplotlib') if m in sys.modules]\n"
        "print('after import:', heavy)\n"
        "f = xdl.classifiers.load_model\n"
        "print(f.__module__, xdl.solver.Solver.__name__, xdl.data_utils.FOLDER)\n"
        "print('cupy' in sys.modules)\n")
    lines = out.splitlines()
    assert lines[0] == "after import: []"
    assert lines[1] == "xdl.classifiers.base Solver cifar-10-batches-py"
    assert lines[2] == "False"


@pytest.mark.parametrize("name", xdl.SUBMODULES)
def test_every_listed_submodule_imports(name):
    module = getattr(xdl, name)
    assert module.__name__ == "xdl." + name
    assert name in dir(xdl)


def test_unknown_attribute_still_raises():
    with pytest.raises(AttributeError, match="module 'xdl' has no attribute 'clasifiers'"):
        xdl.clasifiers
