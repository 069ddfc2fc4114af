"""The ground of the config: its error, the section base class, the number type YAML needs, the metric names."""

import typing
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, model_validator

__all__ = ["ConfigError", "Float", "literal_choices", "is_section", "Section", "Broken",
           "COMPETITION_METRICS", "MONITOR_MAXIMISE", "SUBMISSION_FORMATS"]


class ConfigError(ValueError):
    """A configuration value a user can fix: the message names the key."""


class Broken(ValueError):
    """A section's rule that does not hold: the key (within the section), the rule, the value."""

    def __init__(self, key: str, rule: str, value: Any):
        super().__init__(f"{key}: {rule}")
        self.key, self.rule, self.value = key, rule, value


def _yaml_float(value: Any) -> Any:
    """PyYAML (YAML 1.1) reads `3e-4` as a string; users mean a number."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    return value


# A float that also takes an int (1 -> 1.0) or a number written as a string; never a bool.
Float = Annotated[float, BeforeValidator(_yaml_float)]


def literal_choices(annotation) -> tuple:
    """The documented choices of a key (its Literal's values, also inside `Literal[...] | None`), else ()."""
    if typing.get_origin(annotation) is typing.Literal:
        return typing.get_args(annotation)
    return next((typing.get_args(a) for a in typing.get_args(annotation) if typing.get_origin(a) is typing.Literal), ())

# Metrics `competition.metric` may name (pipeline.metrics.metric_value), and whether higher is better.
COMPETITION_METRICS = {"f1_macro": True, "accuracy": True, "roc_auc": True, "log_loss": False, "qwk": True}
# Metrics `train.monitor` may name, and whether a higher value is better (pipeline.metrics.MAXIMISE);
# `loss` is the training loss on the validation fold, `log_loss` the plain log-loss of its probabilities.
MONITOR_MAXIMISE = {**COMPETITION_METRICS, "f1_weighted": True, "precision_macro": True, "recall_macro": True,
                    "loss": False}
SUBMISSION_FORMATS = ("auto", "labels", "probability", "class_probabilities")


class Section(BaseModel):
    """The config and each of its sections."""
    # strict: no bool for an int, no "5" for an int, no 1 for a bool (Float takes ints and numeric strings);
    # assignment in code (cfg.train.batch_size = 32) is not re-validated, as with plain attributes.
    model_config = ConfigDict(extra="forbid", strict=True, validate_assignment=False)

    def _rules(self) -> list[tuple[str, bool, str]]:
        """(key, holds, rule) for what types and Field bounds cannot say (rules across keys, list shapes)."""
        return []

    @model_validator(mode="before")
    @classmethod
    def _choices_as_written(cls, data):
        """A documented choice written unquoted: YAML 1.1 reads `off`, `no`, `on`, `yes` as booleans, so a key
        whose choices include `off` (or `none`) takes false as that choice, and one with `on` takes true."""
        if not isinstance(data, dict):
            return data
        out = dict(data)
        for key, value in data.items():
            field = cls.model_fields.get(key)
            if field is None or not isinstance(value, bool):
                continue
            choices = literal_choices(field.annotation)
            pick = next((c for c in (("on",) if value else ("off", "none")) if c in choices), None)
            if pick is not None:
                out[key] = pick
        return out

    @model_validator(mode="after")
    def _check_rules(self):
        for key, holds, rule in self._rules():
            if not holds:
                raise Broken(key, rule, getattr(self, key))
        return self


def is_section(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, BaseModel)
