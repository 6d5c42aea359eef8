"""What `pip install ib-ft` installs: the wheel holds the three packages' code and the few data files the code reads
(the card templates, the built-in dataset, the metric card with its Space's requirements), nothing else; the sdist
leaves out the demo's results and the benchmarks. Both are built from a copy of the working tree, so the build's
scratch folders never land in the checkout."""

import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("peft_ib", "trl_ib", "hub_cards")
DATA_FILES = {
    "hub_cards/templates/adapter_card.md",
    "hub_cards/templates/export_card.md",
    "trl_ib/data/code_sft.jsonl",
    "trl_ib/code_eval/metrics/pass_at_k_m/README.md",
    "trl_ib/code_eval/metrics/pass_at_k_m/requirements.txt",
    "trl_ib/code_eval/metrics/pass_at_k_m/packages.txt",
}
METADATA = {"METADATA", "WHEEL", "RECORD", "entry_points.txt", "top_level.txt"}


def source_files() -> list[str]:
    """The working tree as a fresh clone would have it: tracked and new files, not what .gitignore leaves out."""
    listed = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True, text=True, check=True
    )
    return [path for path in listed.stdout.splitlines() if (ROOT / path).is_file()]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """(wheel file names, sdist file names relative to its top folder), built from a copy of the working tree."""
    tree, out = tmp_path_factory.mktemp("tree"), tmp_path_factory.mktemp("dist")
    for path in source_files():
        (tree / path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / path, tree / path)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), "."],
        cwd=tree,
        check=True,
        capture_output=True,
    )
    script = f"from setuptools import build_meta; build_meta.build_sdist({str(out)!r})"
    subprocess.run([sys.executable, "-c", script], cwd=tree, check=True, capture_output=True)
    [wheel], [sdist] = out.glob("*.whl"), out.glob("*.tar.gz")
    with tarfile.open(sdist) as archive:
        sdist_names = {name.split("/", 1)[1] for name in archive.getnames() if "/" in name}
    return set(zipfile.ZipFile(wheel).namelist()), sdist_names, zipfile.ZipFile(wheel)


def test_the_wheel_holds_the_code_and_the_data_it_reads_nothing_else(built):
    names, _, _ = built
    metadata = {name for name in names if name.split("/")[0].endswith(".dist-info")}
    assert {name.split("/", 1)[1] for name in metadata} == METADATA
    code = {name for name in names - metadata if name.endswith(".py")}
    assert names - metadata - code == DATA_FILES
    expected_code = {
        str(path.relative_to(ROOT))
        for package in PACKAGES
        for path in (ROOT / package).rglob("*.py")
        if "__pycache__" not in path.parts
    }
    assert code == expected_code


def test_the_wheel_metadata_is_the_readme_and_the_console_script(built):
    names, _, wheel = built
    [metadata] = [name for name in names if name.endswith(".dist-info/METADATA")]
    description = wheel.read(metadata).decode().split("\n\n", 1)[1]
    assert description.strip() == (ROOT / "README.md").read_text().strip()
    [entry_points] = [name for name in names if name.endswith(".dist-info/entry_points.txt")]
    assert "ib-ft = trl_ib.cli:main" in wheel.read(entry_points).decode()


def test_the_sdist_leaves_results_and_benchmarks_in_the_repository(built):
    _, names, _ = built
    assert "pyproject.toml" in names and "README.md" in names and "trl_ib/data/code_sft.jsonl" in names
    assert not [name for name in names if name.split("/")[0] in {"results", "benchmarks", "docs", "examples"}]
    assert not [name for name in names if name.endswith((".png", ".json"))]
