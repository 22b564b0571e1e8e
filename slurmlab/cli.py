"""The slurmlab command: a real Slurm cluster for the project you stand in.

    slurmlab up [--nodes N] [--gpus-per-node G] [--gpu-mode emulated|nvidia]
    slurmlab exec -- sbatch --wait jobs/train.sbatch     # on the login node, as the job user
    slurmlab shell [--user NAME] | status | logs [JOB] | scale --nodes M | down | clean
    slurmlab token [--user NAME] [--lifespan S]          # for the REST API (slurmrestd)
    slurmlab up --site FILE                               # the site's rules (slurmlab.site)
    slurmlab site check [--site FILE] | site import DIR [-o FILE]
    slurmlab build | config | env | list

Every command takes --project DIR (default: found from the current folder, see
slurmlab.project), --config FILE (default: <project>/slurmlab.yaml) and --name NAME (default:
from the config, else from the folder). Errors say what to fix and exit with status 2 before
anything is changed; `exec` exits with its command's status.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from slurmlab import __version__, facts, site_import
from slurmlab.cluster import Cluster, list_clusters
from slurmlab.config import ShapeRequest, Style
from slurmlab.errors import SlurmlabError
from slurmlab.project import open_project

# slurmlab's own Makefile sets this, so that errors name make's variables (make up NODES=2).
STYLE_VARIABLE = "SLURMLAB_COMMAND_STYLE"


def which_cluster(default: object = None) -> argparse.ArgumentParser:
    """--project, --config, --name. A subcommand's copy (`site --name N check`) takes
    default=SUPPRESS, so that it keeps what was given before the subcommand's name."""
    common = argparse.ArgumentParser(add_help=False)
    where = common.add_argument_group("which cluster")
    where.add_argument(
        "--project",
        type=Path,
        metavar="DIR",
        default=default,
        help="the project folder (default: found from the current folder)",
    )
    where.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        default=default,
        help="the project's config (default: <project>/slurmlab.yaml)",
    )
    where.add_argument(
        "--name", default=default, help="the cluster's name (default: from the config or folder)"
    )
    return common


