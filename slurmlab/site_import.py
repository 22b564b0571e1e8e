"""slurmlab site import DIR: a site description from what your cluster's own tools print.

On your cluster, as yourself (every command is one an ordinary user may run, but the dump):

    mkdir site && cd site
    scontrol show config > config.txt
    scontrol show partition -o > partitions.txt
    scontrol show node -o > nodes.txt
    sacctmgr -P show qos > qos.txt
    sacctmgr -P show assoc where user=$USER > assoc.txt
    sacctmgr -P show user $USER > user.txt
    sacctmgr dump $(scontrol show config | awk '/^ClusterName/ {print $3}') file=dump.cfg  # admins

then, here: `slurmlab site import site -o site.yaml` and `site: site.yaml` in slurmlab.yaml.
Any of the files may be missing; what each gives is listed below, and the import says what it
took, how it mapped the site's nodes onto this cluster's shape, and what it dropped and why.

  config.txt      enforcement, memory defaults, priority weights, preemption
  partitions.txt  partitions: limits, defaults, tiers, who may use them
  nodes.txt       what a GPU node offers per GPU (else the default partition's TRES)
  qos.txt         every QOS and its limits
  assoc.txt       your associations: accounts, shares, limits, QOS
  user.txt        your default account
  dump.cfg        the whole account tree (an administrator's sacctmgr dump)

Your user becomes slurmlab's job user (slurmlab): `make shell` and `slurmlab exec` submit with
your associations. Other users of a dump are left out (listed), as are settings slurmlab's site
description does not model.
"""

from __future__ import annotations

import re
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from slurmlab import facts
from slurmlab import site as site_mod
from slurmlab import slurm_values as sv
from slurmlab.errors import SlurmlabError

FILES = (
    "config.txt",
    "partitions.txt",
    "nodes.txt",
    "qos.txt",
    "assoc.txt",
    "user.txt",
    "dump.cfg",
)
UNSET = ("", "n/a", "none", "unlimited", "(null)", "infinite")
# The local shape partitions are sized against when they hold only part of the site's nodes.
LOCAL_NODES_FOR_SIZING = 4


@dataclass
class Import:
    """What the files said, mapped onto slurmlab's site description, and the report."""

    data: dict[str, Any] = field(default_factory=dict)
    took: list[str] = field(default_factory=list)
    mapped: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)


def _unset(value: str | None) -> bool:
    return value is None or value.strip().lower() in UNSET


# ---- the formats, as Slurm prints them --------------------------------------------------------


def parse_config(text: str) -> dict[str, str]:
    """`scontrol show config`: "Name = value" lines (scontrol.c _print_config)."""
    values = {}
    for line in text.splitlines():
        match = re.match(r"^(\w+)\s+=\s?(.*)$", line)
        if match:
            values[match.group(1)] = match.group(2).strip()
    return values


def parse_oneliners(text: str) -> list[dict[str, str]]:
    """`scontrol show partition -o` / `show node -o`: one record per line of Name=value words.
    A value may hold '=' (JobDefaults=DefMemPerGPU=8192, split at the first) or spaces
    (Reason=Not responding): a word without '=' continues the previous value."""
    records = []
    for line in text.splitlines():
        if not line.strip():
            continue
        record: dict[str, str] = {}
        key = None
        for word in line.split(" "):
            match = re.match(r"^([A-Za-z][A-Za-z0-9_/:]*)=(.*)$", word)
            if match:
                key = match.group(1)
                record[key] = match.group(2)
            elif key is not None:
                record[key] += " " + word
        records.append(record)
    return records


def parse_table(text: str) -> list[dict[str, str]]:
    """`sacctmgr -P show ...`: a header line, then '|'-separated rows."""
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        return []
    header = lines[0].split("|")
    return [dict(zip(header, line.split("|"), strict=False)) for line in lines[1:]]


def parse_dump(
    text: str,
) -> tuple[dict[str, dict[str, str]], dict[str, list[tuple[str, dict[str, str]]]]]:
    """`sacctmgr dump`: accounts (name -> attributes, with its parent) and users (name ->
    [(account, attributes)]). Lines: `Parent - 'acct'`, `Account - 'name':Key=value:...`,
    `User - 'name':...` (sacctmgr/file_functions.c)."""
    accounts: dict[str, dict[str, str]] = {}
    users: dict[str, list[tuple[str, dict[str, str]]]] = {}
    parent = "root"
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        match = re.match(r"^(Cluster|Parent|Account|User)\s+-\s+'([^']*)'(.*)$", line)
        if not match:
            continue
        kind, name, rest = match.groups()
        attributes = {k: v.strip("'") for k, v in re.findall(r":(\w+)=('[^']*'|[^:]*)", rest)}
        if kind == "Parent":
            parent = name
        elif kind == "Account":
            accounts[name] = {**attributes, "parent": parent}
        elif kind == "User":
            users.setdefault(name, []).append((parent, attributes))
    return accounts, users


