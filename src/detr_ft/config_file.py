"""``detr-ft train --config FILE``: a YAML file of train settings, checked as the flags would be.

Its values become the train flags' defaults before the command line is parsed, so a flag given
there still wins; a bad file is a one-line ``UserError`` naming the file and the setting.
"""

from __future__ import annotations

import argparse
from dataclasses import fields
from pathlib import Path

from detr_ft.config import TrainConfig
from detr_ft.errors import UserError


def config_defaults(path: str, train: argparse.ArgumentParser) -> dict:
    """The settings of the YAML file ``path`` as defaults for the ``train`` parser: keys are its
    flag names (dashes or underscores), values checked and converted as the flags' would be."""
    path = Path(path).expanduser()
    loaded = read_mapping(path)
    settings = {f.name for f in fields(TrainConfig)}
    actions = {a.dest: a for a in train._actions if a.dest in settings}
    unknown = sorted(set(loaded) - set(actions))
    if unknown:
        raise UserError(f"--config {path}: unknown setting(s) {', '.join(unknown)}; use train flag names")
    values = {k: yaml_value(actions[k], k, v, path) for k, v in loaded.items()}
    # a run's config.yaml records where that run went; a run from it writes to its own --output-dir
    values.pop("output_dir", None)
    return values


def read_mapping(path: Path) -> dict:
    """The YAML file's mapping, its keys with underscores for dashes."""
    import yaml

    try:
        loaded = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise UserError(f"--config {path}: file not found") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise UserError(f"--config {path}: not valid YAML{where} ({getattr(e, 'problem', None) or e})") from None
    if not isinstance(loaded, dict):
        raise UserError(f"--config {path}: expected a mapping of flag names to values")
    return {k.replace("-", "_"): v for k, v in loaded.items()}


def yaml_value(action: argparse.Action, key: str, value, path: Path):
    """A --config value checked and converted as its flag's would be (type, choices, nargs)."""
    if value is None:  # "not set"
        return value
    flag = "--" + key.replace("_", "-")

    def bad(why: str) -> UserError:
        return UserError(f"--config {path}: {key}: {value!r} is not {why}, as {flag} needs")

    if isinstance(action, argparse.BooleanOptionalAction):
        if not isinstance(value, bool):
            raise bad("true or false")
        return value
    convert = action.type or str
    items = value if action.nargs is not None else [value]
    count_ok = (lambda n: n >= 1) if action.nargs == "+" else (lambda n: n == action.nargs)
    if action.nargs is not None and not (isinstance(value, list) and count_ok(len(value))):
        raise bad(f"a list of {action.nargs if action.nargs != '+' else 'one or more'} values")
    try:
        if convert is int and any(isinstance(v, float) and not v.is_integer() for v in items):
            raise ValueError
        if any(isinstance(v, (bool, list, dict)) for v in items):
            raise ValueError
        items = [convert(v) for v in items]
    except (TypeError, ValueError):
        kind = {int: "an integer", float: "a number"}.get(convert, "text")
        raise bad(kind) from None
    if action.choices and any(v not in action.choices for v in items):
        raise bad(f"one of {', '.join(map(str, action.choices))}")
    return items if action.nargs is not None else items[0]
