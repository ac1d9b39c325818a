"""Reading the small files of a run dir (``config.yaml``, ``summary.json``, ``metrics.jsonl``) that
may come from someone else: a sweep copied from a cluster, a colleague's run, a file cut short by a
power loss. Every reader either returns plain Python data or raises :class:`RunFileError`, whose
one-line message names the file, what is wrong and where; nothing here evaluates what it reads:
YAML is read without Python tags (OmegaConf's loader refuses them) and interpolations such as
``${oc.env:VAR}`` are never resolved (agf-exp writes resolved configs, so a run file holding one
was not written by it and is refused instead of reading the environment)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List


class RunFileError(ValueError):
    """A run file that cannot be read; the message is ``FILE: what is wrong``."""


def _reason(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return (text[:160] + "...") if len(text) > 160 else (text or type(error).__name__)


def read_text(path: Path) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise RunFileError(f"{path}: not UTF-8 text (byte {e.start}): the file is garbled") from None
    except OSError as e:
        raise RunFileError(f"{path}: cannot be read ({e.strerror or _reason(e)})") from None


def read_json(path: Path, kind: type = dict) -> Any:
    """The JSON value of ``path``, which must be a ``kind`` (a mapping by default)."""
    text = read_text(path)
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        cut = " (cut short)" if e.pos >= len(text.rstrip()) else ""
        raise RunFileError(f"{path}: not valid JSON{cut}: {e.msg} at line {e.lineno} column {e.colno}") from None
    if not isinstance(value, kind):
        raise RunFileError(f"{path}: holds a JSON {type(value).__name__}, not the {kind.__name__} agf-exp writes")
    return value


def read_jsonl(path: Path) -> List[Dict[str, Any]]:
    """One mapping per non-empty line of ``path`` ([] when it does not exist)."""
    path = Path(path)
    if not path.is_file():
        return []
    records = []
    for number, line in enumerate(read_text(path).split("\n"), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise RunFileError(f"{path}: line {number} is not valid JSON ({e.msg}; a line cut short by a crash?)") from None
        if not isinstance(record, dict):
            raise RunFileError(f"{path}: line {number} holds a JSON {type(record).__name__}, not a record")
        records.append(record)
    return records


def interpolations(node: Any, prefix: str = "") -> List[str]:
    """Dotted keys of ``node`` (plain containers) whose string value holds ``${...}``."""
    if isinstance(node, dict):
        return [k for key, value in node.items() for k in interpolations(value, f"{prefix}{key}.")]
    if isinstance(node, (list, tuple)):
        return [k for i, value in enumerate(node) for k in interpolations(value, f"{prefix}{i}.")]
    return [prefix.rstrip(".")] if isinstance(node, str) and "${" in node else []


def plain_config(config: Any, where: str) -> Dict[str, Any]:
    """``config`` when it is a mapping with no interpolation; else :class:`RunFileError`."""
    if not isinstance(config, dict):
        raise RunFileError(f"{where}: holds a {type(config).__name__}, not a config mapping")
    found = interpolations(config)
    if found:
        raise RunFileError(f"{where}: holds an interpolation (${{...}}) at {', '.join(found[:3])}: agf-exp writes "
                           "resolved configs, so this one was not written by it; it is not resolved (it could "
                           "read the environment)")
    return config


def read_config(path: Path) -> Dict[str, Any]:
    """A run's ``config.yaml`` as plain Python, read without resolving anything."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException
    import yaml

    text = read_text(path)
    try:
        node = OmegaConf.create(text)
    except (yaml.YAMLError, OmegaConfBaseException, ValueError, TypeError) as e:
        raise RunFileError(f"{path}: not a readable YAML config ({_reason(e)})") from None
    if not OmegaConf.is_dict(node):
        raise RunFileError(f"{path}: holds a {type(node).__name__}, not a config mapping")
    return plain_config(OmegaConf.to_container(node, resolve=False), str(path))
