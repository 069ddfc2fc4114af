"""What `make docs-run` runs and which of its files the docs quote (the commands are also named in the pages)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

__all__ = ["FIGURES", "ExtraRun", "DEMO_COMMAND", "DEMO_FIGURES", "BENCH_COMMAND", "ODD", "EXTRA_RUNS", "LEAK_EVAL_COMMAND", "LEAK_SOURCES_COMMAND", "LEAK_BENCH_COMMAND", "SECOND_EXPERIMENT", "STACK_COMMANDS", "STACK_FIGURES"]


FIGURES = Path("docs/figures")


@dataclass(frozen=True)
class ExtraRun:
    commands: str | tuple[str, ...]
    folder: str                          # its score.csv and cv.csv become docs/figures/<name>/
    fresh: tuple[str, ...] = ()          # experiment folders removed first (default: `folder`)
    copies: tuple[tuple[str, str], ...] = ()   # (figure file name, source path) copied too

    @property
    def command_list(self) -> tuple[str, ...]:
        return (self.commands,) if isinstance(self.commands, str) else self.commands


DEMO_COMMAND = ["make", "folds", "train", "ensemble", "score"]   # after `make clean`, which runs alone


DEMO_FIGURES = ("score.csv", "cv.csv", "ensemble.json", "leaks.csv")   # copied from outputs/demo/


BENCH_COMMAND = ["make", "bench"]
# The same bench with the C allocator's own thresholds (training fixes them: pipeline/allocator.py), for comparison;
# `make docs-run` writes it to the figures folder as BENCH_DEFAULTS_FIGURE (--out).
BENCH_DEFAULTS_COMMAND = ["python", "-m", "pipeline", "bench", "--allocator-defaults", "--large-images", "0"]
BENCH_DEFAULTS_FIGURE = "bench_allocator_defaults.json"


# Further runs the README quotes: name -> (the command(s), the folder whose score.csv and cv.csv are copied to
# docs/figures/<name>/, the experiment folders removed first so that the run is timed from scratch, and further
# files copied: {figure name: source}). `make docs-run` runs them in this order after the demo (which they may
# build on); `python -m pipeline.tools.docs --extra NAME` reruns one alone. Blocks `<NAME>_score`, `<NAME>_cv`.
ODD = "CONFIG=configs/demo-odd.yaml"


EXTRA_RUNS = {
    "odd": ExtraRun(f"make folds train ensemble score validate {ODD}", "outputs/demo-odd"),
    "nogroups": ExtraRun('make folds train ensemble score SET="data.group_column=null experiment=demo-nogroups"',
                         "outputs/demo-nogroups"),
    "autogroups": ExtraRun('make folds train ensemble score '
                           'SET="data.group_column=null folds.auto_groups=true experiment=demo-autogroups"',
                           "outputs/demo-autogroups",
                           copies=(("leaks.csv", "outputs/demo-autogroups/leaks.csv"),)),   # the pairs left
    "pseudo": ExtraRun('make train ensemble score SET="experiment=demo-pl folds.name=demo pseudo.source=demo '
                       'pseudo.threshold=0.8 pseudo.max_per_class=0.1"', "outputs/demo-pl",
                       copies=(("pseudo_labels.csv", "outputs/demo-pl/pseudo_labels.csv"),
                               ("test_labels.csv", "data/demo/test_labels.csv"))),   # to count the right ones
    "seeds": ExtraRun('make train ensemble score SET="experiment=demo-seeds folds.name=demo" SEEDS="0 1"',
                      "outputs/demo-seeds"),
    # The binary variant (odd/even, ROC-AUC, a probability submission): stack, pseudo-labels and seeds too.
    "odd_stack": ExtraRun((f'make train ensemble validate {ODD} SET="experiment=demo-odd2 folds.name=demo-odd '
                           'model.name=resnet14t"', 'make ensemble EXPS="demo-odd demo-odd2"',
                           'make stack EXPS="demo-odd demo-odd2"', 'make score EXPS="demo-odd demo-odd2"'),
                          "outputs/stack-demo-odd-demo-odd2",
                          ("outputs/demo-odd2", "outputs/blend-demo-odd-demo-odd2", "outputs/stack-demo-odd-demo-odd2"),
                          (("blend_score.csv", "outputs/blend-demo-odd-demo-odd2/score.csv"),)),
    "odd_pl": ExtraRun(f'make train ensemble score validate {ODD} SET="experiment=demo-odd-pl folds.name=demo-odd '
                       'pseudo.source=demo-odd pseudo.threshold=0.9 pseudo.max_per_class=0.3"', "outputs/demo-odd-pl"),
    "odd_seeds": ExtraRun(f'make train ensemble score validate {ODD} SET="experiment=demo-odd-seeds '
                          'folds.name=demo-odd" SEEDS="0 1"', "outputs/demo-odd-seeds"),
}


LEAK_EVAL_COMMAND = ["python", "-m", "pipeline.tools.leak_eval", "--config", "configs/demo.yaml"]


# The same on real images in three copy styles (needs Debian's dataset-fashion-mnist) → leak_sources.json.
LEAK_SOURCES_COMMAND = [*LEAK_EVAL_COMMAND, "--sources", "digits,fashion", "--styles", "shift,zoom,crop",
                        "--work", "data/leak_eval"]


LEAK_BENCH_COMMAND = ["python", "-m", "pipeline.tools.leak_bench", "--images", "100000"]


# A second experiment on the same folds (another backbone), then its blend and stack with the demo, scored.
SECOND_EXPERIMENT = "experiment=demo2 folds.name=demo model.name=resnet14t"


STACK_COMMANDS = [["make", "folds", "train", "ensemble", f"SET={SECOND_EXPERIMENT}"],
                  ["make", "ensemble", "EXPS=demo demo2"], ["make", "stack", "EXPS=demo demo2"],
                  ["make", "score", "EXPS=demo demo2"]]


STACK_FIGURES = {"stack_cv.csv": "outputs/stack-demo-demo2/cv.csv",
                 "stack_score.csv": "outputs/stack-demo-demo2/score.csv",
                 "blend_score.csv": "outputs/blend-demo-demo2/score.csv"}
