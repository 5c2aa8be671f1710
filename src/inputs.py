"""
The course's text inputs: reading a file, its lines, the question<TAB>answer
format of the birth-place files, and the vocabulary ids of a text. Every
problem is an InputError whose message reads "file:line: problem", which run.py
prints as its one line. The datasets get text, not files: they raise the error
with the line only, and the caller adds the file with .at(path).
"""


class InputError(ValueError):
    """Bad input: str(e) is 'file:line: problem' ('line N: problem' until the file is known)."""

    def __init__(self, problem, line=None, path=None):
        super().__init__(problem)
        self.problem, self.line, self.path = problem, line, path

    def at(self, path):
        """The same error, placed in the file path."""
        self.path = path
        return self

    def __str__(self):
        if self.path is not None:
            return f"{self.path}{f':{self.line}' if self.line is not None else ''}: {self.problem}"
        return f"line {self.line}: {self.problem}" if self.line is not None else self.problem


def read_text(path):
    """The whole file as text; an unreadable or non-UTF-8 file is an InputError."""
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except UnicodeDecodeError as e:
        raise InputError(f"not UTF-8 text (byte {e.start})", path=path) from None
    except OSError as e:
        raise InputError(f"cannot read: {e.strerror}", path=path) from None


def lines_of(text):
    """(line number, line) of each non-blank line, line endings (LF or CRLF) stripped."""
    for n, line in enumerate(text.split("\n"), start=1):
        line = line.rstrip("\r")
        if line.strip():
            yield n, line


def question_rows(text, answers=None):
    """
    [(line number, question, answer or None)] of a birth-place file's non-blank
    lines: 'question<TAB>answer', or a question alone (the test inputs).
    answers=True: every line must have its answer (finetuning); None: either
    every line has one or none has (evaluation).
    """
    rows = []
    for n, line in lines_of(text):
        parts = line.split("\t")
        if len(parts) > 2:
            raise InputError(f"{len(parts) - 1} tabs, expected one (question<TAB>answer): {line[:60]!r}", n)
        if answers and len(parts) == 1:
            raise InputError(f"expected 'question<TAB>answer', found no tab: {line[:60]!r}", n)
        if rows and (len(parts) == 2) != (rows[0][2] is not None):
            raise InputError(f"line {'has' if len(parts) == 2 else 'lacks'} a tab but line {rows[0][0]} "
                             f"{'lacks' if len(parts) == 2 else 'has'} one: {line[:60]!r}", n)
        if not parts[0].strip():
            raise InputError(f"empty question: {line[:60]!r}", n)
        if len(parts) == 2 and not parts[1].strip():
            raise InputError(f"empty answer: {line[:60]!r}", n)
        rows.append((n, parts[0], parts[1] if len(parts) == 2 else None))
    return rows


def read_questions(path):
    """question_rows of the file path."""
    try:
        return question_rows(read_text(path))
    except InputError as e:
        raise e.at(path) from None


def encode(stoi, text, line=None):
    """Vocabulary ids of text; a character the vocabulary lacks is an InputError."""
    try:
        return [stoi[c] for c in text]
    except KeyError as e:
        raise InputError(f"character {e.args[0]!r} (U+{ord(e.args[0]):04X}) is not in the vocabulary of the "
                         f"pretraining corpus", line) from None
