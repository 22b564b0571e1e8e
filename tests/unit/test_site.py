"""The site description (slurmlab.site), its accounting plan (slurmlab.accounting) and the
importer (slurmlab.site_import), before anything touches a cluster.

The sacctmgr and scontrol outputs under fixtures/ are what Slurm 24.11 printed on a slurmlab
cluster (tests/unit/fixtures/README.md says how they were made); the importer's are edited
only in their values (node names and counts, as a 64-node site prints them), never in form.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from conftest import REPO

from slurmlab import accounting, facts, site_import
from slurmlab import site as site_mod
from slurmlab import slurm_values as sv
from slurmlab.errors import SlurmlabError
from slurmlab.site import SiteError

FIXTURES = Path(__file__).parent / "fixtures"
DEFAULT = site_mod.load(site_mod.default_site_path())


def site_from(tmp_path: Path, text: str) -> site_mod.Site:
    path = tmp_path / "site.yaml"
    path.write_text(text)
    return site_mod.load(path)


def recorded_sacctmgr(name: str) -> accounting.Runner:
    """sacctmgr show, answered from a recording of a real cluster's answers."""
    answers = json.loads((FIXTURES / "accounting" / f"{name}.json").read_text())
    return lambda args: answers[" ".join(args)]


# ---- values ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "minutes"),
    [("30", 30), ("02:00:00", 120), ("1-00:00:00", 1440), ("1-12", 2160), ("5:30", 6),
     ("UNLIMITED", None), ("2-00:00:00", 2880), ("48:00:00", 2880)],
)  # fmt: skip
def test_slurm_times_read_in_every_form_slurm_takes(text: str, minutes: int | None) -> None:
    assert sv.minutes(text) == minutes


def test_sizes_and_tres_compare_in_one_form() -> None:
    assert sv.size_mb("16G") == sv.size_mb("16384M") == sv.size_mb(16384) == 16384
    assert sv.format_size_mb(sv.size_mb("1.5T")) == "1536G"
    assert sv.tres("mem=65536M,gres/gpu=2") == sv.tres({"gres/gpu": 2, "mem": "64G"})
    assert sv.format_tres(sv.tres("gres/gpu=2,cpu=8")) == "cpu=8,gres/gpu=2"
    with pytest.raises(sv.ValueProblem, match="unknown TRES 'gpus'"):
        sv.tres("gpus=2")


def test_site_yaml_reads_times_and_umasks_as_written() -> None:
    """YAML 1.1 would read 12:00:00 as 43200 and 077 as 63."""
    assert site_mod.yaml_load("t: 12:00:00\nu: 077\nn: 5\n") == {
        "t": "12:00:00",
        "u": "077",
        "n": 5,
    }


# ---- the site file ---------------------------------------------------------------------------


def test_the_default_site_is_a_small_shared_cluster_with_enforcement_on() -> None:
    assert set(DEFAULT.enforce) >= {"associations", "limits", "qos"}
    assert set(DEFAULT.accounts) == {"ml", "research"}
    assert set(DEFAULT.users) == {facts.JOB_USER, "alice"}
    assert DEFAULT.users[facts.JOB_USER]["default_account"] == "ml"
    assert DEFAULT.qos["debug"]["max_tres_per_user"] == {"gres/gpu": 2}
    conf = site_mod.slurm_conf(DEFAULT)
    assert "AccountingStorageEnforce=associations,limits,qos,safe" in conf
    assert "EnforcePartLimits=ALL" in conf
    assert "PreemptType=preempt/partition_prio\nPreemptMode=REQUEUE" in conf
    gpu = next(line for line in conf.splitlines() if line.startswith("PartitionName=gpu "))
    for word in ("Default=YES", "Nodes=ALL", "MaxTime=1-00:00:00", "DefMemPerGPU=8192",
                 "PreemptMode=REQUEUE", "GraceTime=60"):  # fmt: skip
        assert word in gpu.split(), word


