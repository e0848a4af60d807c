"""English text normaliser for WER: references and ASR hypotheses both go through it.

Rules, applied in this order (the same for every text, so ref and hyp are comparable):

1. Unicode NFKC; curly quotes/apostrophes become ``'``; lower-case.
2. Titles and common abbreviations are spelled out (with or without the period):
   ``mr`` -> ``mister``, ``mrs`` -> ``missus``, ``ms`` -> ``miss``, ``dr`` -> ``doctor``,
   ``st`` -> ``saint``, ``jr`` -> ``junior``, ``sr`` -> ``senior``, ``prof`` -> ``professor``,
   ``vs`` -> ``versus``, ``etc`` -> ``et cetera``.
3. Contractions are expanded: ``won't`` -> ``will not``, ``can't`` -> ``can not``,
   ``shan't`` -> ``shall not``, ``n't`` -> `` not``, ``'re`` -> `` are``, ``'ve`` -> `` have``,
   ``'ll`` -> `` will``, ``'m`` -> `` am``, ``'d`` -> `` would``, ``let's`` -> ``let us``.
   ``'s`` is ambiguous (is / has / possessive) and is NOT expanded: the apostrophe is dropped
   and the ``s`` stays attached (``smith's`` -> ``smiths``, ``it's`` -> ``its``).
4. Symbols: ``%`` -> `` percent``, ``&`` -> `` and ``, ``$N`` -> ``N dollars``.
5. Numbers to words: thousands separators are removed (``1,000`` -> ``1000``);
   ordinals ``1st 2nd 3rd 4th`` -> ``first second third fourth``;
   decades ``1990s`` -> ``nineteen nineties``, ``80s`` -> ``eighties``;
   years: four-digit integers 1100-1999 and 2010-2099 are read as years
   (``1990`` -> ``nineteen ninety``, ``1905`` -> ``nineteen oh five``, ``2024`` -> ``twenty twenty four``);
   ``2000``-``2009`` and every other integer are read as cardinals without "and"
   (``2005`` -> ``two thousand five``, ``123`` -> ``one hundred twenty three``);
   decimals ``3.14`` -> ``three point one four``.
6. Hyphens and every remaining character that is not a letter, digit or space become spaces;
   whitespace is collapsed.

Examples::

    "Mr. Smith's 2 dogs"          -> "mister smiths two dogs"
    "I don't know, it's 1990!"    -> "i do not know its nineteen ninety"
    "We'll pay $5 (50%)"          -> "we will pay five dollars fifty percent"
    "The 1st of the 1980s"        -> "the first of the nineteen eighties"
"""
from __future__ import annotations

import re
import unicodedata

_ONES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
         "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen",
         "nineteen"]
_TENS = ["", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]
_SCALES = [(10 ** 12, "trillion"), (10 ** 9, "billion"), (10 ** 6, "million"), (1000, "thousand")]
_ORDINAL_WORDS = {"one": "first", "two": "second", "three": "third", "five": "fifth", "eight": "eighth",
                  "nine": "ninth", "twelve": "twelfth"}

ABBREVIATIONS = {"mr": "mister", "mrs": "missus", "ms": "miss", "dr": "doctor", "st": "saint",
                 "jr": "junior", "sr": "senior", "prof": "professor", "vs": "versus", "etc": "et cetera"}

_CONTRACTIONS = [
    (r"\bwon't\b", "will not"), (r"\bcan't\b", "can not"), (r"\bshan't\b", "shall not"),
    (r"\blet's\b", "let us"), (r"n't\b", " not"), (r"'re\b", " are"), (r"'ve\b", " have"),
    (r"'ll\b", " will"), (r"'m\b", " am"), (r"'d\b", " would"),
]


