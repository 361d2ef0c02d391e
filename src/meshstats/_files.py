"""The one loader for the JSON and YAML files meshstats reads.

Stats configs (:class:`~meshstats.StatsConfig`), workload registries, node metadata
(:class:`~meshstats.PeerMetadata`) and sidecar configs all come through here, so they
follow one rule for the format and word their errors alike, as a
:class:`~meshstats.errors.ConfigError` whose ``field`` is the file:

- ``.json`` is JSON; ``.yaml`` and ``.yml`` are YAML; any other name is JSON when its
  first non-blank character is ``{`` or ``[``, else YAML.
- An unreadable file: ``cannot read <what>: <reason>``; a malformed one:
  ``invalid JSON in <what>: ...`` or ``invalid YAML in <what>: ...``.

>>> import os, tempfile
>>> with tempfile.TemporaryDirectory() as d:
...     path = os.path.join(d, "node.json")
...     with open(path, "w") as f:
...         _ = f.write('{"NAME": "pod-1"}')
...     load_data(path, "node metadata")
{'NAME': 'pod-1'}
>>> try:
...     parse_data("[1, 2", "json", "a stats config", "<text>")
... except ConfigError as exc:
...     exc.field, str(exc).split(":")[1]
('<text>', ' invalid JSON in a stats config')
"""

from __future__ import annotations

import json
import os
from typing import Any, Literal, Union

from .errors import ConfigError

__all__ = ["format_of", "load_data", "parse_data"]

StrPath = Union[str, "os.PathLike[str]"]
Format = Literal["json", "yaml"]


def format_of(path: StrPath, text: str) -> Format:
    """The format by suffix, else sniffed from the text."""
    name = os.fspath(path).lower()
    if name.endswith(".json"):
        return "json"
    if name.endswith((".yaml", ".yml")):
        return "yaml"
    return "json" if text.lstrip().startswith(("{", "[")) else "yaml"


def parse_data(text: str, fmt: Format, what: str, where: str) -> Any:
    """Parse ``text``; errors name ``what`` it is and ``where`` it came from."""
    if fmt == "json":
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"invalid JSON in {what}: {exc}", where) from None
    try:
        import yaml
    except ImportError as exc:  # a dependency, but an environment may lack it
        raise ImportError(
            f"reading {what} from YAML ({where}) needs PyYAML: pip install pyyaml "
            "(or write it as JSON)"
        ) from exc
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"invalid YAML in {what}: {exc}", where) from None


def load_data(path: StrPath, what: str, fmt: Format | None = None) -> Any:
    """Read and parse a JSON or YAML file (the module's rule, unless ``fmt`` is given)."""
    where = os.fspath(path)
    try:
        with open(where, encoding="utf-8") as handle:
            text = handle.read()
    except OSError as exc:
        raise ConfigError(f"cannot read {what}: {exc.strerror or exc}", where) from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"cannot read {what}: not UTF-8 ({exc.reason})", where) from None
    return parse_data(text, fmt or format_of(where, text), what, where)