def test_the_job_files_ask_for_memory_a_default_node_has() -> None:
    """jobs/*.sbatch and jobs/submit.py ask --mem-per-gpu: within what a node offers per GPU."""
    for job in ("jobs/train_ddp.sbatch", "jobs/train_torchrun.sbatch", "jobs/submit.py"):
        asked = re.search(r"mem[-_]per[-_]gpu\W+([0-9]+[KMGT])", (REPO / job).read_text())
        assert asked, f"{job} asks for no memory per GPU"
        assert sv.size_mb(asked.group(1)) <= DEFAULT.memory_per_gpu_mb, job


def test_a_users_uid_is_stable_and_the_job_user_takes_the_owners() -> None:
    assert DEFAULT.uid("alice") == DEFAULT.uid("alice") >= site_mod.UID_RANGE[0]
    assert site_mod.users_file(DEFAULT) == f"alice {DEFAULT.uid('alice')}\n"


def test_a_partition_of_the_first_nodes_is_a_nodeset_by_feature(tmp_path: Path) -> None:
    text = (
        (site_mod.default_site_path())
        .read_text()
        .replace("  urgent:\n", "  urgent:\n    nodes: 2\n")
    )
    site = site_from(tmp_path, text)
    conf = site_mod.slurm_conf(site)
    assert "NodeSet=slurmlab_urgent Feature=partition_urgent" in conf
    assert "PartitionName=urgent Nodes=slurmlab_urgent" in conf
    features = site_mod.node_features(site, 3)
    assert features == {"node1": ("partition_urgent",), "node2": ("partition_urgent",), "node3": ()}
    assert site_mod.digest(site, 3) != site_mod.digest(site, 2), "features follow the shape"


BAD_SITES = [
    ("enfroce: [qos]\n", "enfroce: unknown key (did you mean 'enforce'?)"),
    ("users:\n  bob: {default_account: nowhere}\n", "users.bob: no account 'nowhere' in accounts"),
    ("users:\n  bob: {qos: [normal]}\n", "users.bob: a user needs a default_account"),
    ("qos:\n  short: {max_wall: soon}\n", "qos.short.max_wall: 'soon': expected a time"),
    ("qos:\n  gpus: {max_tres_per_user: gres/gpu=two}\n", "'gres/gpu=two' needs a whole number"),
    ("accounts:\n  a: {parent: b}\n  b: {parent: a}\n",
     "accounts.a.parent: the account tree has a loop"),
    ("partitions:\n  p: {max_time: '01:00:00', default_time: '02:00:00'}\n",
     "partitions.p.default_time: is longer than its max_time"),
    ("partitions:\n  p: {}\n  q: {}\n", "exactly one partition needs default: true (found 0"),
    ("users:\n  root: {default_account: ml}\n", "users.root: 'root' is a system user"),
    ("memory: {default_per_cpu: 1G, default_per_gpu: 8G}\n", "mutually exclusive in Slurm"),
    ("enforce: [associations]\nusers: {}\n",
     "the job user slurmlab (make shell, slurmlab shell/exec) is not listed"),
    ("nodes: {memory_per_gpu: 3G}\n",
     "memory.default_per_cpu: 2G x 2 CPUs is more than a node has"),
]  # fmt: skip


@pytest.mark.parametrize(("change", "message"), BAD_SITES)
def test_a_bad_site_names_each_problem_and_its_fix(
    tmp_path: Path, change: str, message: str
) -> None:
    """The default site with one section replaced (or a key added) by `change`."""
    base = site_mod.yaml_load(site_mod.default_site_path().read_text())
    base.update(site_mod.yaml_load(change))
    with pytest.raises(SiteError) as err:
        site_mod.from_data(base, tmp_path / "site.yaml")
    assert message in str(err.value)
    assert str(tmp_path / "site.yaml") in str(err.value), "the message names the file"


def test_every_problem_of_a_file_is_listed_at_once(tmp_path: Path) -> None:
    with pytest.raises(SiteError) as err:
        site_from(tmp_path, "enforce: [nothing]\numask: abc\npartitions: {}\n")
    said = str(err.value)
    assert "3 problem(s)" in said
    assert all(key in said for key in ("enforce:", "umask:", "partitions:")), said


