"""The two real-model tasks: a classification task and a reward-from-generated-text task, as JSONL.

    python bench/real_tasks.py --out DIR
writes DIR/cls_train.jsonl (2000), cls_eval.jsonl (1000): rows {"prompt", "candidates", "label"}, and
DIR/reward_train.jsonl (2000), reward_eval.jsonl (1000): rows {"prompt", "answers"}. Deterministic
(fixed seeds, the same bytes on every run and machine); no eval prompt occurs in its train file. 1000
eval rows: one eval's standard error is at most sqrt(0.25 / 1000) = 0.016, what bench/time_to_accuracy.py
needs to tell a gain of 0.10 from noise.

Both are made for SmolLM2-135M-Instruct (its chat template is written into each prompt, so train with
--data.verbatim=true): the model starts far below the ceiling and MeZO can move it there, since each
needs a mapping from features the model already has to an output it does not yet give.
- cls: a one-sentence product review; "Label it tick or cross." The label words are arbitrary (tick =
  positive), so a pretrained model starts near chance (about 50%); the sentiment is plain, so the
  ceiling is near 100%. --data.objective=classification.
- reward: five words, one of them an animal: "Which word is an animal? Reply with that word only.",
  after one solved exchange of the same kind in the chat. Scored by --data.reward=exact_match
  (SQuAD-normalised: case and punctuation do not count), greedy, e.g. --generate.max_new_tokens=6: a
  reply with more than the word scores 0. Without the solved exchange the model answered 'The word
  "wolf" is' to every prompt (reward 0.0 on 48 eval prompts, CPU fp32, 2026-12-01): no signal to
  learn from; with it and three words, 0.71 (24 prompts); with it and five words, 0.42 (24 prompts).
  --data.objective=reward.
"""

from __future__ import annotations

import argparse
import json
import os
import random
from pathlib import Path

N_TRAIN, N_EVAL = 2000, 1000
SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
ITEMS = ["blender", "jacket", "phone case", "lamp", "backpack", "kettle", "keyboard", "tent", "water bottle",
         "desk chair", "headset", "umbrella", "toaster", "notebook", "charger", "pillow", "frying pan", "watch",
         "speaker", "mattress", "printer", "scarf", "drill", "mouse", "camera bag", "rug", "mug", "router"]
GOOD = ["works perfectly", "is sturdy and well made", "arrived early and looks great", "exceeded my expectations",
        "is worth every penny", "feels solid and reliable", "is a joy to use", "does exactly what I wanted",
        "is comfortable and well designed", "still works like new after months"]
BAD = ["broke after two days", "is flimsy and cheap", "arrived damaged", "stopped working within a week",
       "is a complete waste of money", "feels poorly made", "is a pain to use", "does not do what it claims",
       "is uncomfortable and badly designed", "fell apart after a month"]
OPENERS = ["", "Honestly, ", "Overall, ", "To be fair, ", "In short, ", "After a week, "]
CLOSERS = [".", "!", ". I would buy it again.", ". Never again.", ". My friend agrees.", ". Five minutes in, I knew."]
ANIMALS = ["dog", "cat", "horse", "rabbit", "tiger", "eagle", "shark", "frog", "sheep", "goat", "wolf", "bear",
           "mouse", "whale", "snake", "duck", "lion", "monkey", "owl", "fox"]
THINGS = ["chair", "spoon", "window", "pencil", "bottle", "carpet", "ladder", "candle", "basket", "mirror",
          "hammer", "button", "blanket", "bucket", "kettle", "wallet", "bridge", "tower", "violin", "sandal",
          "river", "cloud", "stone", "forest", "garden", "ticket", "pillow", "engine", "rocket", "helmet"]


def chat(user: str, demo: tuple[str, str] | None = None) -> str:
    """SmolLM2's chat template (its tokenizer's, default system line), ready for the assistant's reply;
    `demo` = one earlier (user, assistant) exchange shown before `user`."""
    turns = f"<|im_start|>system\n{SYSTEM}<|im_end|>\n"
    if demo:
        turns += f"<|im_start|>user\n{demo[0]}<|im_end|>\n<|im_start|>assistant\n{demo[1]}<|im_end|>\n"
    return turns + f"<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n"


def cls_row(rng: random.Random) -> dict:
    label = rng.randrange(2)  # 0 = tick (positive), 1 = cross (negative)
    verdict = rng.choice(GOOD if label == 0 else BAD)
    closer = rng.choice([c for c in CLOSERS if c != (". Never again." if label == 0 else ". I would buy it again.")])
    review = f"{rng.choice(OPENERS)}the {rng.choice(ITEMS)} {verdict}{closer}"
    review = review[0].upper() + review[1:]
    user = f"Review: {review}\nLabel the review tick or cross. Reply with one word."
    return {"prompt": chat(user), "candidates": ["tick", "cross"], "label": label}


def _animal_question(rng: random.Random) -> tuple[str, str]:
    animal = rng.choice(ANIMALS)
    words = rng.sample(THINGS, 4) + [animal]
    rng.shuffle(words)
    return f"Words: {', '.join(words)}.\nWhich word is an animal? Reply with that word only.", animal


def reward_row(rng: random.Random) -> dict:
    demo = _animal_question(rng)  # one solved example first: without it the model starts at reward 0
    user, animal = _animal_question(rng)
    return {"prompt": chat(user, demo), "answers": [animal]}


def rows(make, n_train: int, n_eval: int, seed: int) -> tuple[list[dict], list[dict]]:
    """n_train + n_eval distinct rows (by prompt) from one seeded stream: train first, then eval."""
    rng, seen, out = random.Random(seed), set(), []
    while len(out) < n_train + n_eval:
        row = make(rng)
        if row["prompt"] not in seen:
            seen.add(row["prompt"])
            out.append(row)
    return out[:n_train], out[n_train:]


def write_jsonl(path: Path, items: list[dict]) -> None:
    """Write rows as JSONL atomically (a temp file renamed into place)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in items))
    os.replace(tmp, path)


def write_tasks(out: Path) -> dict[str, Path]:
    """Write the four files into `out`; return their paths by name."""
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for task, make, seed in (("cls", cls_row, 25), ("reward", reward_row, 26)):
        train, evl = rows(make, N_TRAIN, N_EVAL, seed)
        for split, items in (("train", train), ("eval", evl)):
            paths[f"{task}_{split}"] = out / f"{task}_{split}.jsonl"
            write_jsonl(paths[f"{task}_{split}"], items)
    return paths


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="directory for the four JSONL files")
    a = p.parse_args(argv)
    for name, path in write_tasks(Path(a.out)).items():
        print(f"{name}: {path}")


if __name__ == "__main__":
    main()
