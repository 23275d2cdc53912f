"""A small story corpus that the project writes itself: a probabilistic grammar of children's stories.

Each story draws a hero and a friend (name, kind, trait), a place, an object, a problem and how it is
solved, a few lines of dialogue, and a moral, from weighted choices with one `random.Random(seed)`:
the same seed gives the same corpus on every machine, with no download.

    story    -> opening  problem  dialogue  attempt  solution  ending  moral
    opening  -> "Once upon a time, there was a {trait} {kind} named {name}. {He} lived {place}."

It exists so that `make demo` and the tests always have text to train on. Real text (TinyStories, in
../shared/data/ or from the hub) is far richer; use it when you can.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from pathlib import Path

NAMES = {"he": ["Tom", "Max", "Ben", "Leo", "Sam", "Jack", "Finn", "Oscar", "Milo", "Theo"],
         "she": ["Lily", "Mia", "Anna", "Sue", "Ella", "Zoe", "Ruby", "Lucy", "Nora", "Ivy"]}
KINDS = ["little bunny", "small bear", "young fox", "tiny bird", "happy dog", "curious cat", "little girl",
         "little boy", "brave mouse", "kind turtle", "big frog", "old owl"]
TRAITS = ["kind", "shy", "brave", "curious", "silly", "happy", "gentle", "clever", "grumpy", "busy"]
PLACES = ["in a green forest", "near a big lake", "in a small house", "on a quiet farm", "by the sea",
          "in a busy town", "under a tall tree", "on a sunny hill", "in a snowy village", "near the park"]
OBJECTS = ["red ball", "shiny stone", "blue kite", "small boat", "yellow hat", "magic key", "big box",
           "soft blanket", "golden leaf", "wooden toy", "funny drum", "old map"]
FEELINGS = ["sad", "scared", "worried", "upset", "lonely", "confused"]
HAPPY = ["happy", "glad", "proud", "excited", "thankful"]
PROBLEMS = [
    "One day, {name} lost {his} {obj}. {He} looked everywhere, but {he} could not find it.",
    "One day, the {obj} got stuck high up in a tree. {name} could not reach it.",
    "One morning, a strong wind blew the {obj} far away. {name} felt {feeling}.",
    "One day, {name} wanted to share {his} {obj}, but nobody came to play.",
    "One day, {name} broke {his} {obj} by accident. {He} felt very {feeling}.",
    "One evening, it began to rain, and the {obj} was still outside. {name} was {feeling}.",
]
ATTEMPTS = [
    "{name} tried to do it alone, but it was too hard.",
    "{name} jumped and jumped, but {he} was too small.",
    "{name} cried a little, and then {he} had an idea.",
    "{name} sat down and thought for a long time.",
]
SOLUTIONS = [
    "{friend} came and helped. Together they {verb} the {obj}.",
    "{friend} the {fkind} saw {him} and said, \"I will help you!\" Soon they {verb} the {obj}.",
    "{name} asked {friend} for help. {friend} was {ftrait} and said yes, and they {verb} the {obj}.",
    "Then {friend} had a smart idea. With a long stick, they {verb} the {obj}.",
]
VERBS = ["found", "fixed", "saved", "got back", "cleaned", "carried home"]
DIALOGUE = [
    "\"Why are you {feeling}?\" asked {friend}. \"I miss my {obj},\" said {name}.",
    "\"Can you help me?\" asked {name}. \"Of course,\" said {friend}.",
    "\"Do not worry,\" said {friend}. \"We can do it together.\"",
    "\"Oh no!\" said {name}. \"What can I do?\"",
]
ENDINGS = [
    "{name} was very {happy}. {He} hugged {friend} and said, \"Thank you!\"",
    "From that day on, {name} and {friend} were best friends.",
    "They played with the {obj} until the sun went down.",
    "{name} smiled. It was the best day ever.",
]
MORALS = [
    "The moral of the story is: friends help each other.",
    "The moral of the story is: do not give up.",
    "The moral of the story is: it is good to share.",
    "The moral of the story is: ask for help when you need it.",
    "The moral of the story is: be kind to everyone.",
]


def story(rng: random.Random) -> str:
    """One story, drawn from the grammar with `rng`."""
    gender = rng.choice(["he", "she"])
    fgender = rng.choice(["he", "she"])
    name = rng.choice(NAMES[gender])
    friend = rng.choice([n for n in NAMES[fgender] if n != name])
    w = dict(name=name, friend=friend, kind=rng.choice(KINDS), fkind=rng.choice(KINDS).split()[-1],
             trait=rng.choice(TRAITS), ftrait=rng.choice(TRAITS), place=rng.choice(PLACES),
             obj=rng.choice(OBJECTS), feeling=rng.choice(FEELINGS), happy=rng.choice(HAPPY),
             verb=rng.choice(VERBS), He="He" if gender == "he" else "She", he=gender,
             his="his" if gender == "he" else "her", him="him" if gender == "he" else "her")
    article = "an" if w["trait"][0] in "aeiou" else "a"
    parts = [f"Once upon a time, there was {article} {w['trait']} {w['kind']} named {name}. "
             f"{w['He']} lived {w['place']}."]
    if rng.random() < 0.6:
        parts.append(f"{name} loved {w['his']} {w['obj']} very much.")
    parts.append(rng.choice(PROBLEMS))
    if rng.random() < 0.7:
        parts.append(rng.choice(DIALOGUE))
    if rng.random() < 0.5:
        parts.append(rng.choice(ATTEMPTS))
    parts.append(rng.choice(SOLUTIONS))
    parts.append(rng.choice(ENDINGS))
    if rng.random() < 0.5:
        parts.append(rng.choice(MORALS))
    text = " ".join(parts).format(**w)
    return text[0].upper() + text[1:]


def iter_stories(n: int, seed: int = 0) -> Iterator[str]:
    """`n` stories, the same for the same seed."""
    rng = random.Random(seed)
    for _ in range(n):
        yield story(rng)


def write_corpus(path: str | Path, n: int, seed: int = 0) -> Path:
    """Write `n` stories as JSONL ({"text": ...} per line) and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for s in iter_stories(n, seed):
            f.write(json.dumps({"text": s}) + "\n")
    return path