def test_an_unparsable_site_file_is_refused_with_the_file_named(tmp_path: Path) -> None:
    with pytest.raises(SiteError, match="is not valid YAML"):
        site_from(tmp_path, "accounts: [\n")
    with pytest.raises(SiteError, match="cannot read the site file"):
        site_mod.load(tmp_path / "missing.yaml")


# ---- the accounting plan ---------------------------------------------------------------------


def test_a_cluster_that_runs_the_site_needs_no_sacctmgr_command() -> None:
    current = accounting.read_current(recorded_sacctmgr("default_site"))
    assert accounting.plan(DEFAULT, current, "slurmlab") == []


def test_a_fresh_cluster_gets_qos_then_accounts_then_users() -> None:
    current = accounting.Current(
        qos={"normal": {"priority": "0", "preempt_mode": "cluster"}},
        accounts={"root": {"fairshare": "1", "qos": "normal", "parent": ""}},
        users={"root": "root"},
    )
    steps = accounting.plan(DEFAULT, current, "slurmlab")
    said = [step.says for step in steps]
    assert said[0] == "add QOS debug"
    assert said.index("add account ml under root") < said.index("add user slurmlab to ml,research")
    add_user = next(s for s in steps if s.says.startswith("add user slurmlab"))
    assert "defaultaccount=ml" in add_user.args
    assert not any(step.removal for step in steps)


def test_moving_between_sites_changes_what_differs_and_removes_what_is_gone() -> None:
    """From the recorded state of a richer site back to the default one."""
    current = accounting.read_current(recorded_sacctmgr("prod_site"))
    steps = accounting.plan(DEFAULT, current, "slurmlab")
    said = [step.says for step in steps]
    removals = [step.says for step in steps if step.removal]
    assert removals == [
        "remove user alice from account physics",
        "remove user slurmlab from account physics",
        "remove account chemistry",
        "remove account physics",
        "remove account sciences",
        "remove QOS high",
        "remove QOS scavenger",
    ]
    assert said.index("user alice: default account research") < said.index(removals[0])
    normal = next(s for s in steps if s.says.startswith("QOS normal:"))
    assert "MaxTRESPerUser=gres/gpu=-1" in normal.args and "Preempt=" in normal.args
    prod = site_mod.load(FIXTURES / "accounting" / "prod_site.yaml")
    assert accounting.plan(prod, current, "slurmlab") == [], "and nothing to do for its own"


def test_a_removal_refused_while_jobs_run_is_deferred_not_an_error() -> None:
    steps = [
        accounting.Step(("add", "qos", "x"), "add QOS x"),
        accounting.Step(("delete", "user", "where", "name=bob"), "remove user bob", removal=True),
    ]

    def sacctmgr(args: list[str]) -> tuple[int, str]:
        if args[1] == "delete":
            return 1, " Error with request: Job(s) active, cancel job(s) before remove\n"
        return 0, " Adding QOS(s)\n"

    outcome = accounting.apply(steps, sacctmgr)
    assert [s.says for s in outcome.applied] == ["add QOS x"]
    assert outcome.deferred == [
        (steps[1], "Error with request: Job(s) active, cancel job(s) before remove")
    ]
    with pytest.raises(SiteError, match="sacctmgr refused to add QOS x"):
        accounting.apply(steps[:1], lambda args: (1, "error: QOS x exists"))


# ---- site import -----------------------------------------------------------------------------

IMPORT = FIXTURES / "site_import"


