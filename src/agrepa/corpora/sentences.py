"""A small English grammar: ordinary sentences with exact transcripts for synthetic speech.

A sentence is a main clause ``subject verb object`` grown with optional adjectives,
a prepositional phrase, a time phrase and a subordinate clause until it has about
the requested number of words. Only plain dictionary words are used (no digits,
abbreviations or names), so the text the synthesiser speaks is the transcript.
"""
from __future__ import annotations

import numpy as np

DETERMINERS = ["the", "a", "my", "her", "his", "our", "their", "that", "this"]
PLURAL_DETERMINERS = ["the", "my", "her", "his", "our", "their", "some", "those", "these"]
PERSON_ADJECTIVES = ["old", "young", "tired", "careful", "friendly", "busy", "patient", "clever",
                     "quiet", "kind", "happy", "angry"]
THING_ADJECTIVES = ["small", "heavy", "wooden", "old", "green", "warm", "empty", "broken",
                    "bright", "little", "new", "red", "large", "clean"]
PEOPLE = ["man", "woman", "child", "teacher", "doctor", "farmer", "driver", "sailor", "painter",
          "neighbour", "student", "baker", "soldier", "writer", "captain", "gardener", "singer",
          "girl", "boy", "mother", "father", "brother", "sister"]
# each verb with objects it plausibly takes (a plural object ends in "s")
VERB_OBJECTS = {
    "carried": ["basket", "box", "bag", "letter", "ladder", "blanket", "bottle", "chair", "apples"],
    "opened": ["window", "door", "letter", "box", "bottle", "book", "gate"],
    "painted": ["fence", "door", "house", "wall", "picture", "boat", "chair"],
    "repaired": ["bicycle", "fence", "roof", "clock", "boat", "lamp", "chair", "wagon"],
    "cleaned": ["table", "window", "floor", "boat", "mirror", "kettle", "shoes"],
    "bought": ["bread", "apples", "coat", "book", "bicycle", "lamp", "ticket", "flowers"],
    "found": ["key", "letter", "map", "book", "bag", "coat", "ticket"],
    "read": ["letter", "book", "map", "story", "message", "newspaper"],
    "wrote": ["letter", "story", "message", "song", "poem"],
    "washed": ["dishes", "coat", "floor", "window", "apples", "car"],
    "sold": ["house", "boat", "horse", "bread", "apples", "wagon", "car"],
    "fed": ["dog", "horse", "cat", "birds", "chickens", "goats"],
    "watched": ["birds", "boats", "children", "river", "horses", "clouds", "sunset"],
    "lost": ["key", "map", "coat", "bag", "ticket", "umbrella"],
    "closed": ["window", "door", "gate", "book", "box", "shop"],
    "cooked": ["dinner", "soup", "breakfast", "fish", "potatoes", "rice"],
    "planted": ["tree", "flowers", "roses", "potatoes", "garden"],
    "visited": ["village", "market", "museum", "farm", "castle", "island"],
}
PLACES = [("in", "kitchen"), ("in", "garden"), ("in", "village"), ("in", "forest"), ("in", "city"),
          ("at", "station"), ("at", "market"), ("at", "school"), ("at", "harbour"),
          ("near", "river"), ("near", "bridge"), ("near", "church"), ("by", "lake"),
          ("on", "hill"), ("on", "farm"), ("behind", "house"), ("across", "street")]
TIMES = ["this morning", "last night", "after dinner", "before sunrise", "on sunday",
         "in the evening", "during the storm", "at noon", "yesterday", "every summer",
         "late in the afternoon", "early today", "last winter", "after school"]
CONJUNCTIONS = ["because", "while", "before", "after", "when", "although", "and then", "so"]
ADVERBS = ["slowly", "quickly", "quietly", "carefully", "happily", "suddenly", "gently", "again"]


def _pick(rng: np.random.Generator, words: list) -> str:
    return words[int(rng.integers(len(words)))]


def _noun_phrase(rng: np.random.Generator, noun: str, adjectives: list[str], n_adj: int) -> list[str]:
    plural = noun.endswith("s") and not noun.endswith("ss")
    out = [_pick(rng, PLURAL_DETERMINERS if plural else DETERMINERS)]
    for a in rng.choice(len(adjectives), size=n_adj, replace=False):
        out.append(adjectives[int(a)])
    out.append(noun)
    if out[0] == "a" and out[1][0] in "aeiou":
        out[0] = "an"
    return out


def _clause(rng: np.random.Generator, adjectives: int = 0) -> list[str]:
    """``subject verb object`` with ``adjectives`` adjectives spread over the two nouns."""
    n_subj = int(rng.integers(0, min(adjectives, 1) + 1))
    verb = _pick(rng, list(VERB_OBJECTS))
    return (_noun_phrase(rng, _pick(rng, PEOPLE), PERSON_ADJECTIVES, n_subj) + [verb]
            + _noun_phrase(rng, _pick(rng, VERB_OBJECTS[verb]), THING_ADJECTIVES,
                           min(adjectives - n_subj, 1)))


def make_sentence(rng: np.random.Generator, n_words: int) -> str:
    """An English sentence of about ``n_words`` words (>= 5), lower case, ending in ".".

    The main clause has 5-7 words; a prepositional phrase, a time phrase, an
    adverb and a subordinate clause are added in random order while the sentence
    is shorter than ``n_words`` (so it has at least 5 words and at most about
    ``n_words + 8``). Subjects are people; each verb takes only objects it plausibly
    takes (``VERB_OBJECTS``), which keeps the sentences ordinary enough for an ASR
    model's language model.
    """
    words = _clause(rng, adjectives=int(rng.integers(0, 3)))
    extras = ["place", "time", "adverb", "clause"]
    for i in rng.permutation(len(extras)):
        if len(words) >= n_words:
            break
        kind = extras[int(i)]
        if kind == "place":
            prep, place = PLACES[int(rng.integers(len(PLACES)))]
            words += [prep, "the", place]
        elif kind == "time":
            words += _pick(rng, TIMES).split()
        elif kind == "adverb":
            words += [_pick(rng, ADVERBS)]
        else:
            room = max(0, n_words - len(words) - 5)
            words += _pick(rng, CONJUNCTIONS).split() + _clause(rng, adjectives=min(2, room))
    return " ".join(words) + "."
