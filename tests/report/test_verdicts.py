"""Every verdict sentence reads correctly for every outcome."""

import pytest

from loss_slope.report import verdicts as V
from loss_slope.report.results import H1Criterion, H2Result, NotComputable

H2_SETTINGS = {"min_abs_rho": 0.7, "max_p": 0.01, "sign": "negative", "confidence": 0.9}


def _h2(verdict, rho, lo, hi, p):
    return H2Result.from_dict(
        {
            "verdict": verdict,
            "n_runs": 216,
            "n_cells": 36,
            "settings": H2_SETTINGS,
            "overall": {"spearman_rho": rho, "spearman_ci_low": lo, "spearman_ci_high": hi, "spearman_p": p},
        }
    )


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
    assert V.h2_headline(NotComputable(error="3 cells")) == "H2 not computable: 3 cells"
    assert V.h1_headline(NotComputable(error="no run"), confidence=0.95).endswith("no run")
    assert V.h1_criterion_sentence(NotComputable(error="no run"), confidence=0.95) == "Not computable: no run."


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
    res = H1Criterion.from_dict(
        {
            "overall": {"k": 170, "n": 200, "share": 0.85, "ci_low": 0.81, "ci_high": 0.89, "n_cells": 36},
            "verdicts": verdicts,
        }
    )
    text = V.h1_criterion_sentence(res, confidence=0.9)
    assert V.h1_headline(res, confidence=0.9).startswith(f"H1 {V.h1_verdicts_short(verdicts)}: 170 of 200 runs")
    for part in parts:
        assert part in text
    assert "90 % cluster-aware interval" in text and "36 cells" in text
    # which clustered variance and t df the interval rests on, where stats.json says
    two_way = {"variance": "cells and seeds", "df": 5, "n_cells": 36}
    res = H1Criterion.from_dict({"overall": {**res.overall.to_dict(), **two_way}, "verdicts": verdicts})
    assert "36 cells, clustered by cells and seeds, t on 5 df)" in V.h1_criterion_sentence(res, confidence=0.9)


