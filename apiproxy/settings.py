"""Options as typed tables: each part's settings are a dataclass, and its flags, ``--config`` keys,
defaults and help all come from that one table.

The machinery is shared so the three commands read alike: a field ``root_ca_file`` is the flag
``--root-ca-file`` and the config key ``root-ca-file``, durations read ``30s``/``15m``/``366d``, and a
``--config FILE`` supplies defaults that flags override. The tables themselves live with their part
(:mod:`apiproxy.proxy.settings`, :mod:`apiproxy.exporter.settings`, :mod:`apiproxy.multicluster.settings`).
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable, Sequence
from dataclasses import field, fields
from pathlib import Path
from typing import Any

_NUMBER = re.compile(r"\d+(?:\.\d+)?")
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 7 * 86400.0}


def parse_duration(text: str) -> float:
    """``90s``, ``15m``, ``24h``, ``366d``, ``1h30m``, ``250ms`` or plain seconds → seconds (≥ 0)."""
    text = text.strip()
    if _NUMBER.fullmatch(text):
        return float(text)
    position, seconds = 0, 0.0
    for match in _DURATION_PART.finditer(text):
        if match.start() != position:
            break
        seconds += float(match.group(1)) * _UNITS[match.group(2)]
        position = match.end()
    if not text or position != len(text):
        raise ValueError(f"{text!r} is not a duration (examples: 30s, 15m, 24h, 366d, 1h30m)")
    return seconds


def duration_arg(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def mapping_arg(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key or not value:
        raise argparse.ArgumentTypeError(f"{text!r} is not KEY=VALUE")
    return key, value


def opt(default: Any, help: str, **extra: Any) -> Any:
    return field(default=default, metadata={"help": help, **extra})


def add_arguments(parser: argparse.ArgumentParser, settings_class: type[Any]) -> None:
    """One flag per field of ``settings_class``, ``--like-this``, with its
    default shown in ``--help``."""
    parser.add_argument(
        "--config",
        metavar="FILE",
        help="YAML file of options (keys are these flag names without '--'); flags given here override it",
    )
    defaults = settings_class()
    for f in fields(settings_class):
        flag = "--" + f.name.replace("_", "-")
        default = getattr(defaults, f.name)
        help_text = f.metadata["help"]
        if isinstance(default, bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=default, help=help_text)
            continue
        kwargs: dict[str, Any] = {"default": default, "help": help_text + " (default: %(default)s)"}
        if "action" in f.metadata:
            kwargs["action"] = f.metadata["action"]
        if "choices" in f.metadata:
            kwargs["choices"] = f.metadata["choices"]
        kwargs["type"] = f.metadata.get("type", _type_of(default, f.type))
        parser.add_argument(flag, **kwargs)


def _type_of(default: Any, annotation: Any) -> Callable[[str], Any]:
    text = str(annotation)
    if "Path" in text:
        return Path
    if isinstance(default, float) or text == "float":
        return float
    if isinstance(default, int) or text == "int":
        return int
    return str


def from_namespace(ns: argparse.Namespace, settings_class: type[Any]) -> Any:
    return settings_class(**{f.name: getattr(ns, f.name) for f in fields(settings_class)})


class ConfigFileError(ValueError):
    """A configuration file that cannot be used; the message names the file and the key."""


def _flag_fields(settings_class: type[Any]) -> dict[str, Any]:
    return {f.name.replace("_", "-"): f for f in fields(settings_class)}


def load_config(path: Path, settings_class: type[Any]) -> dict[str, Any]:
    """Read a YAML mapping whose keys are flag names of ``settings_class`` (``tls-cert-file: /path``).

    Values are converted by the same functions as the flags, so ``30s`` works for a duration, and every
    unknown key or bad value is an error naming the key.
    """
    import yaml

    try:
        document = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigFileError(f"{path}: {exc}") from exc
    if document is None:
        return {}
    if not isinstance(document, dict):
        raise ConfigFileError(f"{path}: must be a mapping of option names to values")
    known = _flag_fields(settings_class)
    defaults = settings_class()
    values: dict[str, Any] = {}
    for key, raw in document.items():
        f = known.get(str(key))
        if f is None:
            hint = (
                f" (did you mean {str(key).replace('_', '-')!r}?)"
                if str(key).replace("_", "-") in known
                else ""
            )
            raise ConfigFileError(f"{path}: unknown option {key!r}{hint}")
        try:
            values[f.name] = _convert(f, raw, getattr(defaults, f.name))
        except (ValueError, TypeError, argparse.ArgumentTypeError) as exc:
            raise ConfigFileError(f"{path}: option {key!r}: {exc}") from exc
    return values


def _convert(f: Any, raw: Any, default: Any) -> Any:
    if isinstance(default, bool):
        if not isinstance(raw, bool):
            raise ValueError(f"expected true or false, got {raw!r}")
        return raw
    if f.metadata.get("action") == "append":
        if isinstance(raw, dict):
            return [(str(k), str(v)) for k, v in raw.items()]
        if not isinstance(raw, list):
            raise ValueError("expected a mapping or a list of KEY=VALUE")
        return [mapping_arg(str(item)) for item in raw]
    if raw is None:
        return None
    if isinstance(raw, dict | list):
        raise ValueError(f"expected a single value, got {type(raw).__name__}")
    convert = f.metadata.get("type", _type_of(default, f.type))
    value = convert(str(raw))
    choices = f.metadata.get("choices")
    if choices and value not in choices:
        raise ValueError(f"must be one of {', '.join(choices)}")
    return value


def parse_settings(parser: argparse.ArgumentParser, argv: Sequence[str], settings_class: type[Any]) -> Any:
    """Parse the flags of ``settings_class``; a ``--config FILE`` supplies defaults that flags override."""
    args = parser.parse_args(list(argv))
    config = getattr(args, "config", None)
    if config:
        try:
            parser.set_defaults(**load_config(Path(config), settings_class))
        except ConfigFileError as exc:
            parser.error(str(exc))
        args = parser.parse_args(list(argv))
    return from_namespace(args, settings_class)
