"""The one exception type users see for bad input, so the CLI can print it cleanly, and where in
a YAML file the input went wrong."""

from __future__ import annotations

from pathlib import Path

import yaml


class CrossLMError(Exception):
    """Bad input or an impossible request, with a message that names what to fix."""


def read_yaml(path: Path, what: str) -> tuple[str, object]:
    """(text, parsed YAML) of a user's file, or a CrossLMError naming ``what`` and the file."""
    try:
        text = path.read_text(encoding="utf-8")
        return text, yaml.safe_load(text)
    except FileNotFoundError:
        raise CrossLMError(f"{what} not found: {path}") from None
    except yaml.YAMLError as err:
        raise CrossLMError(f"{path}: not valid YAML: {err}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise CrossLMError(f"cannot read {what} {path}: {err}") from None


def yaml_line(root: yaml.Node, loc: tuple) -> int | None:
    """The 1-based line of the deepest key (or list item) along ``loc`` that the YAML has, if any."""
    node, line = root, None
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            pair = next(((k, v) for k, v in node.value if k.value == str(part)), None)
            if pair is None:
                break
            line, node = pair[0].start_mark.line + 1, pair[1]
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            break
    return line