# ---- the mapping ----------------------------------------------------------------------------


def _qos_from(rows: list[dict[str, str]], result: Import) -> dict[str, dict[str, Any]]:
    by_column = {s.column: s for s in site_mod.QOS_SPECS if s.column}
    qos: dict[str, dict[str, Any]] = {}
    for row in rows:
        name = row.get("Name", "")
        entry: dict[str, Any] = {}
        for column, value in row.items():
            if column == "Name" or _unset(value):
                continue
            spec = by_column.get(column)
            if spec is None:
                if value.strip() not in ("0", "00:00:00", "1.000000", "cluster"):
                    result.dropped.append(
                        f"QOS {name}: {column}={value} (not part of slurmlab's site description)"
                    )
                continue
            entry[spec.key] = _yaml_value(spec, value)
        for key, default in (
            ("priority", 0),
            ("grace_time", 0),
            ("usage_factor", 1.0),
            ("preempt_mode", "cluster"),
        ):
            if entry.get(key) == default:
                del entry[key]
        qos[name] = entry
    return qos


def _yaml_value(spec: site_mod.Spec, value: str) -> Any:
    """A value as the site file writes it: times D-HH:MM:SS, sizes 16G, lists as lists."""
    if spec.kind == "time":
        return sv.format_minutes(sv.minutes(value))
    if spec.kind == "tres":
        return sv.format_tres(sv.tres(value))
    if spec.kind == "list":
        return list(sv.words(value))
    if spec.kind in ("int", "seconds"):
        return sv.seconds(value) if spec.kind == "seconds" else int(value)
    if spec.kind == "float":
        return float(value)
    if spec.kind == "enum":
        return value.lower()
    if spec.kind == "size":
        return sv.format_size_mb(sv.size_mb(value))
    return value


def _assoc_settings(
    attributes: dict[str, str], columns: dict[str, str], where: str, result: Import
) -> dict[str, Any]:
    """An association's limits from sacctmgr's columns (show assoc) or dump attributes."""
    by_key = {s.key: s for s in site_mod.ASSOC_SPECS}
    settings: dict[str, Any] = {}
    for name, value in attributes.items():
        key = columns.get(name)
        if key is None:
            if not _unset(value) and name not in IGNORED_ASSOC:
                result.dropped.append(
                    f"{where}: {name}={value} (not part of slurmlab's site description)"
                )
            continue
        if _unset(value) or (key == "fairshare" and value.lower() == "parent"):
            continue
        settings[key] = _yaml_value(by_key[key], value)
    if settings.get("fairshare") == 1:
        del settings["fairshare"]
    return settings


# sacctmgr show assoc columns -> site keys, and sacctmgr dump attribute names -> site keys.
ASSOC_COLUMNS = {s.column: s.key for s in site_mod.ASSOC_SPECS} | {"Def QOS": "default_qos"}
DUMP_ATTRIBUTES = {
    "Fairshare": "fairshare",
    "QOS": "qos",
    "DefaultQOS": "default_qos",
    "GrpTRES": "grp_tres",
    "GrpJobs": "grp_jobs",
    "MaxJobs": "max_jobs",
    "MaxSubmitJobs": "max_submit",
    "MaxTRESPerJob": "max_tres_per_job",
    "MaxWallDurationPerJob": "max_wall",
}
IGNORED_ASSOC = {
    "Cluster",
    "Account",
    "User",
    "Partition",
    "Description",
    "Organization",
    "DefaultAccount",
    "AdminLevel",
    "parent",
    "ParentName",
    "Priority",
}


