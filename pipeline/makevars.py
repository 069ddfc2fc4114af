"""The Make variables a config gives the Makefile, each checked to be safe to paste into a rule.

A value Make pastes into a rule or recipe could become shell or Make syntax (in `a: b;c` the `;`
starts a recipe), so only plain path characters are allowed.
"""

from __future__ import annotations

import re
from pathlib import Path

from pipeline.competitions.mask import people_csv
from pipeline.config import Config, ConfigError
from pipeline.stamps import shared_stamp

__all__ = ["make_variables", "MAKE_SAFE"]

MAKE_SAFE = re.compile(r"^[A-Za-z0-9_./+,:@%=~-]*$")


def make_variables(cfg: Config) -> dict[str, str]:
    """{Make variable: value}; a ConfigError naming the key when a value holds anything but path characters."""
    people = people_csv(cfg.data.image_root)
    mask_inputs = ",".join(str(p) for p in (people, cfg.mask.relabel_file) if p and Path(p).is_file())
    variables = {"EXP_DIR": (cfg.exp_dir, "output_dir / experiment"),
                 "RESOLVED": (cfg.exp_dir / "config.yaml", "output_dir / experiment"),
                 "FOLDS_FILE": (cfg.folds_file, "folds.dir / folds.name"),
                 "DATA_STAMP": (shared_stamp(cfg, "data"), "output_dir / data.train_csv"),
                 "FOLDS_STAMP": (shared_stamp(cfg, "folds"), "output_dir / folds.dir / folds.name"),
                 "K": (cfg.folds.n_splits, "folds.n_splits"),
                 "TRAIN_CSV": (cfg.data.train_csv, "data.train_csv"),
                 "DEMO": (int(cfg.data.demo), "data.demo"),
                 "MASK": (int(cfg.mask.enabled), "mask.enabled"),
                 "MASK_INPUTS": (mask_inputs, "data.image_root / mask.relabel_file"),
                 "SAMPLE_SUBMISSION": (cfg.data.sample_submission, "data.sample_submission"),
                 # seeds: [0, 1, 2] → 0,1,2 (one word for Make); pseudo.source → its experiment folder
                 "SEED_IDS": (",".join(map(str, cfg.seeds or [])), "seeds"),
                 "PSEUDO_SOURCE_DIR": (Path(cfg.output_dir) / cfg.pseudo.source if cfg.pseudo.source else "",
                                       "output_dir / pseudo.source")}
    for name, (value, key) in variables.items():
        if not MAKE_SAFE.match(str(value)):
            raise ConfigError(f"{key}: {str(value)!r} cannot be used from Make: paths there may hold only letters, "
                              "digits and _ . / + , : @ % = ~ - (no spaces, quotes, $, ;, braces or other shell "
                              "syntax); rename the file or folder")
    return {name: str(value) for name, (value, _) in variables.items()}
