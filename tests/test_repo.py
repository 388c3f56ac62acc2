"""The repository's promises: the README's two commands at the top, CI
running the README's test command, the layout the users asked for."""
import os
import re
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def read(name):
    with open(os.path.join(ROOT, name)) as f:
        return f.read()


def block(text, name):
    m = re.search(r"<!-- %s -->\s*```\n(.*?)\n```\s*<!-- /%s -->" % (name, name), text, re.S)
    assert m, "README.md has no %s block" % name
    return m.group(1).strip()


def test_readme_starts_with_the_two_commands():
    readme = read("README.md")
    first_section = readme.split("\n## ")[0]
    main, tests = block(first_section, "main-command"), block(first_section, "test-command")
    assert "examples/train_cnn.py" in main and "pip install" in main
    assert "pytest" in tests and "pip install -e '.[test]'" in tests


def test_ci_runs_the_readme_test_command():
    ci = read(".ci/run")
    assert "<!-- test-command -->" in ci and 'bash -euo pipefail -c "$test_command"' in ci


def test_top_level_layout():
    expected = {"xdl", "backends", "tests", "examples", "setup.cfg", "pyproject.toml",
                "README.md", ".ci", ".gitignore"}
    result = subprocess.run(["git", "-C", ROOT, "ls-files"], capture_output=True, text=True)
    tracked = set(result.stdout.split()) if result.returncode == 0 else set()
    tops = {p.split("/")[0] for p in tracked}
    if tops:  # inside a git checkout
        assert tops <= expected, sorted(tops - expected)
