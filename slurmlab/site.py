"""A site's rules: accounts, users, QOS, limits, partitions and memory, in one small file.

slurmlab's default site is slurm/site.yaml; a project names its own with `site: FILE` in
slurmlab.yaml (or `slurmlab up --site FILE`), and `slurmlab site import` writes one from a real
cluster's `scontrol`/`sacctmgr` output. This module reads and checks such a file (every problem
at once, each naming its key and the fix) and renders what the cluster runs from it:

- site/slurm.conf: the part of slurm.conf a site decides (enforcement, memory defaults,
  priority weights, preemption, partitions), included by slurm/slurm.conf; applied live with
  `scontrol reconfigure`;
- site/users, site/features, site/profile.sh: the login users every container creates, which
  nodes each partition holds, the login shells' umask; read by the containers' entrypoint;
- the accounting tree (slurmlab.accounting applies it with sacctmgr);
- what each node offers (CPUs, memory), which needs the nodes to register again.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import re
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from slurmlab import facts, resources
from slurmlab import slurm_values as sv
from slurmlab.errors import SlurmlabError

DEFAULT_SITE = "default"  # `--site default`: slurmlab's own site file
SITE_FILE_NAME = "site.yaml"  # in slurm/
# Users that exist on every container for the system itself (or that Slurm treats specially).
RESERVED_USERS = frozenset(
    {
        "root",
        "slurm",
        "munge",
        "mysql",
        "nobody",
        "daemon",
        "bin",
        "sys",
        "sync",
        "games",
        "man",
        "lp",
        "mail",
        "news",
        "uucp",
        "proxy",
        "www-data",
        "backup",
        "list",
        "irc",
        "_apt",
    }
)
USER_NAME = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
SLURM_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$")
# Site users without a uid get one from their name: stable, far from the uids a host's own users
# and the image's system users have.
UID_RANGE = (20000, 60000)
ENFORCE_WORDS = ("associations", "limits", "qos", "safe", "wckeys", "nojobs", "nosteps")
PREEMPT_MODES = ("off", "cancel", "requeue", "cluster")  # no suspend/gang: they need cgroups
PREEMPTION = {
    "partition_prio": "preempt/partition_prio",
    "qos": "preempt/qos",
    "none": "preempt/none",
}
PRIORITY_WEIGHTS = {
    "fairshare": "PriorityWeightFairshare",
    "qos": "PriorityWeightQOS",
    "age": "PriorityWeightAge",
    "partition": "PriorityWeightPartition",
    "job_size": "PriorityWeightJobSize",
    "assoc": "PriorityWeightAssoc",
}

Values = dict[str, Any]


class SiteError(SlurmlabError):
    """A site file with problems; the message lists each with its key and the fix."""


@dataclass(frozen=True)
class Spec:
    """One setting of an entity: its key in the site file, how its value reads, and its names
    in Slurm (what `sacctmgr ... set` takes and `sacctmgr show ... format=` prints, or the
    slurm.conf partition option)."""

    key: str
    kind: str  # int, float, text, time, seconds, tres, list, enum, bool, size, nodes
    slurm: str = ""
    column: str = ""
    choices: tuple[str, ...] = ()


# Association limits, shared by accounts and users (sacctmgr(1), "GENERAL SPECIFICATIONS FOR
# ASSOCIATION BASED ENTITIES").
ASSOC_SPECS = (
    Spec("fairshare", "int", "Fairshare", "Share"),
    Spec("qos", "list", "QOS", "QOS"),
    Spec("default_qos", "text", "DefaultQOS", "DefaultQOS"),
    Spec("grp_tres", "tres", "GrpTRES", "GrpTRES"),
    Spec("grp_jobs", "int", "GrpJobs", "GrpJobs"),
    Spec("max_jobs", "int", "MaxJobs", "MaxJobs"),
    Spec("max_submit", "int", "MaxSubmitJobs", "MaxSubmit"),
    Spec("max_tres_per_job", "tres", "MaxTRES", "MaxTRES"),
    Spec("max_wall", "time", "MaxWall", "MaxWall"),
)
ACCOUNT_SPECS = (
    Spec("parent", "text"),
    Spec("description", "text"),
    Spec("organization", "text"),
    *ASSOC_SPECS,
)
USER_SPECS = (
    Spec("uid", "int"),
    Spec("default_account", "text"),
    Spec("accounts", "list"),
    *ASSOC_SPECS,
)
QOS_SPECS = (
    Spec("priority", "int", "Priority", "Priority"),
    Spec("max_wall", "time", "MaxWall", "MaxWall"),
    Spec("max_tres_per_user", "tres", "MaxTRESPerUser", "MaxTRESPU"),
    Spec("max_tres_per_job", "tres", "MaxTRESPerJob", "MaxTRES"),
    Spec("max_tres_per_account", "tres", "MaxTRESPerAccount", "MaxTRESPA"),
    Spec("max_jobs_per_user", "int", "MaxJobsPerUser", "MaxJobsPU"),
    Spec("max_submit_per_user", "int", "MaxSubmitJobsPerUser", "MaxSubmitPU"),
    Spec("grp_tres", "tres", "GrpTRES", "GrpTRES"),
    Spec("grp_jobs", "int", "GrpJobs", "GrpJobs"),
    Spec("preempt", "list", "Preempt", "Preempt"),
    Spec("preempt_mode", "enum", "PreemptMode", "PreemptMode", PREEMPT_MODES),
    Spec("grace_time", "seconds", "GraceTime", "GraceTime"),
    Spec("usage_factor", "float", "UsageFactor", "UsageFactor"),
    Spec("flags", "list", "Flags", "Flags"),
)
PARTITION_SPECS = (
    Spec("default", "bool", "Default"),
    Spec("nodes", "nodes", "Nodes"),
    Spec("max_time", "time", "MaxTime"),
    Spec("default_time", "time", "DefaultTime"),
    Spec("max_nodes", "int", "MaxNodes"),
    Spec("min_nodes", "int", "MinNodes"),
    Spec("priority_tier", "int", "PriorityTier"),
    Spec("priority_job_factor", "int", "PriorityJobFactor"),
    Spec("preempt_mode", "enum", "PreemptMode", choices=PREEMPT_MODES),
    Spec("grace_time", "seconds", "GraceTime"),
    Spec("allow_accounts", "list", "AllowAccounts"),
    Spec("deny_accounts", "list", "DenyAccounts"),
    Spec("allow_qos", "list", "AllowQos"),
    Spec("deny_qos", "list", "DenyQos"),
    Spec("qos", "text", "QOS"),
    Spec("default_memory_per_cpu", "size", "DefMemPerCPU"),
    Spec("default_memory_per_gpu", "size", "DefMemPerGPU"),
    Spec("max_memory_per_node", "size", "MaxMemPerNode"),
    Spec("max_memory_per_cpu", "size", "MaxMemPerCPU"),
    Spec("exclusive_user", "bool", "ExclusiveUser"),
)
TOP_KEYS = (
    "enforce",
    "partition_limits",
    "nodes",
    "memory",
    "priority",
    "preemption",
    "umask",
    "accounts",
    "users",
    "qos",
    "partitions",
)
NODE_KEYS = ("cpus_per_gpu", "memory_per_gpu")
MEMORY_KEYS = ("default_per_cpu", "default_per_gpu", "max_per_node")
PRIORITY_KEYS = ("weights", "decay_half_life", "max_age", "favor_small")


@dataclass(frozen=True)
class Site:
    """A checked site description; values in normalised form (minutes, MiB, TRES dicts)."""

    path: Path
    enforce: tuple[str, ...] = ()
    partition_limits: str = "no"
    cpus_per_gpu: int = 2
    memory_per_gpu_mb: int = 16384
    memory: Values = field(default_factory=dict)
    priority: Values = field(default_factory=dict)
    preemption: str = "partition_prio"
    umask: str = "022"
    accounts: dict[str, Values] = field(default_factory=dict)
    users: dict[str, Values] = field(default_factory=dict)
    qos: dict[str, Values] = field(default_factory=dict)
    partitions: dict[str, Values] = field(default_factory=dict)

    @property
    def enforces_associations(self) -> bool:
        return any(w in self.enforce for w in ("associations", "limits", "qos", "safe"))

    def node_memory_mb(self, gpus: int) -> int:
        return self.memory_per_gpu_mb * gpus

    def node_cpus(self, gpus: int) -> int:
        return self.cpus_per_gpu * gpus

    def uid(self, user: str) -> int:
        """The user's uid on every container: as the site gives it, else from the name."""
        given = self.users[user].get("uid")
        if given is not None:
            return int(given)
        low, high = UID_RANGE
        return low + zlib.crc32(user.encode()) % (high - low)


