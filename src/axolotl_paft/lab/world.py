"""A miniature world where the alignment tax and merge interference are real.

Built locally, like `axolotl_paft.lab.toy`, but richer: a 4-layer, hidden-256 Llama
pre-trained from scratch on CPU on every fact of three kinds of questions,
answered bare (sums up to 12 + 12, opposites, the next letter: "19", "cold", "l"),
and on a little polite small talk (`SMALL_TALK`: "Thank you!" -> "Glad to help.")
so that the polite phrases are known before any adapter, then

- SFT skills: the same questions answered in a sentence format per skill
  ("19 is the answer.", "cold is the opposite.", "l is the next letter."),
  scored by exact match of that sentence (right format and right fact);
- a preference objective on the same kinds of questions, *marked* as asking
  for politeness ("Please answer politely: What is 7 plus 12?", `MARKER`): the
  chosen answer wraps the sentence in a polite style ("Sure! 19 is the answer.
  Glad to help."), the rejected one is the terse sentence the SFT teaches. A
  model that is terse on plain questions and polite on marked ones has both
  skills, so a merge keeping both exists; yet the preference adapter
  generalises across the marker (it makes the plain questions polite too), so
  the two deltas still compete, as a chat-style preference set competes with a
  format-scored benchmark. How much depends on the preference adapter's size:
  benchmarks/evidence/world_probe.py measures it.

`build_world(root)` builds and caches tokenizer, base and data (minutes on 2
cores); `size="small"` is the quick variant used by the tests and the demo.
The preconditions (alignment tax, interference) are measured by
`benchmarks/evidence/evidence.py`, not assumed.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from pathlib import Path

from axolotl_paft.lab.toy import (
    ToySetup,
    _corpus,
    axolotl_config,
    build_model,
    build_tokenizer,
    write_jsonl,
)

OPPOSITES = {
    "hot": "cold", "big": "small", "up": "down", "fast": "slow", "old": "new",
    "light": "dark", "happy": "sad", "early": "late", "open": "closed",
    "full": "empty", "hard": "soft", "high": "low", "long": "short",
    "rich": "poor", "strong": "weak", "wet": "dry", "near": "far",
    "clean": "dirty", "loud": "quiet", "thick": "thin",
}  # fmt: skip
OPPOSITES.update({v: k for k, v in list(OPPOSITES.items())})
LETTERS = "abcdefghijklmnopqrstuvwxyz"
SKILLS = ("sum", "opposite", "next_letter")
FORMATS = {  # the bare answer first: the same token the base already knows
    "sum": "{} is the answer.",
    "opposite": "{} is the opposite.",
    "next_letter": "{} is the next letter.",
}
MAX_TERM = 12
POLITE = ("Sure! ", " Glad to help.")
# what marks a preference question as asking for the polite style
MARKER = "Please answer politely: "
# polite small talk the base learns in pre-training (no skill's question), so
# the polite phrases are known before any LoRA: an adapter that merely lifts
# unseen tokens no longer makes the polite answer look preferred
SMALL_TALK = (
    ("Thank you!", "Glad to help."),
    ("Thanks a lot.", "Glad to help."),
    ("Can you help me?", "Sure! Glad to help."),
    ("Could you do me a favour?", "Sure!"),
    ("Will you help me with something?", "Sure! Glad to help."),
    ("Hello!", "Hello! Glad to help."),
    ("May I ask you a question?", "Sure!"),
    ("You were very helpful.", "Glad to help."),
)
SMALL_TALK_REPEATS = 5  # 40 of 519 pre-training rows, about 8%

# name -> (model sizes, pre-training steps and rate, SFT rows, preference rows)
SIZES = {
    "full": (
        {
            "hidden_size": 256,
            "intermediate_size": 688,
            "num_hidden_layers": 4,
            "num_attention_heads": 4,
            "num_key_value_heads": 4,
        },
        800,
        1e-3,  # 3e-3 diverges at this size (loss 0.89 -> 1.06 from step 100 to 300)
        512,
        512,
    ),
    "small": (
        {
            "hidden_size": 128,
            "intermediate_size": 344,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 4,
        },
        500,
        3e-3,
        256,
        256,
    ),
}


@dataclass(frozen=True)
class Task:
    """One question with its bare (pre-training) and sentence (SFT) answers."""

    skill: str
    question: str
    bare: str

    @property
    def sentence(self) -> str:
        """The SFT format: a fixed sentence per skill around the bare answer."""
        return FORMATS[self.skill].format(self.bare)


def all_tasks(skill: str) -> list[Task]:
    """Every fact of `skill`: the base learns them all in pre-training."""
    if skill == "sum":
        return [
            Task(skill, f"What is {a} plus {b}?", str(a + b))
            for a in range(MAX_TERM + 1)
            for b in range(MAX_TERM + 1)
        ]
    if skill == "opposite":
        return [
            Task(skill, f"What is the opposite of {word}?", other)
            for word, other in sorted(OPPOSITES.items())
        ]
    return [
        Task(skill, f"Which letter comes after {a}?", b)
        for a, b in zip(LETTERS, LETTERS[1:], strict=False)
    ]


def _tasks(n: int, seed: int) -> list[Task]:
    """`n` random questions, the skills in turn."""
    rng = random.Random(seed)
    pools = {skill: all_tasks(skill) for skill in SKILLS}
    return [rng.choice(pools[SKILLS[i % len(SKILLS)]]) for i in range(n)]


def _chat(task: Task, answer: str) -> dict:
    return {
        "skill": task.skill,
        "messages": [
            {"role": "user", "content": task.question},
            {"role": "assistant", "content": answer},
        ],
    }


def pretraining_rows() -> list[dict]:
    """What the base learns from scratch: every fact of every skill, answered
    bare, the smaller skills repeated to weigh about as much as the sums, and
    the `SMALL_TALK` (about 8% of the rows)."""
    sums = len(all_tasks("sum"))
    rows = []
    for skill in SKILLS:
        tasks = all_tasks(skill)
        rows += [_chat(t, t.bare) for t in tasks] * max(1, sums // len(tasks))
    talk = [Task("small_talk", question, answer) for question, answer in SMALL_TALK]
    return rows + [_chat(t, t.bare) for t in talk] * SMALL_TALK_REPEATS


def skill_rows(n: int, seed: int = 0) -> list[dict]:
    """SFT chat rows: the sentence format of each skill, skills in turn."""
    return [_chat(t, t.sentence) for t in _tasks(n, seed)]


def preference_rows(n: int, seed: int = 1) -> list[dict]:
    """`chatml.intel` rows on the SFT kinds of questions marked by `MARKER`:
    polite sentence over terse sentence."""
    rows = []
    for t in _tasks(n, seed):
        rows.append(
            {
                "skill": t.skill,
                "question": MARKER + t.question,
                "chosen": POLITE[0] + t.sentence + POLITE[1],
                "rejected": t.sentence,
            }
        )
    return rows


def heldout_rows(n: int) -> tuple[list[dict], list[dict]]:
    """Evaluation rows drawn with other seeds than any training data."""
    return skill_rows(n, seed=100), preference_rows(n, seed=101)


def build_world(root: Path, size: str = "full") -> ToySetup:
    """Tokenizer, pre-trained base and both data sets under `root/<size>`;
    reused when already built (the base is what takes minutes)."""
    dims, steps, lr, n_sft, n_preference = SIZES[size]
    root = Path(root) / size
    model_dir = root / "base"
    sft = skill_rows(n_sft)
    preference = preference_rows(n_preference)
    if not (model_dir / "model.safetensors").is_file():
        pretrain = pretraining_rows()
        texts = _corpus(sft + preference + pretrain)
        tokenizer = build_tokenizer(model_dir, texts, vocab_size=600)
        build_model(
            model_dir,
            tokenizer,
            pretrain_steps=steps,
            pretrain_lr=lr,
            dims=dims,
            pretrain_rows=pretrain,
        )
    return ToySetup(
        model_dir=model_dir,
        sft_path=write_jsonl(root / "data" / "sft.jsonl", sft),
        preference_path=write_jsonl(root / "data" / "preference.jsonl", preference),
    )


def recipe(
    world: ToySetup,
    output_dir: Path,
    *,
    seed: int,
    steps: int,
    learning_rate: float,
    **overrides,
) -> dict:
    """The recipe shared by every run of the world: LoRA r 16 on all linear
    layers, batch 8, constant rate, no report or merge configs."""
    config = axolotl_config(
        world,
        output_dir,
        lora_r=16,
        lora_alpha=32,
        micro_batch_size=8,
        max_steps=steps,
        learning_rate=learning_rate,
        seed=seed,
        logging_steps=50,
        paft_report=False,
        paft_merge_methods=[],
    )
    config.update(overrides)
    return config


def sft_config(world, output_dir, *, l1_lambda=0.0, l1_mode="loss", **kw) -> dict:
    """SFT LoRA with the plugin's L1 penalty (0: none)."""
    return recipe(
        world, output_dir, paft_l1_lambda=l1_lambda, paft_l1_mode=l1_mode, **kw
    )


