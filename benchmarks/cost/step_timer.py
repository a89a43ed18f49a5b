"""`axolotl train CONFIG` with a callback that times every optimizer step.

Used by step_cost.py: the same path as `axolotl train --launcher python`
(`python -m axolotl.cli.train CONFIG`), with one `TrainerCallback` added to
whichever trainer Axolotl builds (SFT, `rl: dpo` or PAFT's parallel trainer). It
records `time.perf_counter()` at each `on_step_begin` / `on_step_end` and writes
them, as JSON, to the path in the environment variable `PAFT_STEP_TIMES`.
"""

import json
import os
import runpy
import sys
import time

import transformers
from transformers import TrainerCallback


class StepTimer(TrainerCallback):
    """perf_counter at the start and end of each optimizer step."""

    def __init__(self, path: str):
        self.path = path
        self.begin: list[float] = []
        self.end: list[float] = []

    def on_step_begin(self, args, state, control, **kwargs):
        self.begin.append(time.perf_counter())

    def on_step_end(self, args, state, control, **kwargs):
        self.end.append(time.perf_counter())

    def on_train_end(self, args, state, control, **kwargs):
        with open(self.path, "w") as handle:
            json.dump({"step_begin": self.begin, "step_end": self.end}, handle)


def _timed(train):
    def wrapper(self, *args, **kwargs):
        self.add_callback(StepTimer(os.environ["PAFT_STEP_TIMES"]))
        return train(self, *args, **kwargs)

    return wrapper


if __name__ == "__main__":
    transformers.Trainer.train = _timed(transformers.Trainer.train)
    sys.argv = ["axolotl.cli.train", *sys.argv[1:]]
    runpy.run_module("axolotl.cli.train", run_name="__main__")
