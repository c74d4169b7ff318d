"""A sweep's name: a plain folder name, since the runs go to `runs/<name>` unless the file says `root:`."""

import re

from gemkr_lab.config.experiment import ConfigError

_PLAIN = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.@+-]*")


def check_sweep_name(name: object, where: str) -> str:
    """`name` when it is one plain folder name; `../../x` or `a/b` would write outside (or deep in) the runs root."""
    if isinstance(name, int) and not isinstance(name, bool):
        name = str(name)  # `name: 2024` is a folder name too
    if not isinstance(name, str) or not _PLAIN.fullmatch(name) or name.strip(".") == "":
        raise ConfigError(
            f"{where}: name {name!r} must be a plain folder name (letters, digits, _ . @ + -, no '/' or '..'); "
            "to put the runs elsewhere, set root: DIR"
        )
    return name