# ---- reading --------------------------------------------------------------------------------


def default_site_path() -> Path:
    return resources.cluster_dir() / "slurm" / SITE_FILE_NAME


class _Checker:
    """Collects every problem of a file, each with the key it is about."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.problems: list[str] = []

    def problem(self, where: str, text: str) -> None:
        self.problems.append(f"{where}: {text}" if where else text)

    def mapping(self, value: object, where: str) -> dict[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.problem(where, f"expected a mapping of settings, got {type(value).__name__}")
            return {}
        return {str(k): v for k, v in value.items()}

    def known_keys(self, data: dict[str, Any], keys: tuple[str, ...], where: str) -> None:
        for key in data:
            if key not in keys:
                close = difflib.get_close_matches(key, keys, n=1)
                hint = f" (did you mean '{close[0]}'?)" if close else ""
                self.problem(
                    f"{where}.{key}" if where else key,
                    f"unknown key{hint}; the keys here are: {', '.join(keys)}",
                )

    def value(self, spec: Spec, raw: object, where: str) -> object:
        """raw read as spec.kind, or None (after noting the problem) when it does not read."""
        if raw is None:
            return None
        try:
            return _READERS[spec.kind](raw, spec)
        except sv.ValueProblem as err:
            self.problem(where, str(err))
            return None

    def entity(self, raw: object, specs: tuple[Spec, ...], where: str) -> Values:
        data = self.mapping(raw, where)
        self.known_keys(data, tuple(s.key for s in specs), where)
        by_key = {s.key: s for s in specs}
        return {
            key: self.value(by_key[key], value, f"{where}.{key}")
            for key, value in data.items()
            if key in by_key and value is not None
        }


def _read_int(raw: object, spec: Spec) -> int:
    if isinstance(raw, bool) or not (
        isinstance(raw, int) or str(raw).strip().lstrip("-").isdigit()
    ):
        raise sv.ValueProblem(f"{raw!r}: expected a whole number")
    value = int(str(raw).strip())
    if value < 0:
        raise sv.ValueProblem(f"{raw!r}: expected a whole number, 0 or more")
    return value


def _read_float(raw: object, spec: Spec) -> float:
    try:
        return float(str(raw))
    except ValueError:
        raise sv.ValueProblem(f"{raw!r}: expected a number such as 1.0") from None


def _read_enum(raw: object, spec: Spec) -> str:
    # YAML 1.1 reads a bare off as False: the one spelling of "off" users will type.
    text = "off" if raw is False else str(raw).strip().lower()
    if text not in spec.choices:
        raise sv.ValueProblem(f"{raw!r}: expected one of {', '.join(spec.choices)}")
    return text


def _read_bool(raw: object, spec: Spec) -> bool:
    if isinstance(raw, bool):
        return raw
    text = str(raw).strip().lower()
    if text in ("yes", "true"):
        return True
    if text in ("no", "false"):
        return False
    raise sv.ValueProblem(f"{raw!r}: expected true or false")


def _read_nodes(raw: object, spec: Spec) -> str | int:
    if str(raw).strip().lower() == "all":
        return "all"
    if isinstance(raw, int) and not isinstance(raw, bool) and raw >= 1:
        return raw
    raise sv.ValueProblem(
        f"{raw!r}: expected all (every node of the cluster) or a count of nodes (the first N)"
    )


def _read_text(raw: object, spec: Spec) -> str:
    return str(raw).strip()


_READERS: dict[str, Callable[[object, Spec], object]] = {
    "int": _read_int,
    "float": _read_float,
    "text": _read_text,
    "time": lambda raw, spec: sv.minutes(raw),
    "seconds": lambda raw, spec: sv.seconds(raw),
    "tres": lambda raw, spec: sv.tres(raw),
    "list": lambda raw, spec: sv.words(raw),
    "enum": _read_enum,
    "bool": _read_bool,
    "size": lambda raw, spec: sv.size_mb(raw),
    "nodes": _read_nodes,
}


def yaml_load(text: str) -> Any:
    """YAML as a site file means it: 12:00:00 is a time, not YAML 1.1's base-60 integer 43200,
    and 077 a umask, not the octal 63 (integers and floats are only the plain decimal forms)."""
    import yaml

    class SiteLoader(yaml.SafeLoader):
        pass

    int_tag, float_tag = "tag:yaml.org,2002:int", "tag:yaml.org,2002:float"
    SiteLoader.yaml_implicit_resolvers = {
        first: [(tag, rx) for tag, rx in resolvers if tag not in (int_tag, float_tag)]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }
    SiteLoader.add_implicit_resolver(
        int_tag, re.compile(r"^[-+]?(?:0|[1-9][0-9]*)$"), list("-+0123456789")
    )
    SiteLoader.add_implicit_resolver(
        float_tag, re.compile(r"^[-+]?[0-9]*\.[0-9]+(?:[eE][-+]?[0-9]+)?$"), list("-+0123456789.")
    )
    return yaml.load(text, Loader=SiteLoader)


def load(path: Path) -> Site:
    """Read and check a site file; SiteError lists every problem found."""
    try:
        import yaml
    except ImportError as err:
        raise SiteError(f"reading {path} needs PyYAML: pip install pyyaml") from err
    try:
        data = yaml_load(path.read_text())
    except OSError as err:
        raise SiteError(f"cannot read the site file {path}: {err.strerror}") from err
    except yaml.YAMLError as err:
        raise SiteError(f"the site file {path} is not valid YAML: {err}") from err
    return from_data(data, path)


def from_data(data: object, path: Path) -> Site:
    check = _Checker(path)
    top = check.mapping(data, "")
    check.known_keys(top, TOP_KEYS, "")

    enforce = sv.words(top.get("enforce"))
    for word in enforce:
        if word not in ENFORCE_WORDS:
            check.problem("enforce", f"'{word}' is not one of {', '.join(ENFORCE_WORDS)}")
    partition_limits = str(top.get("partition_limits", "no")).lower()
    if top.get("partition_limits") is False:  # YAML 1.1: a bare no
        partition_limits = "no"
    if partition_limits not in ("all", "any", "no"):
        check.problem("partition_limits", f"'{partition_limits}' is not one of all, any, no")

    nodes = check.mapping(top.get("nodes"), "nodes")
    check.known_keys(nodes, NODE_KEYS, "nodes")
    cpus_per_gpu = check.value(
        Spec("cpus_per_gpu", "int"), nodes.get("cpus_per_gpu", 2), "nodes.cpus_per_gpu"
    )
    memory_per_gpu = check.value(
        Spec("memory_per_gpu", "size"), nodes.get("memory_per_gpu", "16G"), "nodes.memory_per_gpu"
    )
    if cpus_per_gpu == 0:
        check.problem("nodes.cpus_per_gpu", "a node needs at least one CPU per GPU")
    if memory_per_gpu is not None and memory_per_gpu < 256:
        check.problem("nodes.memory_per_gpu", "give a node at least 256M per GPU")

    memory_raw = check.mapping(top.get("memory"), "memory")
    check.known_keys(memory_raw, MEMORY_KEYS, "memory")
    memory = {
        key: check.value(Spec(key, "size"), value, f"memory.{key}")
        for key, value in memory_raw.items()
        if key in MEMORY_KEYS and value is not None
    }

    priority_raw = check.mapping(top.get("priority"), "priority")
    check.known_keys(priority_raw, PRIORITY_KEYS, "priority")
    weights_raw = check.mapping(priority_raw.get("weights"), "priority.weights")
    check.known_keys(weights_raw, tuple(PRIORITY_WEIGHTS), "priority.weights")
    priority: Values = {
        "weights": {
            k: check.value(Spec(k, "int"), v, f"priority.weights.{k}")
            for k, v in weights_raw.items()
            if k in PRIORITY_WEIGHTS
        }
    }
    for key in ("decay_half_life", "max_age"):
        if priority_raw.get(key) is not None:
            priority[key] = check.value(Spec(key, "time"), priority_raw[key], f"priority.{key}")
    if priority_raw.get("favor_small") is not None:
        priority["favor_small"] = check.value(
            Spec("favor_small", "bool"), priority_raw["favor_small"], "priority.favor_small"
        )

    preemption = str(top.get("preemption", "partition_prio"))
    if preemption not in PREEMPTION:
        check.problem("preemption", f"'{preemption}' is not one of {', '.join(PREEMPTION)}")
    umask = str(top.get("umask", "022")).strip()
    if not re.match(r"^0?[0-7]{3}$", umask):
        check.problem("umask", f"'{umask}' is not a umask such as 022 or 077")

    def entities(key: str, specs: tuple[Spec, ...], names: re.Pattern[str]) -> dict[str, Values]:
        found = {}
        for name, raw in check.mapping(top.get(key), key).items():
            if not names.match(name):
                check.problem(f"{key}.{name}", "not a valid name (letters, digits, _ . -)")
            found[name] = check.entity(raw, specs, f"{key}.{name}")
        return found

    site = Site(
        path=path,
        enforce=enforce,
        partition_limits=partition_limits,
        cpus_per_gpu=cpus_per_gpu or 2,
        memory_per_gpu_mb=memory_per_gpu or 16384,
        memory=memory,
        priority=priority,
        preemption=preemption,
        umask=umask.zfill(4)[-3:],
        accounts=entities("accounts", ACCOUNT_SPECS, SLURM_NAME),
        users=entities("users", USER_SPECS, USER_NAME),
        qos=entities("qos", QOS_SPECS, SLURM_NAME),
        partitions=entities("partitions", PARTITION_SPECS, SLURM_NAME),
    )
    _check_references(site, check)
    if check.problems:
        listed = "\n".join(f"  - {p}" for p in check.problems)
        raise SiteError(f"the site file {path} has {len(check.problems)} problem(s):\n{listed}")
    for name, user in site.users.items():
        user.setdefault("accounts", ())
        if user.get("default_account") and user["default_account"] not in user["accounts"]:
            user["accounts"] = (user["default_account"], *user["accounts"])
        user["accounts"] = tuple(sorted(set(user["accounts"])))
        site.users[name] = user
    return site


def _check_references(site: Site, check: _Checker) -> None:
    """What one part of the file names must exist in another, and the memory must add up."""
    accounts = set(site.accounts) | {"root"}
    qos_names = set(site.qos) | {"normal"}  # Slurm's own default QOS always exists

    if "root" in site.accounts:
        check.problem("accounts.root", "root is Slurm's own top account: leave it out")
    for name, account in site.accounts.items():
        parent = account.get("parent", "root")
        if parent not in accounts:
            check.problem(f"accounts.{name}.parent", f"no account '{parent}' in accounts")
        seen, walk = {name}, parent
        while walk in site.accounts:
            if walk in seen:
                check.problem(f"accounts.{name}.parent", "the account tree has a loop")
                break
            seen.add(walk)
            walk = site.accounts[walk].get("parent", "root")

    for name, user in site.users.items():
        where = f"users.{name}"
        if name in RESERVED_USERS:
            check.problem(
                where, f"'{name}' is a system user of the containers: choose another name"
            )
        default = user.get("default_account")
        member_of = set(user.get("accounts", ()))
        if default is None and not member_of:
            check.problem(where, "a user needs a default_account (an account of accounts)")
        for account in sorted(member_of | ({default} if default else set())):
            if account not in accounts:
                check.problem(where, f"no account '{account}' in accounts: add it there")
        uid = user.get("uid")
        if name == facts.JOB_USER and uid is not None:
            check.problem(
                f"{where}.uid", f"{name} takes the uid of the project's owner: leave uid out"
            )
        elif uid is not None and not UID_RANGE[0] // 20 <= uid < 2**31:
            check.problem(f"{where}.uid", f"{uid}: give an ordinary user's uid (1000 or more)")
    uids: dict[int, str] = {}
    for name in site.users:
        if name == facts.JOB_USER:
            continue
        uid = site.uid(name)
        if uid in uids:
            check.problem(f"users.{name}.uid", f"uid {uid} is also {uids[uid]}'s: give one a uid")
        uids[uid] = name
    if site.enforces_associations and facts.JOB_USER not in site.users:
        check.problem(
            "users",
            f"the job user {facts.JOB_USER} (make shell, slurmlab shell/exec) is not listed, so "
            f"enforce: {','.join(site.enforce)} would refuse every job it submits: add "
            f"{facts.JOB_USER} with a default_account",
        )

    for kind, entries in (("accounts", site.accounts), ("users", site.users)):
        for name, entry in entries.items():
            listed = set(entry.get("qos", ()))
            for qos in sorted(listed - qos_names):
                check.problem(f"{kind}.{name}.qos", f"no QOS '{qos}' in qos: add it there")
            default_qos = entry.get("default_qos")
            if default_qos and default_qos not in qos_names:
                check.problem(f"{kind}.{name}.default_qos", f"no QOS '{default_qos}' in qos")
            elif default_qos and listed and default_qos not in listed:
                check.problem(
                    f"{kind}.{name}.default_qos", f"'{default_qos}' is not in its qos list"
                )
    for name, qos in site.qos.items():
        for other in qos.get("preempt", ()):
            if other not in qos_names:
                check.problem(f"qos.{name}.preempt", f"no QOS '{other}' in qos")

    if not site.partitions:
        check.problem("partitions", "a site needs at least one partition")
    defaults = [name for name, p in site.partitions.items() if p.get("default")]
    if len(defaults) != 1 and site.partitions:
        check.problem(
            "partitions",
            f"exactly one partition needs default: true (found {len(defaults)}: "
            f"{', '.join(defaults) or 'none'})",
        )
    for name, part in site.partitions.items():
        where = f"partitions.{name}"
        if (
            part.get("max_time")
            and part.get("default_time")
            and part["default_time"] > part["max_time"]
        ):
            check.problem(f"{where}.default_time", "is longer than its max_time")
        for key in ("allow_accounts", "deny_accounts"):
            for account in part.get(key, ()):
                if account not in accounts and account.upper() != "ALL":
                    check.problem(f"{where}.{key}", f"no account '{account}' in accounts")
        for key in ("allow_qos", "deny_qos"):
            for qos in part.get(key, ()):
                if qos not in qos_names and qos.upper() != "ALL":
                    check.problem(f"{where}.{key}", f"no QOS '{qos}' in qos")
        mode = part.get("preempt_mode")
        if site.preemption == "none" and mode not in (None, "off"):
            check.problem(
                f"{where}.preempt_mode", "needs preemption: partition_prio or qos (it is none)"
            )
        if part.get("qos") and part["qos"] not in qos_names:
            check.problem(f"{where}.qos", f"no QOS '{part['qos']}' in qos")
        _check_memory(
            site,
            check,
            part.get("default_memory_per_cpu"),
            part.get("default_memory_per_gpu"),
            where,
            "default_memory_per_",
        )
    _check_memory(
        site,
        check,
        site.memory.get("default_per_cpu"),
        site.memory.get("default_per_gpu"),
        "memory",
        "default_per_",
    )


def _check_memory(
    site: Site, check: _Checker, per_cpu: int | None, per_gpu: int | None, where: str, prefix: str
) -> None:
    node = format_node(site)
    if per_cpu and per_gpu:
        check.problem(
            where,
            f"{prefix}cpu and {prefix}gpu are mutually exclusive in Slurm (DefMemPerCPU, "
            "DefMemPerGPU): keep one",
        )
    if per_gpu and per_gpu > site.memory_per_gpu_mb:
        check.problem(f"{where}.{prefix}gpu", f"is more than a node has per GPU ({node})")
    if per_cpu and per_cpu * site.cpus_per_gpu > site.memory_per_gpu_mb:
        check.problem(
            f"{where}.{prefix}cpu",
            f"{sv.format_size_mb(per_cpu)} x {site.cpus_per_gpu} CPUs is more than a node has per "
            f"GPU ({node}): a job on every CPU could never start",
        )


def format_node(site: Site) -> str:
    return f"{site.cpus_per_gpu} CPUs and {sv.format_size_mb(site.memory_per_gpu_mb)} per GPU"


# ---- what the cluster runs ------------------------------------------------------------------


def feature(partition: str) -> str:
    """The node feature that puts a node in a partition that holds only some nodes."""
    return f"partition_{partition}"


def node_features(site: Site, nodes: int) -> dict[str, tuple[str, ...]]:
    """node -> the partition features it carries (for partitions with a node count)."""
    features: dict[str, tuple[str, ...]] = {}
    for k in range(1, nodes + 1):
        features[facts.node_name(k)] = tuple(
            feature(name)
            for name, part in site.partitions.items()
            if isinstance(part.get("nodes"), int) and k <= part["nodes"]
        )
    return features


def _partition_line(name: str, part: Values) -> str:
    words = [f"PartitionName={name}"]
    nodes = part.get("nodes", "all")
    words.append("Nodes=ALL" if nodes == "all" else f"Nodes=slurmlab_{name}")
    for spec in PARTITION_SPECS:
        value = part.get(spec.key)
        if spec.key == "nodes" or value is None:
            continue
        if spec.kind == "bool":
            text = "YES" if value else "NO"
        elif spec.kind == "time":
            text = sv.format_minutes(value)
        elif spec.kind == "list":
            text = ",".join(value)
        elif spec.kind == "enum":
            text = value.upper()
        else:
            text = str(value)
        words.append(f"{spec.slurm}={text}")
    words += ["State=UP", "OverSubscribe=NO"]
    return " ".join(words)


def slurm_conf(site: Site) -> str:
    """The site's part of slurm.conf (slurm/slurm.conf includes it)."""
    lines = [
        f"# Written by slurmlab from {site.path}: edit that file and run `slurmlab up`",
        "# (make up), which applies it with scontrol reconfigure. Do not edit this copy.",
    ]
    if site.enforce:
        lines.append(f"AccountingStorageEnforce={','.join(site.enforce)}")
    lines.append(f"EnforcePartLimits={site.partition_limits.upper()}")
    names = {
        "default_per_cpu": "DefMemPerCPU",
        "default_per_gpu": "DefMemPerGPU",
        "max_per_node": "MaxMemPerNode",
    }
    for key, value in site.memory.items():
        lines.append(f"{names[key]}={value}")
    for key, value in site.priority.get("weights", {}).items():
        lines.append(f"{PRIORITY_WEIGHTS[key]}={value}")
    if "decay_half_life" in site.priority:
        lines.append(f"PriorityDecayHalfLife={sv.format_minutes(site.priority['decay_half_life'])}")
    if "max_age" in site.priority:
        lines.append(f"PriorityMaxAge={sv.format_minutes(site.priority['max_age'])}")
    if site.priority.get("favor_small"):
        lines.append("PriorityFavorSmall=YES")
    lines.append(f"PreemptType={PREEMPTION[site.preemption]}")
    # Preempted jobs are requeued (the trainer resumes them); without preemption Slurm wants OFF.
    lines.append(f"PreemptMode={'OFF' if site.preemption == 'none' else 'REQUEUE'}")
    for name, part in site.partitions.items():
        if isinstance(part.get("nodes"), int):
            lines.append(f"NodeSet=slurmlab_{name} Feature={feature(name)}")
    lines += [_partition_line(name, part) for name, part in site.partitions.items()]
    return "\n".join(lines) + "\n"


