"""Write ``reviews-3class.csv``: short made-up film reviews in three classes (neg, neu, pos), for the README's
"Your own data" example. Synthetic on purpose (a small, reproducible file with its own column names, ``id``,
``review`` and ``sentiment``); it shows the machinery, not what a model learns from real reviews.

    python examples/make_reviews_3class.py   # rewrites examples/reviews-3class.csv (seeded: the same file)
"""

from __future__ import annotations

import csv
import random
from pathlib import Path

ROWS = 900
SUBJECTS = ["The film", "This movie", "The plot", "The acting", "The ending", "The soundtrack", "The cast"]
OPENINGS = ["", "Honestly, ", "I thought ", "To be fair, ", "Frankly, "]
ENDINGS = [".", " overall.", " in places.", ", as expected.", " from start to finish."]
WORDS = {
    "neg": ["awful", "boring", "dreadful", "terrible", "tedious", "weak", "a waste of time"],
    "neu": ["fine", "average", "ordinary", "acceptable", "passable", "unremarkable", "neither good nor bad"],
    "pos": ["wonderful", "brilliant", "moving", "superb", "delightful", "excellent", "a joy to watch"],
}


def review(rng: random.Random, sentiment: str) -> str:
    opening = rng.choice(OPENINGS)
    subject = rng.choice(SUBJECTS)
    subject = subject[0].lower() + subject[1:] if opening else subject
    return f"{opening}{subject} was {rng.choice(WORDS[sentiment])}{rng.choice(ENDINGS)}"


def main() -> None:
    rng = random.Random(0)
    path = Path(__file__).with_name("reviews-3class.csv")
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "review", "sentiment"])
        for index in range(ROWS):
            sentiment = rng.choice(sorted(WORDS))
            writer.writerow([index, review(rng, sentiment), sentiment])
    print(f"wrote {ROWS} reviews to {path}")


if __name__ == "__main__":
    main()
