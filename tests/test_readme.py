"""The README's promises: its two commands are what CI runs, its notebooks exist, environment.yml matches pip."""

import re
from pathlib import Path

ROOT = Path(__file__).parents[1]
README = (ROOT / "README.md").read_text()


def quickstart_commands():
    section = README.split("## Quickstart")[1].split("\n## ")[0]
    return re.findall(r"```bash\n(.*?)\n```", section, flags=re.S)


def test_ci_runs_exactly_the_readme_commands():
    install, test = quickstart_commands()
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert install in ci and test in ci
    assert ci.index(install) < ci.index(test)


def test_every_notebook_is_listed_and_every_listed_notebook_exists():
    listed = set(re.findall(r"\(notebooks/(\d\d_\w+\.ipynb)\)", README))
    present = {p.name for p in (ROOT / "notebooks").glob("*.ipynb")}
    assert listed == present


def test_environment_yml_installs_the_same_package():
    env = (ROOT / "environment.yml").read_text()
    assert "- -e ." in env
    python = re.search(r"- python=(\d+\.\d+)", env).group(1)
    requires = re.search(r'requires-python = ">=(\d+\.\d+)"', (ROOT / "pyproject.toml").read_text()).group(1)
    assert tuple(map(int, python.split("."))) >= tuple(map(int, requires.split(".")))
