"""WER text normaliser (agrepa.evaluation.text_norm): the documented cases and jiwer on normalised text."""
import jiwer
import pytest

from agrepa.evaluation import text_norm
from agrepa.evaluation.text_norm import normalize


@pytest.mark.parametrize("raw, expected", [
    ("Mr. Smith's 2 dogs", "mister smiths two dogs"),
    ("I don't know, it's 1990!", "i do not know its nineteen ninety"),
    ("We'll pay $5 (50%)", "we will pay five dollars fifty percent"),
    ("The 1st of the 1980s", "the first of the nineteen eighties"),
    ("He won't; she can't.", "he will not she can not"),
    ("Dr Who vs. the Daleks", "doctor who versus the daleks"),
    ("In 2005 and 2024", "in two thousand five and twenty twenty four"),
    ("1905, 1900 and 123", "nineteen oh five nineteen hundred and one hundred twenty three"),
    ("1,000,000 people", "one million people"),
    ("pi is 3.14", "pi is three point one four"),
    ("They\u2019re well-known 21st-century heroes", "they are well known twenty first century heroes"),
    ("the '80s", "the eighties"),
    ("  MULTIPLE   spaces\tand\nlines ", "multiple spaces and lines"),
    ("", ""),
])
def test_documented_rules(raw, expected):
    assert normalize(raw) == expected


def test_number_words():
    assert text_norm.cardinal(0) == "zero"
    assert text_norm.cardinal(1001) == "one thousand one"
    assert text_norm.cardinal(40_500_017) == "forty million five hundred thousand seventeen"
    assert text_norm.ordinal(12) == "twelfth" and text_norm.ordinal(20) == "twentieth"
    assert text_norm.ordinal(100) == "one hundredth"


def test_idempotent():
    for s in ["Mr. Smith's 2 dogs", "It's the 1990s, isn't it?", "$3.50 & 10%"]:
        once = normalize(s)
        assert normalize(once) == once


def test_jiwer_on_normalised_text():
    ref = "Mr. Smith's 2 dogs don't bark."
    hyp = "mister smiths two dogs do not bark"
    assert jiwer.wer(normalize(ref), normalize(hyp)) == 0.0
    # a real substitution still counts: 1 error in 7 reference words
    assert jiwer.wer(normalize(ref), "mister smiths three dogs do not bark") == pytest.approx(1 / 7)
    # without normalisation the same pair is full of spurious errors
    assert jiwer.wer(ref, hyp) > 0.5
