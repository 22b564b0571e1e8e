"""Slurm's value syntaxes, read and written the way Slurm's own tools do: sizes (16G), times
(D-HH:MM:SS), TRES lists (cpu=4,gres/gpu=2,mem=64G). The site description, the accounting
plan and the site importer all compare values in these normalised forms, so "2-00:00:00" and
"48:00:00", or "mem=65536M" and "mem=64G", are the same limit.
"""

from __future__ import annotations

import re

UNLIMITED_WORDS = ("unlimited", "infinite", "none", "n/a")
_SIZE = re.compile(r"^(\d+(?:\.\d+)?)\s*([KMGTP]?)i?B?$", re.I)
_SIZE_FACTORS_MB = {"K": 1 / 1024, "": 1, "M": 1, "G": 1024, "T": 1024**2, "P": 1024**3}
# TRES names sites use in limits (sacctmgr(1), TRES): the count types and gres/license/fs ones.
_TRES_NAME = re.compile(
    r"^(cpu|mem|node|billing|energy|vmem|pages|gres/[a-z0-9_]+(:[A-Za-z0-9_.-]+)?"
    r"|license/[A-Za-z0-9_.-]+|fs/disk|fs/lustre|ic/ofed|bb/[A-Za-z0-9_.-]+)$"
)


class ValueProblem(ValueError):
    """A value that does not parse; its message says what was expected."""


def size_mb(value: object) -> int:
    """A memory size in MiB: 16G, 8192M, 8192 (MiB, as slurm.conf counts), 1.5T."""
    if isinstance(value, bool):
        raise ValueProblem(f"{value!r}: expected a size such as 512M or 16G")
    if isinstance(value, int):
        if value < 0:
            raise ValueProblem(f"{value}: a size cannot be negative")
        return value
    match = _SIZE.match(str(value).strip())
    if not match:
        raise ValueProblem(f"{value!r}: expected a size such as 512M or 16G")
    return round(float(match.group(1)) * _SIZE_FACTORS_MB[match.group(2).upper()])


def format_size_mb(mb: int) -> str:
    """The shortest exact form: 16G, 1536M, 2T."""
    for unit, factor in (("T", 1024**2), ("G", 1024)):
        if mb and mb % factor == 0:
            return f"{mb // factor}{unit}"
    return f"{mb}M"


def minutes(value: object) -> int | None:
    """A Slurm time in whole minutes; None for UNLIMITED. Forms (sbatch(1) --time): MM,
    MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS. Seconds round up, as Slurm does."""
    if isinstance(value, bool):
        raise ValueProblem(f"{value!r}: expected a time such as 30, 02:00:00 or 1-00:00:00")
    if isinstance(value, int):
        if value < 0:
            raise ValueProblem(f"{value}: a time cannot be negative")
        return value
    text = str(value).strip()
    if text.lower() in UNLIMITED_WORDS or text == "-1":
        return None
    match = re.match(r"^(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?$", text)
    if not match:
        raise ValueProblem(f"{value!r}: expected a time such as 30, 02:00:00 or 1-00:00:00")
    days, first, second, third = match.groups()
    parts = [int(p) for p in (first, second, third) if p is not None]
    if days is not None:  # D-HH[:MM[:SS]]
        hours, mins, secs = [*parts, 0, 0][:3]
        total_s = ((int(days) * 24 + hours) * 60 + mins) * 60 + secs
    elif len(parts) == 3:  # HH:MM:SS
        total_s = (parts[0] * 60 + parts[1]) * 60 + parts[2]
    elif len(parts) == 2:  # MM:SS
        total_s = parts[0] * 60 + parts[1]
    else:  # MM
        total_s = parts[0] * 60
    return -(-total_s // 60)


def format_minutes(total: int | None) -> str:
    """As Slurm prints a limit: D-HH:MM:SS, or HH:MM:SS under a day; UNLIMITED for None."""
    if total is None:
        return "UNLIMITED"
    days, rest = divmod(total, 24 * 60)
    hours, mins = divmod(rest, 60)
    clock = f"{hours:02d}:{mins:02d}:00"
    return f"{days}-{clock}" if days else clock


def seconds(value: object) -> int:
    """A duration in seconds: an integer, or HH:MM:SS as sacctmgr prints GraceTime."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    text = str(value).strip()
    if text.isdigit():
        return int(text)
    match = re.match(r"^(?:(\d+)-)?(\d+):(\d+):(\d+)$", text)
    if not match:
        raise ValueProblem(f"{value!r}: expected seconds, such as 60")
    days, hours, mins, secs = (int(p or 0) for p in match.groups())
    return ((days * 24 + hours) * 60 + mins) * 60 + secs


def tres(value: object) -> dict[str, int]:
    """A TRES list, name -> count (mem in MiB): 'gres/gpu=2,cpu=8' or a mapping."""
    if isinstance(value, dict):
        items = [(str(k), v) for k, v in value.items()]
    elif isinstance(value, str):
        items = []
        for part in filter(None, (p.strip() for p in value.split(","))):
            name, sep, count = part.partition("=")
            if not sep:
                raise ValueProblem(f"{value!r}: expected name=count pairs such as gres/gpu=2")
            items.append((name.strip(), count.strip()))
    else:
        raise ValueProblem(f"{value!r}: expected name=count pairs such as gres/gpu=2,cpu=8")
    result: dict[str, int] = {}
    for name, count in items:
        if not _TRES_NAME.match(name):
            raise ValueProblem(
                f"{value!r}: unknown TRES '{name}' (cpu, mem, node, billing, gres/gpu, "
                "license/<name>, ...)"
            )
        try:
            result[name] = size_mb(count) if name == "mem" else int(str(count))
        except (ValueError, ValueProblem):
            raise ValueProblem(f"{value!r}: '{name}={count}' needs a whole number") from None
        if result[name] < 0:
            raise ValueProblem(f"{value!r}: '{name}={count}' cannot be negative")
    return result


def format_tres(counts: dict[str, int]) -> str:
    return ",".join(
        f"{name}={format_size_mb(n) if name == 'mem' else n}" for name, n in sorted(counts.items())
    )


def words(value: object) -> tuple[str, ...]:
    """A list given as YAML list or Slurm's comma-separated text, in order, without blanks."""
    if value is None:
        return ()
    if isinstance(value, list | tuple):
        return tuple(str(v).strip() for v in value if str(v).strip())
    return tuple(p.strip() for p in str(value).split(",") if p.strip())
