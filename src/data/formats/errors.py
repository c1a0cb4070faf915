"""What goes wrong with data files, and the tally a loader keeps of it.

Every problem is a ``DataError`` whose message names the file (and line),
because at a federated site nobody else can look at the data to find it.
Its ``reason`` sorts it into one of a few kinds, so a log says at a glance
whether a site lost images to corrupt files, bad labels or something else.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

# Why a file or entry was refused; ErrorReport counts problems by these.
MISSING = "missing file"
UNREADABLE = "unreadable image"      # not an image, corrupt, truncated
TOO_LARGE = "image too large"        # over MAX_IMAGE_PIXELS: possible decompression bomb
UNSUPPORTED = "unsupported image"    # a format, mode or EXIF rotation the pipeline would misread
BAD_LABEL = "bad label"              # label file, line, annotation or table row
OUTSIDE = "outside the data folder"  # absolute, '..', or a symlink leaving the folder
BAD_NAME = "bad file name"           # not valid UTF-8


class DataError(ValueError):
    """A data file is missing, unreadable or malformed; the message says where.

    reason: one of the reason constants above, for counting; most errors are
    about labels, hence the default.
    """

    def __init__(self, message: str, reason: str = BAD_LABEL):
        super().__init__(message)
        self.reason = reason


@dataclass
class ErrorReport:
    """What a loader with ``on_error='skip'`` left out, and why.

    reasons: problems per ``DataError.reason``, so a log says at a glance
    whether a site lost images to corrupt files, bad labels or something else.
    notes: things left out on purpose (``drop_unmapped``), counted so that a
    typo in a class map cannot hide, but not problems.
    warnings: things that are not wrong in themselves but usually mean a
    mistake (two label specs of a source that share no image); nothing is
    left out for them, and they are no problems.
    """

    skipped: int = 0
    messages: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    reasons: Counter = field(default_factory=Counter)
    warnings: list[str] = field(default_factory=list)

    def add(self, problem: DataError | str, skipped_image: bool | int = True) -> None:
        """One problem; skipped_image: True (one image), False, or a number of images."""
        self.skipped += int(skipped_image)
        self.messages.append(str(problem))
        self.reasons[getattr(problem, "reason", BAD_LABEL)] += 1

    def note(self, message: str) -> None:
        self.notes.append(message)

    def warn(self, message: str) -> None:
        self.warnings.append(message)

    @property
    def clean(self) -> bool:
        return not self.messages

    def reason_counts(self) -> str:
        """'2 unreadable image, 1 bad label', most frequent first."""
        return ", ".join(f"{n} {reason}" for reason, n in self.reasons.most_common())

    def summary(self, max_messages: int = 10) -> str:
        """One readable block for logs: counts (by reason) plus the first few messages."""
        lines = ["no data problems"]
        if self.messages:
            lines = [f"{self.skipped} image(s) skipped, {len(self.messages)} problem(s) "
                     f"({self.reason_counts()}):"]
            lines += [f"  {m}" for m in self.messages[:max_messages]]
            if len(self.messages) > max_messages:
                lines.append(f"  ... and {len(self.messages) - max_messages} more")
        lines += [f"  warning: {m}" for m in self.warnings]
        lines += [f"  note: {m}" for m in self.notes]
        return "\n".join(lines)


def yaml_error(where: str, err: Exception) -> DataError:
    """A YAML parse error as one line naming the file and line (PyYAML's own spans several)."""
    mark = getattr(err, "problem_mark", None)
    line = f": line {mark.line + 1}" if mark is not None else ""
    problem = getattr(err, "problem", None) or " ".join(str(err).split())
    context, context_mark = getattr(err, "context", None), getattr(err, "context_mark", None)
    if context and context_mark is not None:
        problem += f"; {context} at line {context_mark.line + 1}"
    return DataError(f"{where}{line}: not valid YAML ({problem})")
