"""Slurm hostlist expansion (``node[1-3,5]`` -> ``node1 node2 node3 node5``).

Implements the subset of Slurm's hostlist syntax that appears in ``SLURM_JOB_NODELIST``:

* comma-separated entries at the top level: ``gpu-a[1-2],cpu7``
* bracket groups holding comma-separated numbers and ranges: ``node[1-3,5]``
* zero padding, taken from the width of the range's first bound: ``a[01-03]`` -> a01 a02 a03
* several bracket groups in one entry (cartesian product): ``rack[1-2]-n[1-2]``

Also parses Slurm's compressed count lists such as ``SLURM_TASKS_PER_NODE=2(x3),1``.
"""

from __future__ import annotations

import itertools
import re

__all__ = ["HostlistError", "expand_counts", "expand_hostlist"]


class HostlistError(ValueError):
    """Raised for a malformed hostlist or count list."""


def _split_top_level(text: str) -> list[str]:
    """Split on commas that are not inside brackets."""
    parts: list[str] = []
    depth = 0
    current: list[str] = []
    for ch in text:
        if ch == "[":
            if depth:
                raise HostlistError(f"nested '[' in hostlist {text!r}")
            depth = 1
        elif ch == "]":
            if not depth:
                raise HostlistError(f"unbalanced ']' in hostlist {text!r}")
            depth = 0
        if ch == "," and not depth:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    if depth:
        raise HostlistError(f"unbalanced '[' in hostlist {text!r}")
    parts.append("".join(current))
    return parts


def _expand_range_spec(spec: str, whole: str) -> list[str]:
    """Expand the inside of one bracket group: ``1-3,05`` -> ['1', '2', '3', '05']."""
    values: list[str] = []
    for item in spec.split(","):
        item = item.strip()
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", item)
        if not m:
            raise HostlistError(f"bad range {item!r} in hostlist {whole!r}")
        lo_s, hi_s = m.group(1), m.group(2)
        if hi_s is None:
            values.append(lo_s)
            continue
        lo, hi = int(lo_s), int(hi_s)
        if hi < lo:
            raise HostlistError(f"descending range {item!r} in hostlist {whole!r}")
        width = len(lo_s)
        values.extend(str(i).zfill(width) for i in range(lo, hi + 1))
    return values


def _expand_entry(entry: str, whole: str) -> list[str]:
    # Alternate literal text and bracket groups: "rack", "1-2", "-n", "1-2", "".
    pieces = re.split(r"\[([^\[\]]*)\]", entry)
    literals = pieces[0::2]
    groups = [_expand_range_spec(g, whole) for g in pieces[1::2]]
    if any(("[" in lit or "]" in lit) for lit in literals):
        raise HostlistError(f"malformed hostlist {whole!r}")
    hosts = []
    for combo in itertools.product(*groups):
        name = literals[0]
        for value, lit in zip(combo, literals[1:], strict=True):
            name += value + lit
        hosts.append(name)
    return hosts


def expand_hostlist(text: str) -> list[str]:
    """Expand a Slurm hostlist expression into host names, in order."""
    text = text.strip()
    if not text:
        raise HostlistError("empty hostlist")
    hosts: list[str] = []
    for entry in _split_top_level(text):
        entry = entry.strip()
        if not entry:
            raise HostlistError(f"empty entry in hostlist {text!r}")
        hosts.extend(_expand_entry(entry, text))
    return hosts


def expand_counts(text: str) -> list[int]:
    """Expand a Slurm count list: ``2(x3),1`` -> [2, 2, 2, 1]."""
    counts: list[int] = []
    for item in text.strip().split(","):
        m = re.fullmatch(r"\s*(\d+)(?:\(x(\d+)\))?\s*", item)
        if not m:
            raise HostlistError(f"bad count list {text!r}")
        counts.extend([int(m.group(1))] * int(m.group(2) or 1))
    return counts
