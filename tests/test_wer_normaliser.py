"""WER text normalisation: Whisper's EnglishTextNormalizer (whisper-normalizer), as TTS papers report WER."""
import json
from importlib import resources

import pytest

from agrepa.evaluation.asr import normalize, wer_counts

# written form -> spoken form (what an ASR hears); both must normalise to the same text
CASES = [
    ("The café is naïve.", "the cafe is naive"),
    ("It costs $3.50.", "it costs three dollars fifty cents"),
    ("£5 and €10", "five pounds and ten euros"),
    ("The colour of the centre", "the color of the center"),
    ("I have 2 dogs and 21 cats", "i have two dogs and twenty one cats"),
    ("Mr. Smith won't go", "mister smith will not go"),
]

SENTENCES = [
    "Hello, world!", "It's 5 o'clock.", "The 1st and 2nd places.", "She said: \"no\".", "Dr. Who vs. the Daleks",
    "We'll pay $5 (50%).", "In 2005 and 2024.", "1,000,000 people", "pi is 3.14", "They're well-known heroes",
    "the '80s were fun", "  MULTIPLE   spaces ", "Colour, flavour and honour", "He realised the organisation",
    "Mrs. Jones's cat", "I'd've gone", "twenty-first century", "one hundred and five", "It is 10:30 am",
    "£20 million", "€3.99", "¥100", "3rd of May", "Nineteen ninety nine", "two thousand and one",
    "The C.I.A. report", "U.S.A. and U.K.", "hmm, uh, well", "[laughs] okay", "(inaudible) yes",
    "naïve café résumé", "Zoë's piñata", "façade", "don't can't won't", "you're we're they're",
    "I'm sure", "ain't it", "y'all", "gonna wanna", "St. Paul's Cathedral", "Jr. and Sr.",
    "100%", "50 percent", "1/2 cup", "three-quarters", "#1 hit", "A & B", "x+y=z", "e-mail", "co-operate",
    "The theatre's programme", "analyse the catalogue", "grey defence licence", "travelled and cancelled",
    "aluminium and aeroplane", "OK, ok, okay", "Mister Rogers", "first second third", "the 1990s", "twelfth",
]


@pytest.mark.parametrize("written, spoken", CASES)
def test_written_and_spoken_forms_give_zero_errors(written, spoken):
    assert normalize(written) == normalize(spoken)
    assert wer_counts([written], [spoken]).corpus_wer() == 0.0


def test_accents_are_folded_not_cut():
    assert normalize("café naïve") == "cafe naive"


def test_equals_whisper_normaliser_of_transformers_on_many_sentences():
    """Two maintained implementations of Whisper's normaliser agree (same spelling map)."""
    from transformers.models.whisper.english_normalizer import EnglishTextNormalizer

    mapping = json.loads(resources.files("whisper_normalizer").joinpath("normalizers/english.json").read_text())
    other = EnglishTextNormalizer(mapping)
    assert len(SENTENCES) >= 50
    for s in SENTENCES + [w for w, _ in CASES] + [s for _, s in CASES]:
        assert normalize(s) == other(s), s