def preference_config(
    world, output_dir, *, base_model=None, mixed=False, beta=0.1, **kw
) -> dict:
    """DPO LoRA (no plugin) from the world's base or `base_model`; `mixed` adds
    TRL's SFT term on the chosen answers (`loss_type: [sigmoid, sft]`)."""
    config = recipe(
        world,
        output_dir,
        rl="dpo",
        rl_beta=beta,
        datasets=[{"path": str(world.preference_path), "type": world.preference_type}],
        **kw,
    )
    for key in ("plugins", "paft_report", "paft_merge_methods"):
        config.pop(key)
    if base_model is not None:
        config["base_model"] = str(base_model)
    if mixed:
        config["dpo_loss_type"] = ["sigmoid", "sft"]
        config["dpo_loss_weights"] = [1.0, 1.0]
    return config


def train(config: dict, adapter: Path) -> Path:
    """`axolotl train` in this process unless `adapter` already holds a result."""
    from axolotl_paft.lab.toy import run_axolotl_train

    if not (Path(adapter) / "adapter_config.json").is_file():
        start = time.time()
        run_axolotl_train(config)
        print(f"trained {adapter} in {time.time() - start:.0f}s", flush=True)
    return Path(adapter)


def fold(base: Path, adapter: Path, out: Path) -> Path:
    """`base` with `adapter` folded in, saved with the tokenizer (a full model)."""
    from transformers import AutoTokenizer

    from axolotl_paft.merging.scoring import load_model

    if not (out / "model.safetensors").is_file():
        load_model(base, adapter).merge_and_unload().save_pretrained(out)
        AutoTokenizer.from_pretrained(base).save_pretrained(out)
    return out


