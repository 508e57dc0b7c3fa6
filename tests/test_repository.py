"""The repository itself: ruff-clean, self-contained, and installable without the source tree.

* ``ruff check`` and ``ruff format --check`` pass (the venv's ruff, pinned in requirements.txt;
  rules in pyproject.toml ``[tool.ruff]``).
* No tracked file refers to a document that is not in the repository.
* A non-editable install (``pip install --target``) works from a folder outside the repository:
  the package imports, finds its config schema, composes the Hydra training config and runs its
  console script.
"""

import ast
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from _util import REPO, run_cmd

RUFF = Path(sys.executable).parent / "ruff"
# documents that live outside the repository; spelled in two parts so this file does not name them
OUTSIDE_DOCS = ["DES" + "IGN"]


def _ruff(*args: str) -> subprocess.CompletedProcess:
    if not RUFF.exists():
        pytest.skip(f"ruff is not installed next to {sys.executable} (pip install -r requirements.txt)")
    return subprocess.run([str(RUFF), *args], cwd=REPO, capture_output=True, text=True, timeout=300)


def test_ruff_check_is_clean():
    out = _ruff("check", "--no-cache", ".")
    assert out.returncode == 0, f"ruff check . found problems:\n{out.stdout}{out.stderr}"


def test_ruff_format_is_clean():
    out = _ruff("format", "--check", "--no-cache", ".")
    assert out.returncode == 0, (
        f"ruff format --check . would reformat (run `ruff format .`):\n{out.stdout[-8000:]}{out.stderr}"
    )


def _tracked_files() -> list[Path]:
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    out = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, timeout=60, check=True)
    return [REPO / name for name in out.stdout.decode().split("\0") if name]


def test_no_tracked_file_refers_to_a_document_outside_the_repository():
    files = _tracked_files()
    assert len(files) > 100
    hits = []
    for path in files:
        if not path.is_file():  # a deleted but still tracked file, or a submodule
            continue
        text = path.read_bytes()
        for word in OUTSIDE_DOCS:
            if word.encode() in text:
                hits.append(f"{path.relative_to(REPO)}: {word}")
    assert not hits, "tracked files name a document outside the repository:\n" + "\n".join(hits)


INSTALLED_CHECK = textwrap.dedent(
    """
    import sys
    from pathlib import Path

    target = Path(sys.argv[1]).resolve()
    import loss_slope
    from loss_slope.study.config import SCHEMA_PATH, load_schema, validate_config
    from loss_slope.train.compose import compose_train_config

    assert Path(loss_slope.__file__).resolve().is_relative_to(target), loss_slope.__file__
    assert SCHEMA_PATH.is_relative_to(target), SCHEMA_PATH
    schema = load_schema()
    assert "variants" in schema["properties"], sorted(schema["properties"])
    config = validate_config({"variants": {"A": {"experiment": "s_core"}}})  # defaults from the schema
    assert config["training"]["epochs"] > 0, config["training"]
    cfg = compose_train_config(["experiment=s_core", "seed=0", "run_dir=/nonexistent"])
    assert cfg.model._target_.startswith("loss_slope."), cfg.model
    print("OK", cfg.data.name)
    """
)


def test_non_editable_install_works_outside_the_repository(tmp_path):
    # build from a copy: setuptools writes build/ and *.egg-info next to the sources it builds
    src = tmp_path / "source"
    shutil.copytree(REPO / "src", src / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, src / name)
    target = tmp_path / "site"
    run_cmd(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            target,
            src,
        ],
        timeout=300,
    )

    packaged = {p.relative_to(target / "loss_slope") for p in (target / "loss_slope").rglob("*.yaml")}
    in_tree = {p.relative_to(REPO / "src" / "loss_slope") for p in (REPO / "src" / "loss_slope").rglob("*.yaml")}
    assert packaged == in_tree  # the Hydra conf tree and the config schema

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"PYTHONPATH": str(target)}

    def run(*args):
        out = subprocess.run([*map(str, args)], cwd=elsewhere, env=env, capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, f"{args} exited {out.returncode}\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
        return out.stdout

    assert run(sys.executable, "-c", INSTALLED_CHECK, target).startswith("OK")
    # the training entry point composes its config from the installed package (--cfg job: print, don't run)
    job = run(sys.executable, "-m", "loss_slope.train", "--cfg", "job", "experiment=s_core", "seed=0", "run_dir=x")
    assert "_target_: loss_slope.models.resnet" in job and "seed: 0" in job
    # the console script declared in [project.scripts]
    assert "status" in run(target / "bin" / "loss-slope", "--help")
    assert not any(elsewhere.iterdir())  # nothing written to the working directory


def test_every_rule_script_is_named_after_its_rule():
    """A rule, its script and the function the script calls share one name (docs/layout.md)."""
    pairs = []
    for smk in sorted((REPO / "workflow" / "rules").glob("*.smk")):
        rule = None
        for line in smk.read_text().splitlines():
            head = line.strip()
            if head.startswith(("rule ", "checkpoint ")) and head.endswith(":"):
                rule = head.split()[1][:-1]
            elif head.startswith('"../scripts/') and rule:
                pairs.append((smk.name, rule, Path(head.strip('"')).stem))
    assert len(pairs) >= 8, pairs
    mismatched = [p for p in pairs if p[1] != p[2]]
    assert not mismatched, f"rule and script names differ (file, rule, script): {mismatched}"
    scripts = {p.stem for p in (REPO / "workflow" / "scripts").glob("*.py")}
    assert scripts == {p[2] for p in pairs}, "a script no rule runs, or a rule's script is missing"


def test_no_private_name_is_imported_across_modules():
    """A name a module keeps private (``_name``) is used only there: what others need is public."""
    found = []
    for path in sorted((REPO / "src" / "loss_slope").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                found += [
                    f"{path.relative_to(REPO)}:{node.lineno} {a.name}"
                    for a in node.names
                    if a.name.startswith("_") and not a.name.startswith("__")
                ]
    assert not found, "private names imported from another module:\n" + "\n".join(found)
