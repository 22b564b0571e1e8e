"""The site's accounting tree (QOS, accounts, users and their limits) brought into slurmdbd with
sacctmgr, the way a site's administrators keep it: read what is there, change only what
differs, never touch a job or a job record.

plan() compares the site with what `sacctmgr show` prints and returns the sacctmgr commands that
make them agree, in an order Slurm accepts (QOS before the associations that name them, parents
before children, a new default account before an old one is removed). Applying the plan a second
time finds nothing to do. Removals that Slurm refuses while jobs of that user, account or QOS are
active are reported and left for the next `slurmlab up`; job records are never deleted (sacct
keeps a removed user's jobs).

Values are compared as Slurm applies them: Max* association limits are inherited from the
parent account (sacctmgr shows a child's inherited value), Grp* limits and fair-share shares are
each association's own; a QOS or default QOS that the site leaves out is inherited too.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from slurmlab import site as site_mod
from slurmlab import slurm_values as sv
from slurmlab.site import ASSOC_SPECS, QOS_SPECS, Site, Spec

# Values Slurm gives a QOS or an association that sets nothing (sacctmgr(1)).
QOS_DEFAULTS: dict[str, Any] = {
    "priority": 0,
    "preempt": (),
    "preempt_mode": "cluster",
    "grace_time": 0,
    "usage_factor": 1.0,
    "flags": (),
}
INHERITED = ("qos", "default_qos", "max_jobs", "max_submit", "max_tres_per_job", "max_wall")
SLURM_ROOT = "root"  # Slurm's own top account and administrator; never changed here
KEEP_QOS = "normal"  # Slurm's default QOS, which root's association names

Runner = Callable[[list[str]], str]  # runs sacctmgr with these arguments, returns its stdout


@dataclass(frozen=True)
class Step:
    """One sacctmgr command and what it does, in words."""

    args: tuple[str, ...]
    says: str
    removal: bool = False


@dataclass
class Current:
    """What slurmdbd holds now, as `sacctmgr show` prints it."""

    qos: dict[str, dict[str, str]] = field(default_factory=dict)
    accounts: dict[str, dict[str, str]] = field(default_factory=dict)  # + parent, description
    users: dict[str, str] = field(default_factory=dict)  # name -> default account
    user_assocs: dict[tuple[str, str], dict[str, str]] = field(default_factory=dict)


def _columns(specs: tuple[Spec, ...]) -> list[str]:
    return [s.column for s in specs if s.column]


def read_current(sacctmgr: Runner) -> Current:
    current = Current()
    qos_columns = _columns(QOS_SPECS)
    for row in _rows(sacctmgr(["show", "qos", f"format=Name,{','.join(qos_columns)}"])):
        current.qos[row[0]] = dict(
            zip([s.key for s in QOS_SPECS if s.column], row[1:], strict=False)
        )
    assoc_keys = [s.key for s in ASSOC_SPECS]
    assoc_format = f"format=Account,User,ParentName,Partition,{','.join(_columns(ASSOC_SPECS))}"
    for row in _rows(sacctmgr(["show", "assoc", assoc_format])):
        account, user, parent, partition, *values = row
        if partition:
            continue  # partition-specific associations are not part of a slurmlab site
        record = dict(zip(assoc_keys, values, strict=False))
        if user:
            current.user_assocs[(user, account)] = record
        else:
            current.accounts[account] = {**record, "parent": parent}
    for row in _rows(sacctmgr(["show", "account", "format=Account,Description,Organization"])):
        if row[0] in current.accounts:
            current.accounts[row[0]].update(description=row[1], organization=row[2])
    for row in _rows(sacctmgr(["show", "user", "format=User,DefaultAccount"])):
        current.users[row[0]] = row[1]
    return current


def _rows(text: str) -> list[list[str]]:
    return [line.split("|") for line in text.splitlines() if line.strip()]


# ---- comparing -------------------------------------------------------------------------------


def _normal(spec: Spec, text: object) -> Any:
    """A value as sacctmgr prints it (or the site gives it), in the form the site holds."""
    if text is None or text == "":
        return None
    if not isinstance(text, str):
        return tuple(sorted(text)) if spec.kind == "list" else text
    if spec.kind == "list":
        return tuple(sorted(sv.words(text)))
    if spec.kind == "int":
        return None if text.lower() == "parent" else int(text)
    if spec.kind == "float":
        return float(text)
    if spec.kind == "time":
        return sv.minutes(text)
    if spec.kind == "seconds":
        return sv.seconds(text)
    if spec.kind == "tres":
        return sv.tres(text)
    return text.lower() if spec.kind == "enum" else text


def _slurm_text(spec: Spec, value: Any, current: Any) -> str:
    """How `sacctmgr ... set` takes a value; None clears (Slurm's -1 or empty)."""
    if value is None:
        if spec.kind == "tres":
            return ",".join(f"{name}=-1" for name in sorted(current or {}))
        if spec.key == "fairshare":
            return "1"
        if spec.key in QOS_DEFAULTS:
            value = QOS_DEFAULTS[spec.key]
        elif spec.kind in ("list", "text"):
            return "" if spec.key in ("preempt", "qos") else "-1"
        else:
            return "-1"
    if spec.kind == "list":
        return ",".join(value) if value else ("-1" if spec.key == "flags" else "")
    if spec.kind == "time":
        return sv.format_minutes(value)
    if spec.kind == "tres":
        cleared = {name: -1 for name in (current or {}) if name not in value}
        return sv.format_tres({**value, **cleared}).replace("=-1M", "=-1")
    return str(value)


def _differences(
    specs: tuple[Spec, ...], wanted: dict[str, Any], have: dict[str, str], defaults: dict[str, Any]
) -> list[str]:
    """`Name=value` settings that make `have` what `wanted` says."""
    settings = []
    for spec in specs:
        if not spec.slurm or (spec.key not in have and spec.key not in wanted):
            continue
        want = _normal(spec, wanted.get(spec.key))
        got = _normal(spec, have.get(spec.key))
        default = defaults.get(spec.key)
        if (want if want is not None else default) == (got if got is not None else default):
            continue
        if spec.kind == "list" and not want and not got:
            continue
        settings.append(f"{spec.slurm}={_slurm_text(spec, want, got)}")
    return settings


def _effective(site: Site, account: str, key: str, root: dict[str, str]) -> Any:
    """An inherited setting of an account: its own, else its parent's, up to Slurm's root."""
    walk = account
    while walk in site.accounts:
        value = site.accounts[walk].get(key)
        if value is not None:
            return value
        walk = site.accounts[walk].get("parent", SLURM_ROOT)
    spec = next(s for s in ASSOC_SPECS if s.key == key)
    return _normal(spec, root.get(key))


def _wanted_assoc(
    site: Site, own: dict[str, Any], account: str, root: dict[str, str]
) -> dict[str, Any]:
    """An association's settings as Slurm will show them: inherited ones resolved."""
    wanted = {s.key: own.get(s.key) for s in ASSOC_SPECS}
    for key in INHERITED:
        if wanted[key] is None:
            wanted[key] = _effective(site, account, key, root)
    if wanted["qos"] is not None:
        wanted["qos"] = tuple(sorted(wanted["qos"]))
    return wanted


def _have(site: Site, current: Current, account: str, root: dict[str, str]) -> dict[str, Any]:
    """An account association as sacctmgr shows it now; one the plan adds inherits its
    parent's (as slurmdbd copies them when it creates an association)."""
    if account in current.accounts:
        return current.accounts[account]
    parent = site.accounts.get(account, {}).get("parent", SLURM_ROOT)
    if parent == SLURM_ROOT or parent not in site.accounts:
        return {k: v for k, v in root.items() if k in INHERITED}
    return {k: v for k, v in _have(site, current, parent, root).items() if k in INHERITED}


def _depth(site: Site, account: str) -> int:
    depth = 0
    while account in site.accounts:
        account = site.accounts[account].get("parent", SLURM_ROOT)
        depth += 1
    return depth


# ---- planning --------------------------------------------------------------------------------


def plan(site: Site, current: Current, cluster: str) -> list[Step]:
    steps: list[Step] = []
    add = steps.append
    root = current.accounts.get(SLURM_ROOT, {})

    # 1. QOS: create the missing ones first, so that Preempt lists can name each other.
    for name in site.qos:
        if name not in current.qos:
            add(Step(("add", "qos", name), f"add QOS {name}"))
    for name, qos in site.qos.items():
        have = current.qos.get(name, {})
        settings = _differences(QOS_SPECS, qos, have, QOS_DEFAULTS)
        if settings:
            add(
                Step(
                    ("modify", "qos", "where", f"name={name}", "set", *settings),
                    f"QOS {name}: {' '.join(settings)}",
                )
            )

    # 2. Accounts, parents before children.
    for name in sorted(site.accounts, key=lambda a: (_depth(site, a), a)):
        account = site.accounts[name]
        parent = account.get("parent", SLURM_ROOT)
        description = account.get("description", name)
        organization = account.get("organization", name)
        have = current.accounts.get(name)
        if have is None:
            add(
                Step(
                    (
                        "add",
                        "account",
                        name,
                        f"cluster={cluster}",
                        f"parent={parent}",
                        f"description={description}",
                        f"organization={organization}",
                    ),
                    f"add account {name} under {parent}",
                )
            )
            have = {"parent": parent, "description": description, "organization": organization}
        changes = [
            f"{key}={want}"
            for key, want in (
                ("parent", parent),
                ("description", description),
                ("organization", organization),
            )
            if have.get(key) != want
        ]
        if changes:
            add(
                Step(
                    ("modify", "account", "where", f"name={name}", "set", *changes),
                    f"account {name}: {' '.join(changes)}",
                )
            )
        wanted = _wanted_assoc(site, account, name, root)
        have = _have(site, current, name, root)
        settings = _differences(ASSOC_SPECS, wanted, have, {"fairshare": 1})
        if settings:
            add(
                Step(
                    (
                        "modify",
                        "account",
                        "where",
                        f"name={name}",
                        f"cluster={cluster}",
                        "set",
                        *settings,
                    ),
                    f"account {name}: {' '.join(settings)}",
                )
            )

    # 3. Users: their associations, then their default account, then their limits.
    for name, user in site.users.items():
        accounts = user["accounts"]
        missing = [a for a in accounts if (name, a) not in current.user_assocs]
        if missing:
            default = user.get("default_account") or accounts[0]
            add(
                Step(
                    (
                        "add",
                        "user",
                        name,
                        f"account={','.join(missing)}",
                        f"cluster={cluster}",
                        *([f"defaultaccount={default}"] if name not in current.users else []),
                    ),
                    f"add user {name} to {','.join(missing)}",
                )
            )
        default = user.get("default_account") or accounts[0]
        if name in current.users and current.users[name] != default:
            add(
                Step(
                    ("modify", "user", "where", f"name={name}", "set", f"defaultaccount={default}"),
                    f"user {name}: default account {default}",
                )
            )
        for account in accounts:
            wanted = _wanted_assoc(site, user, account, root)
            have = current.user_assocs.get((name, account)) or _have(site, current, account, root)
            if (name, account) not in current.user_assocs:
                have = {k: v for k, v in have.items() if k in INHERITED}  # fair-share: 1
            settings = _differences(ASSOC_SPECS, wanted, have, {"fairshare": 1})
            if settings:
                add(
                    Step(
                        (
                            "modify",
                            "user",
                            "where",
                            f"name={name}",
                            f"account={account}",
                            f"cluster={cluster}",
                            "set",
                            *settings,
                        ),
                        f"user {name} in {account}: {' '.join(settings)}",
                    )
                )

    # 4. What the site no longer has: user associations, users, accounts (children first), QOS.
    for name, account in sorted(current.user_assocs):
        if name == SLURM_ROOT or (account == SLURM_ROOT and name not in site.users):
            continue
        if name in site.users and account not in site.users[name]["accounts"]:
            add(
                Step(
                    (
                        "delete",
                        "user",
                        "where",
                        f"name={name}",
                        f"account={account}",
                        f"cluster={cluster}",
                    ),
                    f"remove user {name} from account {account}",
                    removal=True,
                )
            )
    for name in sorted(current.users):
        if name != SLURM_ROOT and name not in site.users:
            add(
                Step(
                    ("delete", "user", "where", f"name={name}"), f"remove user {name}", removal=True
                )
            )
    gone = [a for a in current.accounts if a != SLURM_ROOT and a not in site.accounts]
    for name in sorted(gone, key=lambda a: -_current_depth(current, a)):
        add(
            Step(
                ("delete", "account", "where", f"name={name}"),
                f"remove account {name}",
                removal=True,
            )
        )
    for name in sorted(current.qos):
        if name != KEEP_QOS and name not in site.qos:
            add(
                Step(("delete", "qos", "where", f"name={name}"), f"remove QOS {name}", removal=True)
            )
    return steps


def _current_depth(current: Current, account: str) -> int:
    depth = 0
    while account in current.accounts and account != SLURM_ROOT and depth < 64:
        account = current.accounts[account].get("parent", SLURM_ROOT)
        depth += 1
    return depth


@dataclass
class Outcome:
    applied: list[Step] = field(default_factory=list)
    deferred: list[tuple[Step, str]] = field(default_factory=list)  # refused while jobs run


def apply(steps: list[Step], sacctmgr: Callable[[list[str]], tuple[int, str]]) -> Outcome:
    """Run the plan; a removal Slurm refuses (jobs still active) is deferred, any other refusal
    is an error naming the command and Slurm's answer."""
    outcome = Outcome()
    for step in steps:
        status, said = sacctmgr(["-i", *step.args])
        if status == 0 and "error" not in said.lower():
            outcome.applied.append(step)
        elif step.removal:
            outcome.deferred.append((step, said.strip().splitlines()[-1] if said.strip() else ""))
        else:
            raise site_mod.SiteError(
                f"sacctmgr refused to {step.says} ({' '.join(step.args)}): {said.strip()}"
            )
    return outcome
