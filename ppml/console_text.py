"""Console lines with a styled label and a literal message: messages quote file names, patterns and values, so
they are never interpreted as rich markup (``[a-z0-9]`` would otherwise vanish as a style tag)."""

from rich.text import Text


def labelled(label: str, message: str, style: str = "yellow") -> Text:
    """``<label>: <message>`` with only the label styled."""
    return Text(f"{label}: ", style=style) + Text(str(message))