def _partitions_from(records: list[dict[str, str]], result: Import) -> dict[str, dict[str, Any]]:
    specs = {s.slurm: s for s in site_mod.PARTITION_SPECS}
    biggest = max((int(r.get("TotalNodes", "0") or 0) for r in records), default=0)
    partitions: dict[str, dict[str, Any]] = {}
    for record in records:
        name = record.get("PartitionName", "")
        part: dict[str, Any] = {}
        for key, value in record.items():
            if key == "JobDefaults":
                for item in value.split(","):
                    k, _, v = item.partition("=")
                    if k in ("DefMemPerGPU", "DefMemPerCPU") and not _unset(v):
                        part[specs[k].key] = _yaml_value(specs[k], v)
                continue
            spec = specs.get(key)
            if spec is None or spec.key == "nodes" or _unset(value):
                continue
            if spec.kind == "bool":
                if value.upper() == "YES":
                    part[spec.key] = True
            elif spec.kind == "list":
                if value.upper() != "ALL":
                    part[spec.key] = list(sv.words(value))
            elif spec.kind == "enum":
                modes = value.lower().split(",")
                if modes[0] in spec.choices:
                    part[spec.key] = modes[0]
                else:
                    part[spec.key] = "requeue"
                    result.mapped.append(
                        f"partition {name}: PreemptMode={value} -> requeue (suspend and gang "
                        "need cgroups, which these containers cannot have)"
                    )
            elif spec.kind == "int" and value in ("0",) and spec.key in ("min_nodes",):
                continue
            else:
                part[spec.key] = _yaml_value(spec, value)
        if part.get("priority_job_factor") == 1:
            del part["priority_job_factor"]
        if part.get("grace_time") == 0:
            del part["grace_time"]
        total = int(record.get("TotalNodes", "0") or 0)
        if biggest and total < biggest:
            local = max(1, round(LOCAL_NODES_FOR_SIZING * total / biggest))
            part["nodes"] = local
            result.mapped.append(
                f"partition {name}: {total} of the site's {biggest} nodes "
                f"({record.get('Nodes', '')}) "
                f"-> the first {local} node(s) here"
            )
        else:
            result.mapped.append(
                f"partition {name}: {total} nodes ({record.get('Nodes', '')}) -> every node here "
                "(the cluster's shape decides how many)"
            )
        for key in ("Hidden", "RootOnly", "ReqResv", "LLN", "OverSubscribe", "State"):
            value = record.get(key, "")
            if value and value.upper() not in ("NO", "UP", "EXCLUSIVE"):
                result.dropped.append(f"partition {name}: {key}={value} (not modelled)")
        partitions[name] = part
    return partitions