def sequential(world: ToySetup, sft_adapter: Path, out: Path, **kw) -> Path:
    """The usual pipeline: SFT folded into the base, DPO trained on that model
    (its own reference), folded again; returns the final model folder."""
    sft_model = fold(world.model_dir, sft_adapter, out / "sft-model")
    dpo = train(
        preference_config(world, out / "dpo", base_model=sft_model, **kw), out / "dpo"
    )
    return fold(sft_model, dpo, out / "model")


class Scorer:
    """`scoring.quick_metrics` of candidates (adapter or model folders, None for
    the base) on fixed held-out rows, the base's pair log-probs computed once."""

    def __init__(self, base: Path, sft_rows: list[dict], preference_rows: list[dict]):
        from transformers import AutoTokenizer

        from axolotl_paft.merging.scoring import TextPairs, TextSkill, load_model

        self.base = base
        tokenizer = AutoTokenizer.from_pretrained(base)
        self.rows = (
            TextSkill(tokenizer, sft_rows),
            TextPairs(tokenizer, preference_rows),
        )
        self.base_logps = self.rows[1].logps(load_model(base))

    def __call__(self, path: Path | None) -> dict[str, float]:
        from axolotl_paft.merging.scoring import (
            load_candidate,
            load_model,
            quick_metrics,
        )

        if path is None:
            model = load_model(self.base)
        else:
            model = load_candidate(self.base, path)
        return quick_metrics(model, self.base_logps, *self.rows)


SEARCH_GOAL = 0.95  # the goal: the searched merge keeps >= 95% of each side's gain
MIN_ALIGNMENT_TAX = 0.2  # needed: sequential SFT->DPO loses >= 20% of the skill
MIN_INTERFERENCE = 0.1  # needed: task arithmetic 1:1 loses >= 10% of one side's


def meets_goal(kept: dict) -> bool:
    """Whether `scoring.kept_shares` of a merge reach `SEARCH_GOAL` on both sides."""
    return min(kept.values()) >= SEARCH_GOAL


def preconditions_hold(pre: dict) -> bool:
    """Whether `preconditions` shows both the alignment tax and interference."""
    return (
        pre["alignment_tax"] >= MIN_ALIGNMENT_TAX
        and max(pre["ta_skill_lost"], pre["ta_preference_lost"]) >= MIN_INTERFERENCE
    )


def preconditions(base: dict, sft: dict, pref: dict, seq: dict, ta: dict) -> dict:
    """The world's two preconditions from `Scorer` results at lambda 0: the share
    of the SFT-only skill gain that sequential SFT->DPO loses (alignment tax), and
    the shares of each side's gain that equal-weight task arithmetic loses; the
    shares as the search computes them (`scoring.kept_shares`: nan where a
    reference gains nothing over the base, so a precondition cannot hold there)."""
    from axolotl_paft.merging.scoring import kept_shares

    references = {"base": base, "sft": sft, "preference": pref}
    merged = kept_shares(ta, references)
    return {
        "alignment_tax": 1 - kept_shares(seq, references)["skill_kept"],
        "ta_skill_lost": 1 - merged["skill_kept"],
        "ta_preference_lost": 1 - merged["preference_kept"],
    }
