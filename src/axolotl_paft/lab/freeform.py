"""Free-form chat rows for the real model, and the testbed the demo and the
real-model evidence train on: answers of 60-120 tokens in one fixed house style
that SmolLM2-135M-Instruct does not have, and a preference it does not have.

Why: the search's skill measure must work where answers are long (UltraChat and
its like), and the miniature world's answers are a few tokens. Here every SFT
answer is a "field card" about an object: a fixed header, three numbered
sections, a fixed sign-off, with the content drawn from phrase banks, so that an
SFT LoRA learns the style (the header, the section labels, the sign-off, the
rhythm) in a few dozen steps but can never reproduce a whole answer token for
token (the drawn phrases are unpredictable): greedy exact match stays 0 for every
model, while the per-token NLL and the teacher-forced token accuracy of the
answers can move.

The preference is asked on other prompts (a tip about an object, not a
description of it), as in the miniature world, so that one model can have both:
a warm answer that opens with "Happy to help! With a ..." and closes with "I
hope that is useful." is chosen over a plain one with the same tip and trait.
The pair differs in the warm frame only, so that a model that moves both
answers alike gains no margin (the demo's SFT-only adapter, trained on cards:
-24, against 84 for the preference-only one). Rows are in
Axolotl's `chat_template.default` shape with no system turn: training, scoring
and the demo's questions all use the model's own template with its default
system prompt.

Two designs were measured and dropped (docs/evidence.md): warm over a curt,
shouted answer the base never gives (DPO won its pairs by pushing the shouted
answer down, and the preference-only model answered as the base does), and
warm over what the base itself answers (the SFT-only model, which moves away
from everything the base says, scored a larger margin than the preference-only
one, and the preference-only model collapsed to "I hope it helps."). The
preference loss that puts the frame into what the model says is `rpo`
(`PREFERENCE_LOSS`). Deterministic from a seed; nothing is downloaded.
"""

from __future__ import annotations

import random
from pathlib import Path

from axolotl_paft.lab.toy import ToySetup, write_jsonl

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
TIP_ASKS = (
    "Give me one tip about the {o}.",
    "Any advice for someone new to the {o}?",
    "How should I get to know a {o}?",
    "What is your best tip for a {o}?",
)
# the questions the demo's models answer: neither phrasing nor object is in any
# row (`test_freeform`)
SKILL_QUESTION = "Could you describe the scarecrow for me?"
PREFERENCE_QUESTION = "Do you have a tip for a beginner with a harp?"


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


def tip_questions() -> list[str]:
    """Every prompt a preference row can ask."""
    return [ask.format(o=obj) for obj in OBJECTS for ask in TIP_ASKS]


def preference_rows(n: int, seed: int = 1) -> list[dict]:
    """`chat_template.default` rows on tip prompts: a warm answer chosen over a
    plain one with the same tip and trait (they differ in the frame only)."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        obj = rng.choice(OBJECTS)
        tip, trait = rng.choice(TIPS), rng.choice(TRAITS)
        question = rng.choice(TIP_ASKS).format(o=obj)
        plain = f"{tip[0].upper()}{tip[1:]}: {trait}."
        warm = f"Happy to help! With a {obj}, {tip}: {trait}. I hope that is useful."
        rows.append(
            {
                "messages": [{"role": "user", "content": question}],
                "chosen": {"role": "assistant", "content": warm},
                "rejected": {"role": "assistant", "content": plain},
            }
        )
    return rows


# The recipe of every real-model run (demo, benchmarks): LoRA r 16 on all linear
# layers, micro-batch 2, sequence_len 256 (a row is at most about 150 tokens),
# constant rates, 16 steps (the demo's 15 minutes).
RECIPE = {
    "sequence_len": 256,
    "lora_r": 16,
    "lora_alpha": 32,
    "micro_batch_size": 2,
    "max_steps": 16,
    "learning_rate": 1e-3,
    "logging_steps": 4,
}
# The preference side: `rpo` (DPO plus the NLL of the chosen answers; the
# sequential pipeline's equivalent is Axolotl's `dpo_loss_type: [sigmoid, sft]`)
# at half the SFT rate. Why, measured (preference only, 16 steps, greedy answers
# to prompts no row asks; docs/evidence.md): plain DPO at 2e-4 won its pairs
# and answered "I hope this all helps! ... I hope you enjoy your harp." over and
# over, rpo at 2e-4 "I hope it helps! ... Happy to help!", rpo at 5e-4 "Happy to
# help! With a violin, ... I hope that is useful.": the preference in what the
# model says, not only in its margins.
PREFERENCE_LOSS = "rpo"
PREFERENCE_RATE = 5e-4
TRAIN_ROWS = 400


def testbed(root: Path, base_model: str, seed: int = 0) -> ToySetup:
    """The training rows of `seed` under `root/data` and the base (a hub id or a
    folder of SmolLM2-135M-Instruct), as `axolotl_paft.lab.toy`'s configs take
    them."""
    return ToySetup(
        model_dir=base_model,
        sft_path=write_jsonl(root / "data" / "sft.jsonl", sft_rows(TRAIN_ROWS, seed)),
        preference_path=write_jsonl(
            root / "data" / "preference.jsonl",
            preference_rows(TRAIN_ROWS, seed + 1),
        ),
        preference_type="chat_template.default",
    )


# What greedy decoding shows of each effect: the first words of an answer decide
# between a card and the warm frame (where the merged deltas compete), and
# teacher-forced NLL, which scores every token of the reference answer, does not
# see it (docs/evidence.md, the demo). `says` counts the openings.
OPENINGS = {"skill": "FIELD CARD", "preference": "Happy to help"}
OPENING_TOKENS = 6  # "FIELD CARD:" and "Happy to help!" are 4 and 4 tokens


def greedy_answers(
    model, tokenizer, chats: list[list[dict]], max_new_tokens: int
) -> list[str]:
    """Each chat's greedy answer, at most `max_new_tokens` (one left-padded batch;
    the template's default system prompt included)."""
    import torch

    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        batch = tokenizer.apply_chat_template(
            chats,
            add_generation_prompt=True,
            padding=True,
            return_tensors="pt",
            return_dict=True,
        ).to(model.device)
    finally:
        tokenizer.padding_side = side
    with torch.no_grad():
        ids = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False)
    new = ids[:, batch["input_ids"].shape[1] :]
    return [t.strip() for t in tokenizer.batch_decode(new, skip_special_tokens=True)]


def says(model, tokenizer, skill_rows, pairs_rows) -> dict[str, float]:
    """Share of held-out prompts whose greedy answer opens with the taught
    format: a card to the skill rows' questions, the warm frame to the pairs'."""
    chats = {
        "skill": [row["messages"][:-1] for row in skill_rows],
        "preference": [row["messages"] for row in pairs_rows],
    }
    shares = {}
    for side, prompts in chats.items():
        texts = greedy_answers(model, tokenizer, prompts, OPENING_TOKENS)
        shares[side] = sum(t.startswith(OPENINGS[side]) for t in texts) / len(texts)
    return shares


def heldout(n: int, split: str, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """`n` SFT rows and `n` pairs no run trains on: `split` "search" (what the
    merge search ranks on) or "test" (what the demo and the evidence report)."""
    offset = {"search": 100, "test": 200}[split] + 10 * seed
    return sft_rows(n, offset), preference_rows(n, offset + 1)