def _node_offer(
    nodes: list[dict[str, str]], partitions: list[dict[str, str]], result: Import
) -> dict[str, Any]:
    """CPUs and memory per GPU, from the most common GPU node (else the default partition)."""
    shapes: Counter[tuple[int, int, int]] = Counter()
    for node in nodes:
        gpus = sum(
            int(m.group(1)) for m in re.finditer(r"gpu(?::[^:,()]+)?:(\d+)", node.get("Gres", ""))
        )
        if gpus and node.get("CPUTot") and node.get("RealMemory"):
            shapes[(gpus, int(node["CPUTot"]), int(node["RealMemory"]))] += 1
    source = ""
    if shapes:
        (gpus, cpus, memory), count = shapes.most_common(1)[0]
        source = f"{count} node(s) with {gpus} GPUs, {cpus} CPUs and {sv.format_size_mb(memory)}"
    else:
        default = next(
            (p for p in partitions if p.get("Default") == "YES"),
            partitions[0] if partitions else {},
        )
        counts = (
            sv.tres(re.sub(r"gres/gpu:[^=,]+=", "gres/gpu=", default.get("TRES", "")))
            if default.get("TRES")
            else {}
        )
        gpus, cpus, memory = counts.get("gres/gpu", 0), counts.get("cpu", 0), counts.get("mem", 0)
        if gpus:
            source = f"partition {default.get('PartitionName')}'s TRES ({default.get('TRES')})"
    if not source:
        result.dropped.append(
            "nodes: no GPU node found (nodes.txt, partition TRES): slurmlab's defaults kept"
        )
        return {}
    offer = {
        "cpus_per_gpu": max(1, cpus // gpus),
        "memory_per_gpu": sv.format_size_mb(memory // gpus),
    }
    result.mapped.append(
        f"nodes: {source} -> {offer['cpus_per_gpu']} CPUs and {offer['memory_per_gpu']} per GPU "
        "here (the shape sets the GPUs per node)"
    )
    return offer


def _config_from(config: dict[str, str], result: Import) -> dict[str, Any]:
    data: dict[str, Any] = {}
    enforce = config.get("AccountingStorageEnforce", "")
    data["enforce"] = [w for w in sv.words(enforce.lower()) if w in site_mod.ENFORCE_WORDS]
    limits = config.get("EnforcePartLimits", "NO").lower()
    data["partition_limits"] = limits if limits in ("all", "any", "no") else "no"
    memory = {}
    for name, key in (
        ("DefMemPerCPU", "default_per_cpu"),
        ("DefMemPerGPU", "default_per_gpu"),
        ("MaxMemPerNode", "max_per_node"),
    ):
        value = config.get(name)
        if not _unset(value) and value not in ("0",):
            memory[key] = sv.format_size_mb(int(value))
    if not _unset(config.get("DefMemPerNode")):
        result.dropped.append(
            f"DefMemPerNode={config['DefMemPerNode']} (whole-node memory: slurmlab schedules "
            "per CPU or GPU)"
        )
    if memory:
        data["memory"] = memory
    weights = {}
    for key, name in site_mod.PRIORITY_WEIGHTS.items():
        value = config.get(name) or config.get(name.replace("Fairshare", "FairShare"))
        if value and value.isdigit() and int(value):
            weights[key] = int(value)
    priority: dict[str, Any] = {}
    if weights:
        priority["weights"] = weights
    for name, key in (("PriorityDecayHalfLife", "decay_half_life"), ("PriorityMaxAge", "max_age")):
        if not _unset(config.get(name)):
            priority[key] = sv.format_minutes(sv.minutes(config[name]))
    if config.get("PriorityFavorSmall", "").upper() == "YES":
        priority["favor_small"] = True
    if priority:
        data["priority"] = priority
    if config.get("PriorityType") and "multifactor" not in config["PriorityType"]:
        result.mapped.append(
            f"PriorityType={config['PriorityType']} -> priority/multifactor (fair-share needs it)"
        )
    preempt = config.get("PreemptType", "preempt/none").removeprefix("preempt/")
    data["preemption"] = preempt if preempt in site_mod.PREEMPTION else "none"
    if config.get("SLURM_VERSION"):
        result.took.append(
            f"the site runs Slurm {config['SLURM_VERSION']} (this cluster: Debian's 24.11)"
        )
    return data


def build(folder: Path, user: str | None = None) -> Import:
    """The site description the files of `folder` give, with the report of how."""
    texts = {name: (folder / name).read_text() for name in FILES if (folder / name).is_file()}
    if not texts:
        raise SlurmlabError(
            f"{folder} holds none of {', '.join(FILES)}: produce them on your cluster with the "
            "commands in `slurmlab site import --help`"
        )
    result = Import()
    result.took = [f"read {', '.join(texts)}"]
    data = result.data
    config = parse_config(texts.get("config.txt", ""))
    if config:
        data.update(_config_from(config, result))
    part_records = parse_oneliners(texts.get("partitions.txt", ""))
    node_records = parse_oneliners(texts.get("nodes.txt", ""))
    offer = _node_offer(node_records, part_records, result)
    if offer:
        data["nodes"] = offer

    qos = _qos_from(parse_table(texts.get("qos.txt", "")), result)
    dump_accounts, dump_users = parse_dump(texts.get("dump.cfg", ""))
    assoc_rows = parse_table(texts.get("assoc.txt", ""))
    user_rows = parse_table(texts.get("user.txt", ""))
    if user is None:
        names = {r.get("User") for r in assoc_rows if r.get("User")} | {
            r.get("User") for r in user_rows
        }
        names.discard(None)
        user = sorted(names)[0] if len(names) == 1 else None  # type: ignore[arg-type]
        if user is None and dump_users:
            raise SlurmlabError("dump.cfg lists many users: say which one you are (--user NAME)")

    accounts: dict[str, dict[str, Any]] = {}
    for name, attributes in dump_accounts.items():
        entry = _assoc_settings(attributes, DUMP_ATTRIBUTES, f"account {name}", result)
        if attributes["parent"] != "root":
            entry["parent"] = attributes["parent"]
        for key in ("Description", "Organization"):
            if attributes.get(key) and attributes[key] != name:
                entry[key.lower()] = attributes[key]
        accounts[name] = entry

    me: dict[str, Any] = {}
    member_of: list[str] = []
    # Each association's own settings; the site gives a user one set for all its accounts.
    per_account: dict[str, dict[str, Any]] = {}
    for row in assoc_rows:
        if row.get("User") != user:
            continue
        account = row.get("Account", "")
        if row.get("Partition"):
            result.mapped.append(
                f"your association with {account} in partition {row['Partition']} -> one for "
                "every partition"
            )
        member_of.append(account)
        where = f"your association with {account}"
        per_account[account] = _assoc_settings(row, ASSOC_COLUMNS, where, result)
    for account, attributes in dump_users.get(user or "", []):
        member_of.append(account)
        settings = _assoc_settings(attributes, DUMP_ATTRIBUTES, f"user {user}", result)
        per_account.setdefault(account, settings)
        if attributes.get("DefaultAccount"):
            me.setdefault("default_account", attributes["DefaultAccount"])
    for key in sorted({k for settings in per_account.values() for k in settings}):
        values = [settings.get(key) for settings in per_account.values()]
        if all(v == values[0] for v in values):
            me[key] = values[0]
        else:
            said = ", ".join(f"{a}: {v}" for a, v in zip(per_account, values, strict=True))
            result.mapped.append(
                f"your {key} differs by account ({said}) -> each account's own (what the "
                "associations inherit)"
            )
    for row in user_rows:
        if row.get("User") == user and row.get("Def Acct"):
            me["default_account"] = row["Def Acct"]
    others = sorted(set(dump_users) - {user, "root"})
    if others:
        result.dropped.append(
            f"{len(others)} other user(s) of dump.cfg ({', '.join(others[:5])}"
            f"{', ...' if len(others) > 5 else ''}): "
            "add those you want to try jobs as under users:"
        )
    member_of = sorted(set(member_of) - {"root"})
    for account in member_of:
        if account not in accounts:
            accounts[account] = {}
            result.mapped.append(
                f"account {account}: your association names it -> an account under root"
            )
    if user is not None and member_of:
        me["accounts"] = member_of
        if "default_account" not in me:
            me["default_account"] = member_of[0]
            result.mapped.append(f"your default account: not said (user.txt) -> {member_of[0]}")
        result.mapped.append(
            f"your user {user} -> {facts.JOB_USER}, the job user (make shell, slurmlab exec)"
        )
    elif user is not None:
        result.dropped.append(f"user {user}: no association found in assoc.txt or dump.cfg")

    partitions = _partitions_from(part_records, result)
    for name, part in partitions.items():
        for key in ("allow_accounts", "deny_accounts"):
            for account in part.get(key, []):
                if account not in accounts:
                    accounts[account] = {}
                    result.mapped.append(
                        f"account {account}: partition {name}'s {key} names it -> an account "
                        "under root"
                    )
    for entry in [*accounts.values(), me, *partitions.values()]:
        for key in ("qos", "allow_qos", "deny_qos"):
            for name in entry.get(key, []):
                if name not in qos and name != "normal":
                    qos[name] = {}
                    result.dropped.append(
                        f"QOS {name}: named but not in qos.txt: its limits are unknown"
                    )
        default_qos = entry.get("default_qos")
        if default_qos and default_qos not in qos and default_qos != "normal":
            qos[default_qos] = {}

    order = {key: n for n, key in enumerate(site_mod.TOP_KEYS)}
    result.data = dict(sorted(data.items(), key=lambda item: order.get(item[0], 99)))
    data = result.data
    data["accounts"] = accounts
    data["users"] = {facts.JOB_USER: me} if me else {}
    data["qos"] = qos
    data["partitions"] = partitions
    return result


def render(result: Import, folder: Path) -> str:
    import yaml

    header = [
        f"# Imported by `slurmlab site import {folder}`: your cluster's rules, mapped onto "
        "slurmlab."
    ]
    for title, lines in (
        ("took", result.took),
        ("mapped", result.mapped),
        ("dropped", result.dropped),
    ):
        if lines:
            header.append(f"# {title}:")
            header += [f"#   - {line}" for line in lines]
    body = yaml.safe_dump(result.data, sort_keys=False, default_flow_style=None, width=100)
    return "\n".join(header) + "\n" + body


def main(folder: Path, output: Path | None, user: str | None, force: bool = False) -> int:
    if not folder.is_dir():
        raise SlurmlabError(
            f"{folder}: no such folder (the files of `slurmlab site import --help`)"
        )
    if output is not None and output.exists() and not force:
        raise SlurmlabError(f"{output} exists: choose another file, or --force to replace it")
    result = build(folder, user)
    text = render(result, folder)
    # What the import writes must be a site slurmlab accepts: check it as `up` would.
    site_mod.from_data(site_mod.yaml_load(text), output or Path("<stdout>"))
    if output is None:
        sys.stdout.write(text)
    else:
        output.write_text(text)
        print(
            f"== wrote {output}: use it with `site: {output.name}` in slurmlab.yaml, or "
            f"slurmlab up --site {output}",
            file=sys.stderr,
        )
    for title, lines in (("mapped", result.mapped), ("dropped", result.dropped)):
        for line in lines:
            print(f"   {title}: {line}", file=sys.stderr)
    return 0