def parser() -> argparse.ArgumentParser:
    common = which_cluster()

    shape = argparse.ArgumentParser(add_help=False)
    sizes = shape.add_argument_group(
        "the cluster's shape (default: slurmlab.yaml, else the "
        "cluster's current shape, else 4 x 1 emulated)"
    )
    # Taken as text and checked by slurmlab.config, whose errors name the fix.
    sizes.add_argument(
        "--nodes", metavar="N", help=f"compute nodes node1..nodeN (1-{facts.max_nodes()})"
    )
    sizes.add_argument(
        "--gpus-per-node", metavar="G", help=f"GPUs per node (1-{facts.MAX_GPUS_PER_NODE})"
    )
    sizes.add_argument(
        "--gpu-mode",
        metavar="MODE",
        help=f"{' or '.join(facts.GPU_MODES)}: emulated devices, or the host's GPUs",
    )

    top = argparse.ArgumentParser(
        prog="slurmlab",
        description="A real Slurm cluster on one machine, for the project you stand in.",
    )
    top.add_argument("--version", action="version", version=f"slurmlab {__version__}")
    commands = top.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help: str, *parents: argparse.ArgumentParser) -> argparse.ArgumentParser:
        return commands.add_parser(name, help=help, description=help, parents=[common, *parents])

    site_option = argparse.ArgumentParser(add_help=False)
    site_option.add_argument(
        "--site",
        metavar="FILE",
        help="the site's rules (accounts, users, QOS, partitions, memory): a site description, "
        "or default for slurmlab's own (default: site: in slurmlab.yaml, else the cluster's "
        "current site)",
    )
    user_option = argparse.ArgumentParser(add_help=False)
    user_option.add_argument(
        "--user",
        metavar="NAME",
        help=f"log in as this user of the cluster's site (default: {facts.JOB_USER}, the job user)",
    )

    command(
        "up",
        "build what is missing, start the cluster (or reshape it, or apply a changed site) and "
        "wait for its nodes",
        shape,
        site_option,
    )
    command(
        "scale", "add or remove nodes of the running cluster; jobs and accounting are kept", shape
    )
    command("down", "stop the cluster (state, accounting, secrets and shared files are kept)")
    command(
        "clean",
        "stop the cluster and delete all its state: accounting, job state, "
        "secrets, shared files (the project's own files are not touched)",
    )
    command("status", "nodes, queue and recent jobs")
    command("shell", "a login shell on the login node as the job user, in the project", user_option)
    run = command(
        "exec",
        "run one command on the login node as the job user, in the project "
        "folder; exits with its status",
        user_option,
    )
    run.add_argument("argv", nargs=argparse.REMAINDER, metavar="-- COMMAND ...")
    token = command(
        "token",
        "shell lines with a REST API token for a user of the site and the API's address: "
        'eval "$(slurmlab token)"',
    )
    token.add_argument(
        "--user",
        metavar="NAME",
        help=f"the user the token acts as (default: {facts.JOB_USER}, the job user)",
    )
    token.add_argument("--lifespan", metavar="S", help="seconds until it expires (default: 1800)")
    logs = command("logs", "follow a job's output, or the cluster daemons' logs")
    logs.add_argument("job", nargs="?", help="a job id (default: the daemons' logs)")
    logs.add_argument(
        "--no-follow",
        dest="follow",
        action="store_false",
        help="print what is there and exit (CI), instead of following",
    )
    command("build", "build the cluster's images (cluster image, the project's dependencies)")
    command("config", "print the Compose configuration `up` would start; changes nothing", shape)
    command("env", 'shell lines that point docker compose at the cluster: eval "$(slurmlab env)"')
    site = command("site", "the site's rules: check a site description, or import your cluster's")
    site_commands = site.add_subparsers(dest="site_command", required=True, metavar="SITE_COMMAND")
    check = site_commands.add_parser(
        "check",
        help="check a site description and print what the cluster would run from it",
        description="check a site description (every problem at once) and print the slurm.conf "
        "part and the users it gives; with a running cluster, also what `up` would change",
        parents=[which_cluster(argparse.SUPPRESS), site_option],
    )
    check.set_defaults(site_command="check")
    importer = site_commands.add_parser(
        "import",
        help="write a site description from your cluster's scontrol/sacctmgr output",
        description=site_import.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    importer.add_argument("folder", type=Path, metavar="DIR", help="the folder of those files")
    importer.add_argument(
        "-o", "--output", type=Path, metavar="FILE", help="write it here (default: stdout)"
    )
    importer.add_argument(
        "--user",
        metavar="NAME",
        help="your user name on that cluster (default: the one assoc.txt names); its "
        f"associations become those of {facts.JOB_USER}, the job user",
    )
    importer.add_argument("--force", action="store_true", help="overwrite FILE if it exists")
    commands.add_parser(
        "list",
        help="every slurmlab cluster on this host",
        description="every slurmlab cluster on this host",
    )
    return top


def run(args: argparse.Namespace, style: Style) -> int:
    if args.command == "list":
        return list_clusters()
    if args.command == "site" and args.site_command == "import":
        return site_import.main(args.folder, args.output, args.user, args.force)
    project = open_project(Path.cwd(), args.project, args.config, args.name)
    cluster = Cluster(project, style)
    request = ShapeRequest(
        nodes=getattr(args, "nodes", None),
        gpus_per_node=getattr(args, "gpus_per_node", None),
        gpu_mode=getattr(args, "gpu_mode", None),
    )
    match args.command:
        case "up":
            return cluster.up(request, args.site)
        case "scale":
            return cluster.scale(request)
        case "config":
            return cluster.print_config(request)
        case "down":
            return cluster.down()
        case "clean":
            return cluster.clean()
        case "status":
            return cluster.status()
        case "shell":
            return cluster.shell(Path.cwd(), args.user)
        case "exec":
            argv = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
            return cluster.exec(argv, Path.cwd(), args.user)
        case "site":
            return cluster.check_site(args.site)
        case "token":
            return cluster.token(args.user, args.lifespan)
        case "logs":
            return cluster.logs(args.job, follow=args.follow)
        case "build":
            print(f"== cluster {cluster.name} runs {cluster.build()}")
            return 0
        case "env":
            return cluster.print_env()
    raise AssertionError(args.command)


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    style = Style(make=os.environ.get(STYLE_VARIABLE) == "make")
    try:
        return run(args, style)
    except SlurmlabError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
