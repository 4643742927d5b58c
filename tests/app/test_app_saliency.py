"""The Saliency page through AppTest: its captions and help say what is on screen, or what a
button will do, and name the pixels the rank correlation ranks."""

from __future__ import annotations

from explorer.inside.saliency.compare import RANKED_PIXELS
from tests.app.test_app import assert_clean, start

AGREEMENT_NOTE = "· 16 images · at"  # the note beside "Measure agreement"


def agreement_note(at) -> str:
    (note,) = [c.value for c in at.caption if AGREEMENT_NOTE in c.value]
    return note


def test_the_agreement_note_never_names_a_method_it_has_not_measured():
    at = start("saliency", model="lenet5", amount="0.7")
    at.select_slider(key="sal_agree_n").set_value(16).run()
    at.selectbox(key="sal_method").set_value("integrated").run()
    assert_clean(at)
    # Before the button: what pressing it will do. The maps' fragment does not rerun this
    # one in a browser, so a method named here was the one chosen before (it said
    # "Gradient (saliency) · 32 images" with Integrated Gradients chosen).
    note = agreement_note(at)
    assert "chosen above" in note
    assert "Gradient" not in note and "Integrated" not in note
    assert not [c for c in at.caption if c.value.startswith("Lines: the means")]
    # After it: the results name the method and settings they were measured with.
    at.button(key="sal_agree_go").click().run()
    assert_clean(at)
    (shown,) = [c.value for c in at.caption if c.value.startswith("Lines: the means")]
    assert "(Integrated Gradients (steps 32), 16 images)" in shown
    assert RANKED_PIXELS in shown


def test_the_rank_correlation_says_which_pixels_it_ranks():
    at = start("saliency", model="lenet5", amount="0.7")
    assert_clean(at)
    (rank,) = [m for m in at.metric if m.label == "Rank correlation"]
    assert RANKED_PIXELS in rank.help
    (how,) = [e for e in at.expander if e.label == "How to read these maps"]
    text = " ".join(" ".join(m.value.split()) for m in how.markdown)
    assert "pixels where either map is nonzero" in text
    assert "share of its attribution" in text  # the difference compares shares