def test_figure_titles_use_the_configured_confidence_not_95():
    """Figure titles take their confidence level and thresholds from the statistics' settings."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from loss_slope.report import figures as F
    from loss_slope.report.summarize import run_table, study_statistics

    from .conftest import STUDY, partial_sweep

    runs, fits = partial_sweep()
    table = run_table([f["row"] for f in fits], runs)
    stats = study_statistics(table, study={**STUDY, "confidence": 0.9, "r2_threshold": 0.97}, study_name="syn")
    b = F.figure_builders(table, stats, {})
    for name in ("h1_criteria", "ablation", "alpha_vs_best_val", "r2_histogram"):
        fig = b[name]()
        text = " ".join(
            [fig._suptitle.get_text() if fig._suptitle else ""]
            + [t for ax in fig.axes for t in (ax.get_title("left"), ax.get_title(), ax.get_xlabel(), ax.get_ylabel())]
        )
        assert "90 %" in text and "95 %" not in text, (name, text)
        plt.close(fig)
    fig = b["r2_histogram"]()
    assert "R² = 0.97" in " ".join(t.get_text() for t in fig.axes[0].get_legend().get_texts())
    plt.close(fig)


@pytest.mark.parametrize(
    "lo,hi,verdict,shown",
    [
        (0.8996, 0.97, "inconclusive", "89.96 %–97 %"),  # whole percent would print 90 % beside "reaches both sides"
        (0.70, 0.8996, "not supported", "70 %–89.96 %"),
        (0.9, 0.97, "supported", "90 %–97 %"),
        (0.9004, 0.97, "supported", "90 %–97 %"),
        (0.8999996, 0.97, "inconclusive", "89.999 %–97 %"),  # within 5e-7: rounded down, still below 90 %
    ],
)
def test_a_share_interval_is_printed_on_its_side_of_the_target(lo, hi, verdict, shown):
    from loss_slope.report.results import Share

    share = Share.from_dict(
        {"k": 19, "n": 20, "share": 0.95, "ci_low": lo, "ci_high": hi, "n_cells": 8, "verdicts": {"0.9": verdict}}
    )
    sentence = V.h1_failures_sentence(share, confidence=0.95)
    assert f"interval {shown}" in sentence and f"{verdict} against 90 %" in sentence


@pytest.mark.parametrize(
    "lo,hi,p,shown",
    [
        # each bound and the p-value printed on their side of ρ ≤ −0.7 and p < 0.01, as the verdict reads them
        (-0.6996, -0.2, 0.2, "CI -0.6996 to -0.20"),  # two decimals would print −0.70, meeting ρ ≤ −0.7
        (-0.95, -0.7004, 0.0099996, "CI -0.95 to -0.7004"),
        (-0.95, -0.7, 0.001, "CI -0.95 to -0.70"),  # on the threshold: already exact
    ],
)
def test_an_h2_interval_is_printed_on_its_side_of_the_threshold(lo, hi, p, shown):
    from loss_slope.analysis.stats import verdict_rho

    verdict = verdict_rho((lo, hi), p, 0.7, 0.01, "negative")
    head = V.h2_headline(_h2(verdict, (lo + hi) / 2, lo, hi, p))
    assert shown in head, head


@pytest.mark.parametrize(
    "p,shown,verdict",
    [
        (0.0099996, "p = 0.0099996", "supported"),
        (0.01, "p = 0.01", "inconclusive"),
        (0.0104, "p = 0.0104", "inconclusive"),
        (0.2, "p = 0.2", "inconclusive"),
    ],
)
def test_a_p_value_is_printed_on_its_side_of_max_p(p, shown, verdict):
    from loss_slope.analysis.stats import verdict_rho

    assert verdict_rho((-0.95, -0.75), p, 0.7, 0.01, "negative") == verdict
    head = V.h2_headline(_h2(verdict, -0.85, -0.95, -0.75, p))
    assert f"{shown};" in head and head.startswith(f"H2 {verdict}:")


def test_targets_and_the_confidence_level_are_printed_exactly():
    res = H1Criterion.from_dict(
        {
            "overall": {"k": 90, "n": 100, "share": 0.9, "ci_low": 0.8249, "ci_high": 0.95, "n_cells": 20},
            "verdicts": {"0.825": "inconclusive"},
        }
    )
    text = V.h1_criterion_sentence(res, confidence=0.995)
    assert "99.5 % cluster-aware interval 82 %–95 %" in text  # the bound prints below the 82.5 % target
    assert "inconclusive against 82.5 % (the interval reaches both sides of 82.5 %" in text
    assert V.h1_headline(res, confidence=0.975).startswith("H1 inconclusive vs 82.5 %:")
    assert "97.5 % CI" in V.h1_headline(res, confidence=0.975)


def test_point_estimates_are_printed_on_their_side_of_the_threshold():
    """ρ = −0.6996 beside 'ρ ≤ −0.7' and a share of 79.996 % beside an 80 % target keep their digits."""
    head = V.h2_headline(_h2("inconclusive", -0.6996, -0.8, -0.5, 0.001))
    assert "Spearman ρ = -0.6996 " in head, head
    res = H1Criterion.from_dict(
        {
            "overall": {"k": 79996, "n": 100000, "share": 0.79996, "ci_low": 0.7, "ci_high": 0.85, "n_cells": 20},
            "verdicts": {"0.8": "inconclusive"},
        }
    )
    assert "(79.996 %; 95 % cluster-aware" in V.h1_criterion_sentence(res, confidence=0.95)
    assert "(79.996 %, 95 % CI" in V.h1_headline(res, confidence=0.95)


def test_an_h2_without_an_interval_says_there_is_none():
    reason = V.h2_verdict_reason("inconclusive", H2_SETTINGS, ci=(None, None))
    assert "no interval" in reason and "reaches both sides" not in reason
    assert "reaches both sides" in V.h2_verdict_reason("inconclusive", H2_SETTINGS, ci=(-0.8, -0.5))
