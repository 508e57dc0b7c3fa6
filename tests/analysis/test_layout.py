"""The package's layout: a small top level, no lazy or private imports across modules,
pandas only with the study statistics, a runnable docstring, text summaries."""

import ast
import doctest
import subprocess
import sys
from pathlib import Path

import numpy as np

import loss_slope.analysis as analysis
from loss_slope.analysis import CurveSpec, compare_models, detect_knee, fit_exponential, fit_power_law, make_curve

PACKAGE = Path(analysis.__file__).parent


def test_importing_the_package_does_not_import_pandas():
    code = "import loss_slope.analysis, sys; assert 'pandas' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_the_study_statistics_load_on_first_access():
    from loss_slope.analysis import h1_statistics, h2_statistics
    from loss_slope.analysis.stats import h1_statistics as h1, h2_statistics as h2

    assert h1_statistics is h1 and h2_statistics is h2


def test_the_top_level_is_small_and_every_name_resolves():
    assert 12 <= len(analysis.__all__) <= 18
    for name in analysis.__all__:
        assert getattr(analysis, name) is not None
    for gone in ("screen_curve", "register_knee_method", "LRT_THRESHOLD"):
        assert gone not in analysis.__all__


def test_the_package_docstring_runs():
    res = doctest.testmod(analysis, optionflags=doctest.ELLIPSIS)
    assert res.attempted >= 3 and res.failed == 0


def _imports(path: Path):
    tree = ast.parse(path.read_text())
    top = set(map(id, tree.body))
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node, id(node) in top


def test_no_lazy_imports_and_no_private_names_across_modules():
    for path in sorted(PACKAGE.glob("*.py")):
        for node, at_top in _imports(path):
            if not at_top and path.name != "__init__.py":
                raise AssertionError(f"{path.name}:{node.lineno}: function-level import")
            if isinstance(node, ast.ImportFrom) and node.level:
                assert not (node.module or "").startswith("_"), f"{path.name}:{node.lineno}: private module"
                for alias in node.names:
                    assert not alias.name.startswith("_"), f"{path.name}:{node.lineno}: private name {alias.name}"


#: The layers of docs/analysis.md ("Public API"), bottom first.
LAYERS = (
    "exceptions",
    "data",
    "noise",
    "solver",
    "slopes",
    "scan",
    "results",
    "models",
    "search",
    "build",
    "estimation",
    "fits",
    "knee",
    "fit_check",
    "two_break",
    "shape",
    "curve",
    "stats",
    "synthetic",
    "synthetic_study",
    "calibration",
    "power",
)


def test_every_module_imports_only_from_the_layers_below_it():
    assert {p.stem for p in PACKAGE.glob("*.py")} == set(LAYERS) | {"__init__"}
    for i, name in enumerate(LAYERS):
        for node, _ in _imports(PACKAGE / f"{name}.py"):
            if isinstance(node, ast.ImportFrom) and node.level:
                deps = [node.module] if node.module else [a.name for a in node.names]
                for dep in deps:
                    assert LAYERS.index(dep) < i, f"{name} imports {dep}"


def _curve():
    spec = CurveSpec(n_steps=3000, alpha=0.3, knee_step=200.0, alpha_after=1.0, noise_sigma=0.04)
    return make_curve(spec, seed=1)


def test_fit_summary_lists_every_parameter_and_the_criteria():
    c = _curve()
    for fit in (fit_power_law(c.steps, c.loss), fit_exponential(c.steps, c.loss)):
        text = fit.summary()
        lines = text.splitlines()
        assert lines[0].startswith(type(fit).__name__) and f"{fit.n_obs} points" in lines[0]
        for name in fit.params:
            assert any(line.split()[:1] == [name] for line in lines), name
        assert "AIC" in text and "R2" in text and "phi" in text
        assert len(lines) == 4 + len(fit.params)


def test_knee_summary_says_where_and_why():
    c = _curve()
    k = detect_knee(c.steps, c.loss)
    text = k.summary()
    assert k.found and text.startswith("KneeResult (broken_power_lrt): knee at step")
    assert f"{k.step:.4g}" in text and "threshold 11" in text and "->" in text
    none = detect_knee(c.steps, c.loss, threshold=np.inf)
    assert none.summary().splitlines()[0] == "KneeResult (broken_power_lrt): no knee"


def test_comparison_summary_has_one_row_per_model_and_the_best():
    c = _curve()
    cmp = compare_models(c.steps, c.loss)
    lines = cmp.summary().splitlines()
    for model in cmp.fits:
        assert sum(line.split()[:1] == [model] for line in lines) == 1
    assert lines[-1] == f"  best by AIC_ac: {cmp.best_aic}; by BIC_ac: {cmp.best_bic}"
