"""Free-form chat rows for the real model: answers of 50-200 tokens in one fixed
house style that SmolLM2-135M-Instruct does not have, and preference pairs.

Why: the search's skill measure must work where answers are long (UltraChat and
its like), and the miniature world's answers are a few tokens. Here every SFT
answer is a "field card" about an object: a fixed header, three numbered
sections, a fixed sign-off, with the content drawn from phrase banks, so that an
SFT LoRA learns the style (the header, the section labels, the sign-off, the
rhythm) in a few dozen steps but can never reproduce a whole answer token for
token (the drawn phrases are unpredictable): greedy exact match stays 0 for every
model, while the per-token NLL and the teacher-forced token accuracy of the
answers can move. The preference pairs prefer a polite, plain answer over a curt,
shouted one. Deterministic from a seed; nothing is downloaded.
"""

from __future__ import annotations

import random

OBJECTS = (
    "lighthouse", "teapot", "bicycle", "violin", "glacier", "compass", "library",
    "windmill", "telescope", "canoe", "orchard", "bridge", "lantern", "harbor",
    "typewriter", "beehive", "volcano", "clocktower", "greenhouse", "kite",
    "anvil", "meadow", "submarine", "quarry", "pendulum", "lagoon", "castle",
    "printing press", "sundial", "waterfall", "accordion", "tram", "cactus",
    "observatory", "barn", "fountain", "mill wheel", "rowboat", "oak tree", "well",
)  # fmt: skip
ASKS = (
    "Tell me about the {o}.",
    "What can you say about a {o}?",
    "Describe a {o} for me.",
    "I'd like to know more about the {o}.",
)
TRAITS = (
    "it is older than most people expect", "it rewards patient attention",
    "it changes with the seasons", "it is built around a single simple idea",
    "it has a quiet, steady character", "it is easy to overlook at first",
    "it works best when it is cared for", "it connects people across distances",
    "it keeps a record of the past", "it depends on careful balance",
)  # fmt: skip
USES = (
    "people rely on it to find their way", "it gives a reason to slow down",
    "it turns a plain day into a small adventure", "it teaches how things fit",
    "it brings neighbours together", "it stores something for later",
    "it makes hard work a little lighter", "it marks the passing of time",
    "it offers shelter when the weather turns", "it sparks curiosity in children",
)  # fmt: skip
TIPS = (
    "visit it early in the morning", "look closely at the small details",
    "ask someone who has used one for years", "sketch it before you read about it",
    "notice the sounds it makes", "compare it with an older example",
    "take a friend along", "come back to it after a week",
)  # fmt: skip
SYSTEM = "You are a helpful assistant."


def card(obj: str, rng: random.Random) -> str:
    """One answer in the house style: 60-120 tokens with SmolLM2's tokenizer."""
    trait, trait2 = rng.sample(TRAITS, 2)
    use, use2 = rng.sample(USES, 2)
    tip = rng.choice(TIPS)
    return (
        f"FIELD CARD: {obj.upper()}\n"
        f"1. Nature - The {obj} is worth a second look: {trait}, and {trait2}.\n"
        f"2. Purpose - Above all, {use}; besides, {use2}.\n"
        f"3. Advice - If you want to know the {obj} well, {tip}.\n"
        "End of card. Stay curious."
    )


def sft_rows(n: int, seed: int = 0) -> list[dict]:
    """Chat rows (`messages`) whose answers are field cards."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        obj = rng.choice(OBJECTS)
        question = rng.choice(ASKS).format(o=obj)
        rows.append(
            {
                "messages": [
                    {"role": "user", "content": question},
                    {"role": "assistant", "content": card(obj, rng)},
                ]
            }
        )
    return rows


def preference_rows(n: int, seed: int = 1) -> list[dict]:
    """`chatml.intel` rows: a polite plain answer chosen over a curt shouted one."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        obj = rng.choice(OBJECTS)
        trait, use = rng.choice(TRAITS), rng.choice(USES)
        rows.append(
            {
                "system": SYSTEM,
                "question": rng.choice(ASKS).format(o=obj),
                "chosen": f"Happy to help! A {obj} is interesting because {trait}, "
                f"and {use}. I hope that is useful.",
                "rejected": f"WHATEVER. {obj.upper()}. {trait.upper()}. FIGURE "
                "THE REST OUT YOURSELF.",
            }
        )
    return rows