def users_file(site: Site) -> str:
    """name uid, one login user per line, for the entrypoint (the job user is not listed: it
    takes the project owner's uid)."""
    rows = [f"{name} {site.uid(name)}" for name in sorted(site.users) if name != facts.JOB_USER]
    return "".join(f"{row}\n" for row in rows)


def rendered(site: Site, nodes: int) -> dict[str, str]:
    """The files of <cluster>/site/ that the containers read, by name."""
    features = node_features(site, nodes)
    return {
        "slurm.conf": slurm_conf(site),
        "users": users_file(site),
        "features": "".join(f"{node} {','.join(f) or '-'}\n" for node, f in features.items()),
        "profile.sh": f"# Written by slurmlab from {site.path}.\numask {site.umask}\n",
    }


def digest(site: Site, nodes: int) -> str:
    """Of everything the site makes the cluster do: its files and its accounting tree."""
    h = hashlib.sha256()
    for name, text in sorted(rendered(site, nodes).items()):
        h.update(name.encode() + b"\0" + text.encode())
    h.update(json.dumps(accounting_tree(site), sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]


def accounting_tree(site: Site) -> Values:
    return {"accounts": site.accounts, "users": site.users, "qos": site.qos}


def write(site: Site, nodes: int, folder: Path) -> bool:
    """Write the rendered files into folder; True when any of them changed."""
    folder.mkdir(parents=True, exist_ok=True)
    changed = False
    for name, text in rendered(site, nodes).items():
        path = folder / name
        if path.is_file() and path.read_text() == text:
            continue
        temp = path.with_name(f".{name}.tmp")
        temp.write_text(text)
        temp.chmod(0o644)
        temp.replace(path)
        changed = True
    return changed


def read_written(folder: Path, name: str) -> str:
    path = folder / name
    return path.read_text() if path.is_file() else ""
