"""The ``key=value`` command lines of the tools (``evaluate``, ``analyze``, ``plot_fields``): the
arguments are OmegaConf dot-list overrides of a dataclass schema (``ckpt=... split=test
data.root=...``), so a wrong key or type fails with one line naming it."""
from __future__ import annotations

import sys
from typing import Callable, Optional, Sequence, Type, TypeVar

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

T = TypeVar("T")

# what a tool reports as one ``error:`` line (exit 2): bad arguments, a missing file, a value
# the tool cannot use (ConfigError, DataError, CheckpointError and DeviceError are ValueErrors)
TOOL_ERRORS = (OmegaConfBaseException, ValueError, FileNotFoundError)


def wants_help(argv: Sequence[str]) -> bool:
    return any(a in ("-h", "--help") for a in argv)


def parse(schema: Type[T], argv: Sequence[str]) -> T:
    """An instance of the dataclass ``schema`` with ``argv``'s ``key=value`` overrides applied."""
    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(schema), OmegaConf.from_dotlist(list(argv))))


def fail(error: BaseException) -> int:
    print(f"error: {error}", file=sys.stderr)
    return 2


def run_tool(doc: str, schema: Type[T], tool: Callable[[T], int], argv: Optional[Sequence[str]] = None) -> int:
    """``--help`` prints ``doc``; otherwise ``tool(parse(schema, argv))``, its errors as one line."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if wants_help(argv):
        print(doc)
        return 0
    try:
        return tool(parse(schema, argv))
    except TOOL_ERRORS as e:
        return fail(e)
