"""Every verdict sentence reads correctly for every outcome."""

import pytest

from loss_slope.report import verdicts as V

H2_SETTINGS = {"min_abs_rho": 0.7, "max_p": 0.01, "sign": "negative", "confidence": 0.9}


def _h2(verdict, rho, lo, hi, p):
    return {
        "verdict": verdict,
        "n_runs": 216,
        "n_cells": 36,
        "settings": H2_SETTINGS,
        "overall": {"spearman_rho": rho, "spearman_ci_low": lo, "spearman_ci_high": hi, "spearman_p": p},
    }


@pytest.mark.parametrize(
    "verdict,rho,lo,hi,p,must,must_not",
    [
        ("supported", -0.9, -0.95, -0.8, 1e-6, "the whole interval meets ρ ≤ −0.7", "cannot decide"),
        ("not supported", 0.1, -0.2, 0.4, 0.5, "falls short of ρ ≤ −0.7", "meets"),
        ("inconclusive", -0.7, -0.85, -0.5, 1e-4, "the data cannot decide", "rule out"),
    ],
)
def test_h2_sentences_match_the_verdict(verdict, rho, lo, hi, p, must, must_not):
    reason = V.h2_verdict_reason(verdict, H2_SETTINGS)
    assert must in reason and must_not not in reason
    head = V.h2_headline(_h2(verdict, rho, lo, hi, p))
    assert head.startswith(f"H2 {verdict}:")
    assert "90 % CI" in head  # the configured level, never a hard-coded 95 %
    assert "36 cells" in head


def test_h2_direction_follows_the_configured_sign():
    assert "ρ ≥ 0.7" in V.h2_criterion({**H2_SETTINGS, "sign": "positive"})
    assert "|ρ| ≥ 0.7" == V.h2_criterion({**H2_SETTINGS, "sign": "either"})


def test_not_computable_says_why():
    assert V.h2_headline({"verdict": "not computable", "error": "3 cells"}) == "H2 not computable: 3 cells"
    assert V.h1_headline({"verdict": "not computable", "error": "no run"}, confidence=0.95).endswith("no run")
    assert V.h1_criterion_sentence({"verdict": "not computable", "error": "no run"}, confidence=0.95) == (
        "Not computable: no run."
    )


@pytest.mark.parametrize(
    "verdicts,parts",
    [
        (
            {"0.8": "supported", "0.9": "inconclusive"},
            [
                "supported against 80 % (the whole interval is at or above 80 %)",
                "inconclusive against 90 % (the interval reaches both sides of 90 %: the data cannot decide)",
            ],
        ),
        (
            {"0.8": "not supported", "0.9": "not supported"},
            ["not supported against 80 % (the whole interval is below 80 %)"],
        ),
    ],
)
def test_h1_sentences_match_each_verdict(verdicts, parts):
    res = {
        "overall": {"k": 170, "n": 200, "share": 0.85, "ci_low": 0.81, "ci_high": 0.89, "n_cells": 36},
        "verdicts": verdicts,
    }
    text = V.h1_criterion_sentence(res, confidence=0.9)
    for part in parts:
        assert part in text
    assert "90 % cluster-aware interval" in text and "36 cells" in text
