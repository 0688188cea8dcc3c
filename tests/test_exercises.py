"""The classroom exercises: generated notebooks in sync with the solutions, stubs that stub, checks that diagnose."""

import ast
from pathlib import Path

import nbformat
import pytest
import torch

from saekit.exercises import CHECKS, ExerciseFailure
from saekit.exercises.generate import BEGIN, END, main, strip_solutions, write_all

ROOT = Path(__file__).resolve().parents[1]
EXERCISES = sorted((ROOT / "exercises").glob("*.ipynb"))


def test_exercise_notebooks_match_the_solutions(tmp_path):
    written = write_all(ROOT / "notebooks", tmp_path)
    fresh = {p.name: p.read_bytes() for p in written}
    committed = {p.name: p.read_bytes() for p in EXERCISES}
    stale = sorted(name for name in fresh.keys() | committed.keys() if fresh.get(name) != committed.get(name))
    assert not stale, f"exercises/ is out of date for {stale}: run `python -m saekit.exercises` and commit the result"


def test_generation_is_deterministic(tmp_path):
    first = {p.name: p.read_bytes() for p in write_all(ROOT / "notebooks", tmp_path / "a")}
    second = {p.name: p.read_bytes() for p in write_all(ROOT / "notebooks", tmp_path / "b")}
    assert first == second and len(first) >= 7


def _stub_definitions(source: str) -> str:
    """Only the top-level defs and classes of a cell (the rest may need the notebook's earlier state)."""
    tree = ast.parse(source)
    tree.body = [node for node in tree.body if isinstance(node, (ast.FunctionDef, ast.ClassDef, ast.Import,
                                                                   ast.ImportFrom))]
    return ast.unparse(tree)


def test_exercise_notebooks_have_stubs_not_solutions():
    seen = set()
    for path in EXERCISES:
        nb = nbformat.read(path, as_version=4)
        namespace = {"torch": torch}
        for cell in nb.cells:
            if cell.cell_type != "code":
                continue
            assert BEGIN not in cell.source and END not in cell.source, f"{path.name}: a solution was left in"
            assert not cell.outputs and cell.execution_count is None, f"{path.name}: outputs were not cleared"
            assert "execution" not in cell.metadata
            if "raise NotImplementedError(" in cell.source:
                exec(_stub_definitions(cell.source), namespace)
            if cell.source.startswith("from saekit.exercises import check_"):
                # the check of a stub must say "not implemented yet", which also proves the stub raises
                with pytest.raises(ExerciseFailure, match="not implemented yet"):
                    exec(cell.source, namespace)
                seen.add(cell.source.split("import ")[1].split("\n")[0])
    assert len(seen) >= 10, f"expected at least 10 exercises with checks, found {sorted(seen)}"
    assert {exercise.notebook for exercise in CHECKS.values()} == {f"0{i}" for i in range(1, 8)}


@pytest.mark.parametrize("name", sorted(CHECKS))
def test_check_accepts_the_reference(name, capsys):
    CHECKS[name].check(CHECKS[name].reference)
    assert capsys.readouterr().out.strip() == f"{name}: correct on {len(CHECKS[name].cases)} test inputs"


@pytest.mark.parametrize("name", sorted(CHECKS))
def test_check_names_each_mistake(name):
    exercise = CHECKS[name]
    assert exercise.mistakes
    for mistake in exercise.mistakes:
        with pytest.raises(ExerciseFailure) as failure:
            exercise.check(mistake.variant)
        assert str(failure.value) == f"{name}: {mistake.message}"


@pytest.mark.parametrize("name", sorted(CHECKS))
def test_check_of_a_stub_says_not_implemented(name):
    def stub(*args):
        raise NotImplementedError("exercise")

    class StubStep(torch.autograd.Function):
        forward = staticmethod(lambda ctx, h, theta, eps: (h > theta).float())
        backward = staticmethod(stub)

    with pytest.raises(ExerciseFailure, match=f"^{name}: not implemented yet"):
        CHECKS[name].check(StubStep if name.startswith("StepWithThresholdGradient") else stub)


def test_unknown_slips_get_a_generic_difference():
    with pytest.raises(ExerciseFailure, match="wrong on test input 1 of 4: largest .difference."):
        CHECKS["topk_encode"].check(lambda x, W_enc, b_enc, b_dec, k: torch.zeros(len(x), W_enc.shape[1]) + 1)
    with pytest.raises(ExerciseFailure, match="expected shape"):
        CHECKS["topk_encode"].check(lambda x, W_enc, b_enc, b_dec, k: torch.zeros(3))
    with pytest.raises(ExerciseFailure, match="returned None"):
        CHECKS["mean_cosine"].check(lambda vectors: None)
    with pytest.raises(ExerciseFailure, match="raised ZeroDivisionError on test input 1"):
        CHECKS["mean_cosine"].check(lambda vectors: 1 / 0)


def test_strip_solutions_keeps_indentation_and_names_the_function():
    source = "\n".join([
        "class Step:",
        "    def backward(ctx, grad):",
        "        # BEGIN SOLUTION",
        "        return grad",
        "        # END SOLUTION",
        "",
        "x = 1",
    ])
    stripped, blocks = strip_solutions(source, "cell")
    assert blocks == 1
    assert stripped.split("\n")[2] == '        raise NotImplementedError("exercise: write Step.backward")'
    assert stripped.split("\n")[3:] == ["", "x = 1"]


@pytest.mark.parametrize("source, problem", [
    ("# BEGIN SOLUTION\nx = 1", "never closed"),
    ("x = 1\n# END SOLUTION", "without a '# BEGIN SOLUTION'"),
    ("# BEGIN SOLUTION\n# BEGIN SOLUTION\n# END SOLUTION", "inside the block"),
])
def test_unbalanced_markers_are_errors(source, problem):
    with pytest.raises(ValueError, match=problem):
        strip_solutions(source, "01_x.ipynb, cell c1")


def test_check_mode_lists_stale_and_leftover_notebooks(tmp_path, capsys):
    notebooks, out = tmp_path / "notebooks", tmp_path / "exercises"
    notebooks.mkdir()
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("def f(x):\n    # BEGIN SOLUTION\n    return x\n    # END SOLUTION")]
    nbformat.write(nb, notebooks / "01_a.ipynb")
    nbformat.write(nbformat.v4.new_notebook(), notebooks / "02_no_exercises.ipynb")
    assert main(["--check", "--notebooks", str(notebooks), "--out", str(out)]) == 1
    assert "01_a.ipynb" in capsys.readouterr().err
    assert main(["--notebooks", str(notebooks), "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["01_a.ipynb"]  # no copy of a notebook without exercises
    assert main(["--check", "--notebooks", str(notebooks), "--out", str(out)]) == 0
    nb.cells[0].source = nb.cells[0].source.replace("return x", "return x + 1")
    nbformat.write(nb, notebooks / "01_a.ipynb")
    assert main(["--check", "--notebooks", str(notebooks), "--out", str(out)]) == 0  # the stub is the same
    nb.cells.append(nbformat.v4.new_markdown_cell("new prose"))
    nbformat.write(nb, notebooks / "01_a.ipynb")
    (out / "05_gone.ipynb").write_text("{}")
    assert main(["--check", "--notebooks", str(notebooks), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "01_a.ipynb" in err and "05_gone.ipynb" in err and "python -m saekit.exercises" in err
