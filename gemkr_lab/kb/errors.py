"""Errors of the knowledge-base package, each naming the file (and line or key) and the fix."""


class KBError(Exception):
    """Base class of knowledge-base errors."""


class IndexFormatError(KBError):
    """An index directory is missing, incomplete, corrupted, of an unknown version, or of another tokenizer."""


class CorpusError(KBError):
    """A corpus file cannot be read: wrong columns, a malformed row, invalid UTF-8, or no documents."""

    def __init__(self, path: object, message: str, line: int | None = None) -> None:
        where = f"{path}:{line}" if line is not None else f"{path}"
        super().__init__(f"{where}: {message}")
        self.path = path
        self.line = line