def cardinal(n: int) -> str:
    """English words for a non-negative integer, without "and": 123 -> "one hundred twenty three"."""
    if n < 0:
        return "minus " + cardinal(-n)
    if n < 20:
        return _ONES[n]
    if n < 100:
        tens, ones = divmod(n, 10)
        return _TENS[tens] + ("" if ones == 0 else " " + _ONES[ones])
    if n < 1000:
        hundreds, rest = divmod(n, 100)
        return _ONES[hundreds] + " hundred" + ("" if rest == 0 else " " + cardinal(rest))
    for value, word in _SCALES:
        if n >= value:
            high, rest = divmod(n, value)
            return cardinal(high) + " " + word + ("" if rest == 0 else " " + cardinal(rest))
    raise AssertionError("unreachable")


def ordinal(n: int) -> str:
    """English ordinal words: 1 -> "first", 21 -> "twenty first", 100 -> "one hundredth"."""
    words = cardinal(n).split()
    last = words[-1]
    if last in _ORDINAL_WORDS:
        words[-1] = _ORDINAL_WORDS[last]
    elif last.endswith("y"):
        words[-1] = last[:-1] + "ieth"
    else:
        words[-1] = last + "th"
    return " ".join(words)


def year(n: int) -> str:
    """A year read in pairs: 1990 -> "nineteen ninety", 1905 -> "nineteen oh five", 1900 -> "nineteen hundred"."""
    high, low = divmod(n, 100)
    if low == 0:
        return cardinal(high) + " hundred"
    if low < 10:
        return cardinal(high) + " oh " + cardinal(low)
    return cardinal(high) + " " + cardinal(low)


def _is_year(n: int) -> bool:
    return 1100 <= n <= 1999 or 2010 <= n <= 2099


def _plural(words: str) -> str:
    """Plural of the last word of a number: "ninety" -> "nineties", "six" -> "sixes"."""
    head, _, last = words.rpartition(" ")
    if last.endswith("y"):
        last = last[:-1] + "ies"
    elif last.endswith(("s", "x")):
        last = last + "es"
    else:
        last = last + "s"
    return (head + " " + last).strip()


def _integer(text: str) -> str:
    n = int(text)
    if len(text) == 4 and _is_year(n):
        return year(n)
    return cardinal(n)


def _numbers(text: str) -> str:
    text = re.sub(r"(?<=\d),(?=\d{3}\b)", "", text)                        # 1,000 -> 1000
    text = re.sub(r"\$(\d+(?:\.\d+)?)", r"\1 dollars", text)               # $5 -> 5 dollars
    text = re.sub(r"\b(\d+)(st|nd|rd|th)\b", lambda m: ordinal(int(m.group(1))), text)
    text = re.sub(r"\b(\d{4})s\b", lambda m: _plural(_integer(m.group(1))), text)  # 1990s
    text = re.sub(r"'?\b(\d0)s\b", lambda m: _plural(cardinal(int(m.group(1)))), text)  # 80s, '80s
    text = re.sub(r"\b(\d+)\.(\d+)\b",
                  lambda m: _integer(m.group(1)) + " point " + " ".join(_ONES[int(d)] for d in m.group(2)), text)
    return re.sub(r"\d+", lambda m: " " + _integer(m.group(0)) + " ", text)


def normalize(text: str) -> str:
    """Normalise one transcript for WER (rules in the module docstring)."""
    if text is None:
        return ""
    t = unicodedata.normalize("NFKC", str(text))
    t = t.replace("\u2019", "'").replace("\u2018", "'").replace("`", "'").lower()
    t = re.sub(r"\b(" + "|".join(ABBREVIATIONS) + r")\b\.?",
               lambda m: ABBREVIATIONS[m.group(1)], t)
    for pattern, repl in _CONTRACTIONS:
        t = re.sub(pattern, repl, t)
    t = t.replace("%", " percent").replace("&", " and ")
    t = _numbers(t)
    t = t.replace("'", "")                         # possessive / remaining apostrophes
    t = re.sub(r"[^a-z0-9 ]+", " ", t)            # hyphens and punctuation
    return re.sub(r"\s+", " ", t).strip()
