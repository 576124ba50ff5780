#!/usr/bin/env python3
"""Generate the bundled demo dataset: a short sentence about a person -> one-line canonical JSON.

    python data/generate_demo.py            # (re)write data/demo/{train,validation,test}.jsonl
    python data/generate_demo.py --check    # exit 1 unless the files on disk are byte-identical
    python data/generate_demo.py --out DIR  # write (or --check) somewhere else

Deterministic (fixed seed, standard library only). Each row is in the seed's qa format:
``{"id": ..., "question": "Extract name, city and age as JSON: <sentence>", "answer": "<json>"}`` with
the answer's keys always in the order name, city, age. The splits share no question.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
from pathlib import Path

SEED = 20261127
SPLITS = {"train": 400, "validation": 40, "test": 60}
KEYS = ("name", "city", "age")
INSTRUCTION = "Extract name, city and age as JSON: "
DEFAULT_OUT = Path(__file__).resolve().parent / "demo"

FIRST_NAMES = [
    "Maria", "James", "Aisha", "Kenji", "Olga", "Pedro", "Fatima", "Liam", "Chloe", "Ravi",
    "Ingrid", "Tomas", "Mei", "Daniel", "Amara", "Lucas", "Sofia", "Omar", "Hannah", "Viktor",
    "Priya", "Ethan", "Yuki", "Grace", "Mateo", "Leila", "Noah", "Elena", "Kwame", "Zoe",
    "Arjun", "Clara", "Diego", "Nadia", "Felix", "Ines", "Samuel", "Ava", "Hugo", "Rosa",
]  # fmt: skip
LAST_NAMES = [
    "Lopez", "Smith", "Khan", "Tanaka", "Petrova", "Silva", "Haddad", "Murphy", "Dubois", "Sharma",
    "Larsen", "Novak", "Chen", "Weber", "Okafor", "Rossi", "Garcia", "Farouk", "Fischer", "Ivanov",
    "Patel", "Brown", "Sato", "Kim", "Moreno", "Nasser", "Wilson", "Popescu", "Mensah", "Martin",
    "Gupta", "Schmidt", "Herrera", "Ali", "Jansen", "Costa", "Cohen", "Taylor", "Berg", "Santos",
]  # fmt: skip
CITIES = [
    "Lyon", "Boston", "Lagos", "Osaka", "Kazan", "Porto", "Beirut", "Dublin", "Nantes", "Pune",
    "Bergen", "Brno", "Xi'an", "Leipzig", "Accra", "Turin", "Seville", "Cairo", "Graz", "Minsk",
    "Jaipur", "Denver", "Sapporo", "Busan", "Lima", "Amman", "Perth", "Cluj", "Kumasi", "Quebec",
    "Chennai", "Bremen", "Bogota", "Karachi", "Utrecht", "Recife", "Haifa", "Leeds", "Malmo", "Cusco",
]  # fmt: skip
# Varied word orders, so the model has to learn the extraction rather than one position per field.
# {other} is a distractor number that is not the age.
TEMPLATES = [
    "{name} is {age} years old and lives in {city}.",
    "Meet {name}, a {age}-year-old from {city}.",
    "{name}, {age}, moved to {city} last spring.",
    "Living in {city}, {name} just turned {age}.",
    "At {age}, {name} opened a small bakery in {city}.",
    "The {age}-year-old {name} was born and raised in {city}.",
    "{city} resident {name} is {age}.",
    "Our new colleague {name} ({age}) commutes from {city} every day.",
    "In {city}, {name}, aged {age}, teaches chemistry.",
    "Registration: {name}, age {age}, hometown {city}.",
    "A runner from {city}, {name}, finished the {other} km race at age {age}.",
    "{name} ({city}) celebrated turning {age} with {other} friends.",
    "Born {age} years ago, {name} now works as a nurse in {city}.",
    "Age {age}, city {city}: that is {name}.",
    "Yesterday {name}, who is {age}, flew back home to {city}.",
    "After {other} years abroad, {name} ({age}) returned to {city}.",
]


def _rows(rng: random.Random, count: int) -> list[dict[str, str]]:
    """``count`` rows with pairwise different questions, in generation order."""
    by_question: dict[str, str] = {}
    while len(by_question) < count:
        name = f"{rng.choice(FIRST_NAMES)} {rng.choice(LAST_NAMES)}"
        city = rng.choice(CITIES)
        age = rng.randint(18, 89)
        other = rng.randint(3, 42)
        while other == age:
            other = rng.randint(3, 42)
        sentence = rng.choice(TEMPLATES).format(name=name, city=city, age=age, other=other)
        answer = json.dumps(dict(zip(KEYS, (name, city, age), strict=True)))
        by_question.setdefault(INSTRUCTION + sentence, answer)
    return [{"question": q, "answer": a} for q, a in by_question.items()]


def generate() -> dict[str, bytes]:
    """File name -> exact JSONL bytes for every split."""
    rows = _rows(random.Random(SEED), sum(SPLITS.values()))
    files: dict[str, bytes] = {}
    questions: dict[str, set[str]] = {}
    start = 0
    for split, size in SPLITS.items():
        part = rows[start : start + size]
        start += size
        questions[split] = {row["question"] for row in part}
        lines = [json.dumps({"id": f"{split}-{i:04d}", **row}) + "\n" for i, row in enumerate(part, 1)]
        files[f"{split}.jsonl"] = "".join(lines).encode("utf-8")
    names = list(questions)
    for i, first in enumerate(names):
        for second in names[i + 1 :]:
            shared = questions[first] & questions[second]
            assert not shared, f"splits {first} and {second} share questions: {sorted(shared)[:3]}"
    return files


def _write_atomically(path: Path, content: bytes) -> None:
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    temporary.write_bytes(content)
    os.replace(temporary, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder (default: data/demo)")
    parser.add_argument("--check", action="store_true", help="verify the files instead of writing them")
    args = parser.parse_args(argv)

    files = generate()
    if args.check:
        stale = [n for n, content in files.items() if not _matches(args.out / n, content)]
        if stale:
            print(
                f"out of date in {args.out}: {', '.join(stale)} (run data/generate_demo.py)", file=sys.stderr
            )
            return 1
        print(f"{args.out}: {', '.join(files)} match the generator")
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        _write_atomically(args.out / name, content)
    print(f"wrote {', '.join(files)} ({', '.join(f'{n} {s}' for n, s in SPLITS.items())} rows) to {args.out}")
    return 0


def _matches(path: Path, content: bytes) -> bool:
    return path.is_file() and path.read_bytes() == content


if __name__ == "__main__":
    sys.exit(main())
