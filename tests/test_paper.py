"""The paper's values (fmct_lib.report.paper): sources, consistency and the filter the figures use."""
from __future__ import annotations

import hashlib
from pathlib import Path

import re

import pytest

from fmct_lib.report import paper


def test_paper_values_are_consistent_with_the_reported_relative_improvements():
    pv = paper.load_paper_values()
    for dataset, reported in (("nyu_langone", 16.07), ("nyu_long_island", 20.86), ("rsna", 12.01)):
        auc = pv[(pv.dataset == dataset) & (pv.metric == "auroc") & (pv.task == "macro")].set_index("model")
        computed = 100 * (auc.loc["finetune", "value"] / auc.loc["scratch", "value"] - 1)
        rel = pv[(pv.dataset == dataset) & (pv.metric == "relative_improvement_pct")]["value"].item()
        # the paper rounds the AUCs to 3 decimals, so the ratio of the rounded values is within ~0.02 %
        assert computed == pytest.approx(rel, abs=0.02), dataset


def test_paper_values_have_sources_and_plausible_values():
    pv = paper.load_paper_values()
    assert {("nyu_langone", 0.852), ("nyu_langone", 0.734), ("nyu_long_island", 0.904),
            ("nyu_long_island", 0.748), ("rsna", 0.923), ("rsna", 0.824), ("cq500", 0.863)} <= set(
        zip(pv.loc[pv.metric == "auroc", "dataset"], pv.loc[pv.metric == "auroc", "value"]))
    assert pv["source"].str.contains("Nat. Biomed. Eng. 2026").all()
    assert pv["quote"].str.len().gt(20).all()
    aucs = pv.loc[pv.metric == "auroc", "value"]
    assert aucs.between(0.5, 1.0).all()
    assert pv.loc[pv.model == "fewshot", "k"].notna().all()


def test_paper_values_reject_a_bad_relation(tmp_path):
    bad = paper.load_paper_values()
    bad.loc[0, "relation"] = "~"
    path = tmp_path / "pv.csv"
    bad.to_csv(path, index=False)
    with pytest.raises(ValueError, match="relation"):
        paper.load_paper_values(path)


def test_paper_values_for_filters():
    rows = paper.paper_values_for("fig1e", "rsna", "auroc")
    assert set(rows["dataset"]) == {"rsna"} and set(rows["metric"]) == {"auroc"}
    assert len(rows) == 2 + 5  # macro fine-tuned and scratch + the five "> 0.90" haemorrhage tasks


# ------------------------------------------------------------------------------------ against the paper's text
PAPER_TEXT = paper.PAPER_VALUES_PATH.parents[3] / "shared" / "paper" / "nature_bme_2026.txt"


def _normalised(text: str) -> str:
    """Thin and no-break spaces as spaces, curly quotes straight, runs of white space as one space."""
    text = text.replace("\u2009", " ").replace("\xa0", " ").replace("\u2019", "'").replace("\u2018", "'")
    return " ".join(text.split())


def _printed_forms(value: float) -> set[str]:
    return {f"{abs(value):g}", f"{abs(value):.2f}", f"{abs(value):,.0f}"}


VERIFIED_QUOTES = Path(__file__).parent / "assets" / "paper_quotes.sha256"


def _quote_hash(quote: str) -> str:
    return hashlib.sha256(_normalised(quote).encode()).hexdigest()


def test_every_value_is_printed_in_its_quote_and_every_quote_is_the_papers():
    """Where the paper's text is at hand (../shared/paper), every quote is found in it and the list of verified
    quotes (tests/assets/paper_quotes.sha256) is rewritten to match; everywhere else (CI's clean clone) every
    quote must be on that list, so a quote added or edited without checking it against the paper fails."""
    values = paper.load_paper_values()
    hashes = sorted({_quote_hash(q) for q in values["quote"]})
    if PAPER_TEXT.exists():
        text = _normalised(PAPER_TEXT.read_text(encoding="utf-8"))
        for i, row in values.iterrows():
            for fragment in _normalised(row["quote"]).split("..."):
                assert fragment.strip() in text, f"row {i + 2}: not in the paper: {fragment.strip()!r}"
        VERIFIED_QUOTES.write_text("".join(h + "\n" for h in hashes))
    verified = set(VERIFIED_QUOTES.read_text().split())
    unverified = [i + 2 for i, q in enumerate(values["quote"]) if _quote_hash(q) not in verified]
    assert not unverified, f"paper_values.csv rows {unverified}: quotes never checked against the paper's text"
    for i, row in values.iterrows():
        assert any(form in _normalised(row["quote"]) for form in _printed_forms(row["value"])), \
            f"row {i + 2}: {row['value']} not quoted"


def test_every_number_a_quote_prints_is_a_value():
    """No number of a quoted sentence is left out (a P value, a count, a comparison model's gain)."""
    pv = paper.load_paper_values()
    values = {form for v in pv["value"] for form in _printed_forms(v)}
    for quote in pv["quote"]:
        for number in re.findall(r"\d[\d,]*\.\d+|\d{1,3}(?:,\d{3})+", _normalised(quote)):
            assert number in values, f"{number} is printed in {quote!r} but is no row's value"


def test_the_rsna_bounds_are_on_rsnas_five_classes():
    rows = paper.paper_values_for("fig1e", "rsna", "auroc")
    # Methods, 'RSNA - 5 detection tasks': any (ingested as ich), IPH, IVH, SAH and SDH; no EDH
    assert set(rows.loc[rows.relation == ">", "task"]) == {"ich", "iph", "ivh", "sah", "sdh"}


def test_the_ns_behind_the_cis_and_the_p_values_are_recorded():
    pv = paper.load_paper_values()
    n = pv[pv.metric == "n_scans"].set_index(["figure", "dataset"])["value"].to_dict()
    assert n == {("fig1e", "nyu_langone"): 26487, ("fig1e", "nyu_long_island"): 2202, ("fig1e", "rsna"): 1058,
                 ("fig1g", "cq500"): 236, ("fig3", "rsna"): 10379, ("fig3", "cq500"): 1572}
    p = pv[pv.metric == "p_value"]
    assert set(p.loc[p.figure == "fig1e", "dataset"]) == {"nyu_langone", "nyu_long_island", "rsna"}
    assert (p.relation == "<").all() and (p.value == 0.001).all()


def test_describe_paper_value_reads_as_the_paper_says_it():
    pv = paper.load_paper_values()
    lines = {paper.describe_paper_value(row) for _, row in pv.iterrows()}
    assert {"paper (NYU Langone): fine-tuned, macro-AUROC 0.852",
            "paper (RSNA): fine-tuned vs scratch, macro-AUROC P < 0.001",
            "paper (CQ500): FM-HCT vs Google CT, retrieval mAP relative gain +9.99%",
            "paper (RSNA): few-shot, IVH AUROC > 0.9 at K = 8",
            "paper (its four datasets): Merlin vs FM-HCT, macro-AUROC relative gain -13.05%",
            "paper (RSNA): n = 1,058 scans"} <= lines
