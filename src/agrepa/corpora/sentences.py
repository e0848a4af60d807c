"""A small English grammar: ordinary sentences with exact transcripts for synthetic speech.

A sentence is a main clause ``subject verb object`` grown with optional adjectives,
a prepositional phrase, a time phrase and a subordinate clause until it has about
the requested number of words. Only plain dictionary words are used (no digits,
abbreviations or names), so the text the synthesiser speaks is the transcript.
"""
from __future__ import annotations

import numpy as np

DETERMINERS = ["the", "a", "my", "her", "his", "our", "their", "that", "this", "every"]
ADJECTIVES = ["old", "small", "quiet", "bright", "heavy", "young", "careful", "tired", "green",
              "wooden", "friendly", "narrow", "warm", "cold", "busy", "gentle", "strange", "empty",
              "famous", "simple", "golden", "little", "patient", "broken", "clever", "distant"]
NOUNS = ["man", "woman", "child", "teacher", "doctor", "farmer", "driver", "sailor", "painter",
         "neighbour", "student", "baker", "soldier", "writer", "captain", "gardener", "singer",
         "dog", "horse", "cat", "bird"]
OBJECTS = ["letter", "basket", "window", "garden", "river", "book", "table", "bridge", "lamp",
           "door", "boat", "map", "coat", "kettle", "bottle", "ladder", "carpet", "bicycle",
           "picture", "blanket", "wagon", "mirror", "candle", "fence", "story", "song", "house",
           "apple", "stone", "message"]
VERBS = ["carried", "opened", "painted", "found", "cleaned", "watched", "repaired", "moved",
         "closed", "visited", "followed", "described", "noticed", "bought", "borrowed", "sold",
         "remembered", "pushed", "pulled", "washed", "covered", "reached", "lifted", "wanted"]
PREPOSITIONS = ["near", "behind", "under", "beside", "across", "inside", "along", "around",
                "towards", "past", "beyond", "over"]
PLACES = ["station", "market", "village", "harbour", "kitchen", "mountain", "forest", "school",
          "church", "valley", "square", "library", "field", "road", "shore", "hill"]
TIMES = ["this morning", "last night", "after dinner", "before sunrise", "on sunday",
         "in the evening", "during the storm", "at noon", "yesterday", "every summer",
         "late in the afternoon", "early today", "last winter"]
CONJUNCTIONS = ["because", "while", "before", "after", "when", "although", "and then", "so that"]
ADVERBS = ["slowly", "quickly", "quietly", "carefully", "happily", "suddenly", "gently", "again"]


def _pick(rng: np.random.Generator, words: list[str]) -> str:
    return words[int(rng.integers(len(words)))]


def _noun_phrase(rng: np.random.Generator, nouns: list[str], adjectives: int) -> list[str]:
    out = [_pick(rng, DETERMINERS)]
    for a in rng.choice(len(ADJECTIVES), size=adjectives, replace=False):
        out.append(ADJECTIVES[int(a)])
    out.append(_pick(rng, nouns))
    return out


def _clause(rng: np.random.Generator, adjectives: int = 0) -> list[str]:
    n_subj = int(rng.integers(0, adjectives + 1))
    return (_noun_phrase(rng, NOUNS, n_subj) + [_pick(rng, VERBS)]
            + _noun_phrase(rng, OBJECTS, adjectives - n_subj))


def make_sentence(rng: np.random.Generator, n_words: int) -> str:
    """An English sentence of about ``n_words`` words (>= 5), lower case, ending in ".".

    The main clause has 5-7 words; a prepositional phrase, a time phrase, an
    adverb and a subordinate clause are added in random order while the sentence
    is shorter than ``n_words``. The result has between ``min(n_words, 5)`` and
    ``n_words + 5`` words.
    """
    words = _clause(rng, adjectives=int(rng.integers(0, 3)))
    extras = ["place", "time", "adverb", "clause"]
    for i in rng.permutation(len(extras)):
        if len(words) >= n_words:
            break
        kind = extras[int(i)]
        if kind == "place":
            words += [_pick(rng, PREPOSITIONS)] + _noun_phrase(rng, PLACES, int(rng.integers(0, 2)))
        elif kind == "time":
            words += _pick(rng, TIMES).split()
        elif kind == "adverb":
            words += [_pick(rng, ADVERBS)]
        else:
            room = max(0, n_words - len(words) - 5)
            words += _pick(rng, CONJUNCTIONS).split() + _clause(rng, adjectives=min(2, room))
    return " ".join(words) + "."


def normalize_transcript(text: str) -> str:
    """Lower case, punctuation removed, single spaces (the form WER is computed on)."""
    keep = "".join(ch if ch.isalnum() or ch in " '" else " " for ch in text.lower())
    return " ".join(keep.split())