def test_import_reproduces_the_sites_partitions_qos_and_associations() -> None:
    result = site_import.build(IMPORT)
    data = result.data
    site = site_mod.from_data(data, Path("imported.yaml"))
    assert site.enforce == ("associations", "limits", "qos", "safe")
    assert site.partition_limits == "all" and site.preemption == "qos"
    assert site.priority["weights"] == {
        "fairshare": 100000,
        "qos": 10000,
        "age": 1000,
        "job_size": 100,
    }
    assert (site.cpus_per_gpu, site.memory_per_gpu_mb) == (8, 125000), "64 CPUs, 1000000M, 8 GPUs"
    assert site.memory == {"default_per_cpu": 4096}

    gpu, debug, long = (site.partitions[p] for p in ("gpu", "debug", "long"))
    assert gpu["default"] and gpu["max_time"] == 2 * 1440 and gpu["default_time"] == 240
    assert gpu["default_memory_per_gpu"] == 32768 and gpu["max_nodes"] == 8
    assert gpu["allow_qos"] == ("normal", "high", "scavenger") and gpu.get("nodes") is None
    assert debug["nodes"] == 1, "4 of 64 nodes: the first node of a 4-node cluster"
    assert debug["priority_tier"] == 10 and debug["allow_accounts"] == ("ml", "physics")
    assert long["max_memory_per_node"] == 131072 and long["max_time"] == 7 * 1440

    assert site.qos["high"] == {
        "priority": 1000, "max_wall": 720, "max_tres_per_user": {"cpu": 32, "gres/gpu": 4},
        "max_jobs_per_user": 2, "grp_tres": {"gres/gpu": 8}, "preempt": ("normal", "scavenger"),
        "flags": ("DenyOnLimit",),
    }  # fmt: skip
    assert site.qos["scavenger"]["usage_factor"] == 0.1
    assert site.accounts["physics"] == {
        "parent": "sciences", "fairshare": 60, "grp_tres": {"gres/gpu": 16}, "max_jobs": 50,
    }  # fmt: skip
    me = site.users[facts.JOB_USER]
    assert me["default_account"] == "ml" and me["accounts"] == ("ml", "physics")
    assert me["max_submit"] == 500
    assert "qos" not in me, "it differs by account: each account's own"
    assert any("alice" in line for line in result.dropped), "other users are named as dropped"


def test_import_plans_the_same_accounting_as_the_site_it_came_from() -> None:
    """The recorded cluster ran prod_site.yaml; its import asks for the same tree, less the
    users it leaves out."""
    imported = site_mod.from_data(site_import.build(IMPORT).data, Path("imported.yaml"))
    current = accounting.read_current(recorded_sacctmgr("prod_site"))
    said = [step.says for step in accounting.plan(imported, current, "slurmlab")]
    assert said == ["remove user alice"]


def test_import_works_from_what_an_ordinary_user_can_print(tmp_path: Path) -> None:
    for name in ("config.txt", "partitions.txt", "qos.txt", "assoc.txt"):
        (tmp_path / name).write_text((IMPORT / name).read_text())
    result = site_import.build(tmp_path)
    site = site_mod.from_data(result.data, Path("imported.yaml"))
    assert set(site.accounts) == {"ml", "physics", "chemistry"}, "from assoc and AllowAccounts"
    assert site.users[facts.JOB_USER]["default_account"] == "ml"
    assert any("default account: not said" in line for line in result.mapped)
    assert (site.cpus_per_gpu, site.memory_per_gpu_mb) == (8, 125000), "from partition TRES"


def test_import_writes_a_commented_file_and_never_overwrites(tmp_path: Path) -> None:
    out = tmp_path / "site.yaml"
    assert site_import.main(IMPORT, out, None) == 0
    text = out.read_text()
    assert text.startswith("# Imported by `slurmlab site import")
    assert "#   - partition debug: 4 of the site's 64 nodes" in text
    site_mod.load(out)
    with pytest.raises(SlurmlabError, match="exists: choose another file, or --force"):
        site_import.main(IMPORT, out, None)
    with pytest.raises(SlurmlabError, match=r"holds none of config\.txt"):
        site_import.build(tmp_path)


def test_the_dump_parser_reads_sacctmgr_dump_lines() -> None:
    accounts, users = site_import.parse_dump((IMPORT / "dump.cfg").read_text())
    assert accounts["chemistry"] == {
        "Description": "chemistry", "Organization": "chemistry", "Fairshare": "40",
        "MaxWallDurationPerJob": "2880", "parent": "sciences",
    }  # fmt: skip
    assert [account for account, _ in users["slurmlab"]] == ["ml", "physics"]
