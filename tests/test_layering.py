"""The packages depend one way (peft_ib on peft/transformers/torch only, hub_cards below both, the evaluator alone),
their modules import each other without a circle, and importing them has no process-wide side effect that shows in
sys.modules (pyplot).

Each import runs in a fresh interpreter, so what it loads is not hidden by what other tests imported already.
"""

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LOAD_METRIC = "import evaluate; from trl_ib.code_eval.metrics import PASS_AT_K_M; evaluate.load(PASS_AT_K_M)"


def loaded_by(statement: str) -> set[str]:
    """Every module in sys.modules, and its top-level package, after running `statement` in a fresh interpreter."""
    code = f"import json, sys\n{statement}\nprint(json.dumps(sorted(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    modules = json.loads(result.stdout.splitlines()[-1])
    return set(modules) | {name.split(".")[0] for name in modules}


@pytest.mark.parametrize(
    "statement, absent",
    [
        ("import peft_ib", {"trl", "trl_ib", "hub_cards", "matplotlib"}),
        ("import hub_cards", {"trl_ib", "trl", "peft_ib", "torch"}),
        ("import trl_ib", {"torch", "transformers", "trl", "peft_ib", "hub_cards", "trl_ib.code_eval"}),
        ("import trl_ib.code_eval", {"torch", "transformers", "trl", "peft_ib", "hub_cards", "trl_ib.cli.eval"}),
        # `import evaluate` loads torch itself (its evaluator imports transformers.pipelines); the metric adds none of ours.
        (LOAD_METRIC, {"trl", "peft_ib", "hub_cards", "trl_ib.cli.eval", "trl_ib.trainer.ib_sft_trainer"}),
        # Plots are drawn with matplotlib's object API: no pyplot, no process-wide backend switch.
        ("import hub_cards, trl_ib.memorization, trl_ib.cli.eval", {"matplotlib.pyplot"}),
    ],
)
def test_imports_point_one_way(statement, absent):
    loaded = loaded_by(statement)
    assert not absent & loaded, sorted(absent & loaded)


def test_public_names_of_trl_ib_load_on_first_use():
    # dir() lists them before any is loaded (a fresh interpreter: nothing imported them yet)
    code = "import sys, trl_ib; print(sorted(set(trl_ib.__all__) - set(dir(trl_ib))), 'torch' in sys.modules)"
    listed = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert listed.stdout == "[] False\n", listed.stderr[-3000:]
    import trl_ib
    from trl_ib.trainer.callbacks import PassAtKMCallback
    from trl_ib.trainer.ib_sft_trainer import IBSFTTrainer

    assert trl_ib.PassAtKMCallback is PassAtKMCallback and trl_ib.IBSFTTrainer is IBSFTTrainer
    assert set(trl_ib.__all__) == {"IBSFTConfig", "IBSFTTrainer", "PassAtKMCallback", "to_prompt_completion"}
    with pytest.raises(AttributeError, match="^module 'trl_ib' has no attribute 'PassAtKCallback'$"):
        trl_ib.PassAtKCallback


def imports_within(package: str) -> dict[str, set[str]]:
    """module -> the modules of `package` it imports (anywhere in its source, function bodies included), read from
    the source. A module's parent packages are left out: Python imports them before it in any case."""
    paths = {
        ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"): path
        for path in (ROOT / package).rglob("*.py")
    }
    graph = {}
    for name, path in paths.items():
        here = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        imported = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                parts = here[: len(here) - node.level + 1] if node.level else []
                base = ".".join(parts + ([node.module] if node.module else []))
                # `from package import submodule` depends on the submodule, `from module import name` on the module
                imported |= {
                    f"{base}.{alias.name}" if f"{base}.{alias.name}" in paths else base for alias in node.names
                }
        graph[name] = {other for other in imported & set(paths) if not (name + ".").startswith(other + ".")}
    return graph


@pytest.mark.parametrize("package", ["peft_ib", "trl_ib", "hub_cards"])
def test_no_import_circles(package):
    graph, done = imports_within(package), set()

    def circle_from(name, path):
        for other in sorted(graph[name]):
            if other in path:
                return path[path.index(other) :] + [other]
            if other not in done and (found := circle_from(other, path + [other])):
                return found
        done.add(name)
        return None

    for name in sorted(graph):
        assert circle_from(name, [name]) is None, " -> ".join(circle_from(name, [name]))


def test_no_library_module_imports_the_command_line():
    def in_cli(name):
        return name == "trl_ib.cli" or name.startswith("trl_ib.cli.")

    graph = imports_within("trl_ib")
    assert {
        name: sorted(filter(in_cli, others))
        for name, others in graph.items()
        if not in_cli(name) and any(map(in_cli, others))
    } == {}
