"""The slurmlab CLI's checks, before anything touches Docker: slurmlab.yaml, the shape and where
each setting comes from, a project's requirement files, and what a project folder becomes."""

from __future__ import annotations

import dataclasses
import re
import subprocess
from pathlib import Path

import pytest
from conftest import REPO

from slurmlab import deps, docker, facts, images, resources, state
from slurmlab import site as site_mod
from slurmlab.cli import parser
from slurmlab.cluster import Cluster, Target
from slurmlab.config import ProjectConfig, ShapeRequest, Style, load_config, resolve_shape
from slurmlab.errors import SlurmlabError
from slurmlab.project import check_mount, default_name, find_root, open_project

CLI, MAKE = Style(make=False), Style(make=True)
DEFAULT_SITE = site_mod.load(site_mod.default_site_path())


def config_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "slurmlab.yaml"
    path.write_text(text)
    return path


# ---- slurmlab.yaml -------------------------------------------------------------------------


def test_every_key_loads(tmp_path: Path) -> None:
    path = config_file(
        tmp_path,
        "name: my-proj\nnodes: 2\ngpus_per_node: 2\ngpu_mode: nvidia\nrequirements: r.txt\n",
    )
    assert load_config(path) == ProjectConfig(
        path, "my-proj", 2, 2, "nvidia", stack=None, requirements="r.txt"
    )


def test_an_empty_file_sets_nothing(tmp_path: Path) -> None:
    assert load_config(config_file(tmp_path, "# nothing yet\n")) == ProjectConfig(
        tmp_path / "slurmlab.yaml"
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("nodse: 2\n", "unknown key 'nodse' (did you mean 'nodes'?); the keys are: name, nodes"),
        ("- nodes: 2\n", "expected a mapping of settings"),
        ("nodes: two\n", "nodes: two in {path}: expected a whole number"),
        ("nodes: true\n", "nodes: True in {path}: expected a whole number"),
        ("gpu_mode: cuda\n", "gpu_mode: cuda in {path}: expected one of emulated, nvidia"),
        ("requirements: true\n", "name the file, or false for none"),
        ("requirements: [a.txt]\n", "expected a file of the project"),
        ("name: My Project\n", "a cluster name is 1 to 63 lowercase letters"),
        ("nodes: [\n", "is not valid YAML"),
    ],
)
def test_a_bad_config_names_the_key_and_the_fix(tmp_path: Path, text: str, message: str) -> None:
    path = config_file(tmp_path, text)
    with pytest.raises(SlurmlabError) as err:
        load_config(path)
    assert message.format(path=path) in str(err.value)
    assert err.value.exit_code == 2


# ---- the shape -----------------------------------------------------------------------------


def no_gpus() -> int:
    raise AssertionError("emulated GPUs never ask the host")


def test_each_setting_comes_from_the_first_place_that_gives_it(tmp_path: Path) -> None:
    config = ProjectConfig(tmp_path / "slurmlab.yaml", nodes=3)
    recorded = state.Recorded(nodes=5, gpus_per_node=2, gpu_mode="emulated")
    # the command line, then slurmlab.yaml, then the recorded shape, then .env
    shape = resolve_shape(ShapeRequest(nodes="6"), config, recorded, CLI, no_gpus)
    assert (shape.nodes, shape.gpus_per_node) == (6, 2)
    assert resolve_shape(ShapeRequest(), config, recorded, CLI, no_gpus).nodes == 3
    assert resolve_shape(ShapeRequest(), ProjectConfig(), recorded, CLI, no_gpus).nodes == 5
    default = resolve_shape(ShapeRequest(), ProjectConfig(), state.Recorded(), CLI, no_gpus)
    env = facts.env_defaults()
    assert (default.nodes, default.gpus_per_node, default.gpu_mode) == (
        int(env["SLURMLAB_NODES"]),
        int(env["SLURMLAB_GPUS_PER_NODE"]),
        env["SLURMLAB_GPU_MODE"],
    )


@pytest.mark.parametrize(
    ("request_", "style", "message"),
    [
        (ShapeRequest(nodes="0"), MAKE, "NODES=0: a cluster has 1 to 16 nodes"),
        (ShapeRequest(nodes="0"), CLI, "--nodes 0: a cluster has 1 to 16 nodes"),
        (ShapeRequest(nodes="two"), CLI, "--nodes two: a cluster has 1 to 16 nodes"),
        (ShapeRequest(nodes="17"), CLI, "--nodes 17: a cluster has 1 to 16 nodes"),
        (ShapeRequest(gpus_per_node="9"), MAKE, "GPUS_PER_NODE=9: a node has 1 to 8 GPUs"),
        (ShapeRequest(gpus_per_node="0"), CLI, "--gpus-per-node 0: a node has 1 to 8 GPUs"),
        (ShapeRequest(gpu_mode="cuda"), CLI, "--gpu-mode cuda: the GPU mode is one of"),
    ],
)
def test_a_shape_out_of_range_is_refused_as_the_user_wrote_it(
    request_: ShapeRequest, style: Style, message: str
) -> None:
    with pytest.raises(SlurmlabError, match=re.escape(message)):
        resolve_shape(request_, ProjectConfig(), state.Recorded(), style, no_gpus)


def test_a_shape_from_the_config_file_is_named_with_its_file(tmp_path: Path) -> None:
    path = config_file(tmp_path, "nodes: 0\n")
    with pytest.raises(SlurmlabError, match=re.escape(f"nodes: 0 in {path}: a cluster has 1")):
        resolve_shape(ShapeRequest(), load_config(path), state.Recorded(), CLI, no_gpus)


def test_the_node_bound_is_the_compose_files_node_services_and_reaches_slurm() -> None:
    """The compose file's node services are the one bound: the CLI counts them and hands the
    count to every container (SLURMLAB_MAX_NODES), whose entrypoint writes MaxNodeCount into the
    file slurm.conf includes; slurm.conf itself holds no count."""
    compose = (REPO / "docker-compose.yml").read_text()
    assert facts.max_nodes() == len(re.findall(r"^  node\d+:", compose, re.M)) == 16
    assert "SLURMLAB_MAX_NODES: ${SLURMLAB_MAX_NODES" in compose
    conf = (REPO / "slurm" / "slurm.conf").read_text()
    assert not re.search(r"^MaxNodeCount=", conf, re.M)
    included = re.search(r"^Include (\S+)$", conf, re.M)
    assert included
    entrypoint = (REPO / "images" / "runtime" / "entrypoint.sh").read_text()
    assert (
        "MaxNodeCount=%s" in entrypoint
        and included.group(1).replace("/etc/slurm", "${SLURM_ETC}") in entrypoint
    )


@pytest.mark.parametrize(
    ("style", "nodes", "gpus", "host", "message"),
    [
        (CLI, "1", "1", 0, "--gpu-mode nvidia but this host has no NVIDIA GPU"),
        (MAKE, "1", "1", 0, "GPUS=1 but this host has no NVIDIA GPU (nvidia-smi -L lists none): "
         "use emulated GPUs (GPUS=0)"),
        (MAKE, "3", "2", 4, "NODES=3 x GPUS_PER_NODE=2 needs 6 GPUs, this host has 4 "
         "(nvidia-smi -L), and each node needs GPUs of its own: choose a smaller shape, e.g. "
         "NODES=2 GPUS_PER_NODE=2, or emulate GPUs (GPUS=0)"),
        (CLI, "1", "4", 2, "e.g. --nodes 1 --gpus-per-node 2, or emulate GPUs "
         "(--gpu-mode emulated)"),
    ],
)  # fmt: skip
def test_real_gpus_are_counted_against_the_host_with_a_fake_gpu_count(
    style: Style, nodes: str, gpus: str, host: int, message: str
) -> None:
    request = ShapeRequest(nodes=nodes, gpus_per_node=gpus, gpu_mode="nvidia")
    with pytest.raises(SlurmlabError, match=re.escape(message)):
        resolve_shape(request, ProjectConfig(), state.Recorded(), style, lambda: host)
    fits = ShapeRequest(nodes="2", gpus_per_node="2", gpu_mode="nvidia")
    assert resolve_shape(fits, ProjectConfig(), state.Recorded(), style, lambda: 4).nodes == 2


# ---- requirements --------------------------------------------------------------------------


def test_requirements_txt_is_found_with_the_files_it_includes(tmp_path: Path) -> None:
    (tmp_path / "reqs").mkdir()
    (tmp_path / "requirements.txt").write_text("-r reqs/base.txt\ntabulate==0.9.0  # tables\n")
    (tmp_path / "reqs" / "base.txt").write_text("--constraint=pins.txt\nrich\n")
    (tmp_path / "reqs" / "pins.txt").write_text("rich==13.9.4\n")
    found = deps.resolve(tmp_path, None, "")
    assert found is not None and found.main == "requirements.txt"
    assert set(found.files) == {"requirements.txt", "reqs/base.txt", "reqs/pins.txt"}
    before = found.digest()
    (tmp_path / "reqs" / "pins.txt").write_text("rich==14.0.0\n")
    assert deps.resolve(tmp_path, None, "").digest() != before, "an included file counts too"


def test_pyproject_dependencies_are_installed_when_there_is_no_requirements_txt(
    tmp_path: Path,
) -> None:
    (tmp_path / "pyproject.toml").write_text(
        '[project]\nname = "p"\ndependencies = ["tabulate==0.9.0", "rich>=13"]\n'
    )
    found = deps.resolve(tmp_path, None, "")
    assert found is not None and found.source == tmp_path / "pyproject.toml"
    assert found.files[found.main] == b"tabulate==0.9.0\nrich>=13\n"


def test_no_dependency_file_or_false_installs_nothing(tmp_path: Path) -> None:
    assert deps.resolve(tmp_path, None, "") is None
    (tmp_path / "requirements.txt").write_text("tabulate\n")
    assert deps.resolve(tmp_path, False, "") is None
    (tmp_path / "requirements.txt").unlink()
    (tmp_path / "pyproject.toml").write_text("[tool.ruff]\nline-length = 100\n")
    assert deps.resolve(tmp_path, None, "") is None, "a pyproject.toml without dependencies"


@pytest.mark.parametrize(
    ("files", "setting", "message"),
    [
        ({}, "deps/train.txt", "requirements: deps/train.txt: no such file in the project"),
        ({"r.txt": "x"}, "../r.txt", "no such file in the project"),
        ({"requirements.txt": "-e .\n"}, None, "'-e .' installs from the project folder"),
        ({"requirements.txt": "./vendor/pkg\n"}, None, "installs from the project folder"),
        ({"requirements.txt": "-r ../base.txt\n"}, None, "includes ../base.txt, which is not a"),
        ({"pyproject.toml": '[project]\nname = "p"\ndynamic = ["dependencies"]\n'}, None,
         "dependencies are dynamic"),
        ({"pyproject.toml": '[project]\nname = "p"\n'}, "pyproject.toml",
         "lists no [project] dependencies"),
        ({"pyproject.toml": "[project\n"}, None, "is not valid TOML"),
    ],
)  # fmt: skip
def test_requirements_that_cannot_be_built_are_refused_with_the_fix(
    tmp_path: Path, files: dict[str, str], setting: str | None, message: str
) -> None:
    project = tmp_path / "project"
    project.mkdir()
    (tmp_path / "r.txt").write_text("x\n")
    for name, text in files.items():
        (project / name).write_text(text)
    with pytest.raises(SlurmlabError) as err:
        deps.resolve(project, setting, f"requirements: {setting}")
    assert message in str(err.value)
    assert "point requirements: in slurmlab.yaml at the one to install" in str(err.value)


# ---- the project folder --------------------------------------------------------------------


def test_the_project_is_found_upwards_from_a_subfolder(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    (repo / "jobs" / "sub").mkdir(parents=True)
    (repo / ".git").mkdir()
    assert find_root(repo / "jobs" / "sub") == repo.resolve()
    (repo / "jobs" / "slurmlab.yaml").write_text("nodes: 2\n")
    assert find_root(repo / "jobs" / "sub") == (repo / "jobs").resolve()
    assert find_root(tmp_path) == tmp_path.resolve()


def test_projects_with_the_same_folder_name_get_distinct_clusters(tmp_path: Path) -> None:
    a, b = tmp_path / "a" / "ml", tmp_path / "b" / "ml"
    assert default_name(a) != default_name(b)
    assert default_name(a).startswith("slurmlab-ml-")
    assert default_name(tmp_path / "My Project!").startswith("slurmlab-my-project-")


def test_a_project_is_mounted_at_its_own_path_and_subfolders_map_to_it(tmp_path: Path) -> None:
    (tmp_path / "jobs").mkdir()
    project = open_project(tmp_path)
    assert project.mount == str(tmp_path.resolve())
    assert project.mount_of(tmp_path / "jobs") == str((tmp_path / "jobs").resolve())
    assert project.mount_of(Path("/")) == project.mount, "outside: the project's root"
    assert project.state_dir == tmp_path.resolve() / ".slurmlab" / project.name


def test_slurmlabs_own_checkout_is_mounted_at_workspace_under_its_env_name() -> None:
    project = open_project(REPO)
    assert project.is_slurmlab_checkout
    assert project.mount == facts.CHECKOUT_MOUNT == "/workspace"
    assert project.name == facts.env_defaults()["COMPOSE_PROJECT_NAME"]
    assert project.mount_of(REPO / "jobs") == "/workspace/jobs"


def test_name_flag_and_config_name_win(tmp_path: Path) -> None:
    config_file(tmp_path, "name: from-file\n")
    assert open_project(tmp_path).name == "from-file"
    assert open_project(tmp_path, name="from-flag").name == "from-flag"
    with pytest.raises(SlurmlabError, match="--name Bad: a cluster name"):
        open_project(tmp_path, name="Bad")


@pytest.mark.parametrize(
    ("folder", "over"),
    [("/", "/bin"), ("/usr/local/src/x", "/usr"), ("/home", "/home/slurmlab"),
     ("/shared/proj", "/shared"), ("/opt", "/opt/venv"), ("/var", "/var/lib/mysql")],
)  # fmt: skip
def test_a_project_that_would_hide_the_containers_own_paths_is_refused(
    folder: str, over: str
) -> None:
    with pytest.raises(SlurmlabError) as err:
        check_mount(Path(folder), "/shared")
    assert f"over their own {over}" in str(err.value)


def test_ordinary_project_folders_are_accepted() -> None:
    for folder in ("/home/alice/src/proj", "/tmp/ci/proj", "/srv/jenkins/ws", "/workspace"):
        check_mount(Path(folder), "/shared")
    with pytest.raises(SlurmlabError, match="has a ':' in its path"):
        check_mount(Path("/home/a/b:c"), "/shared")


def test_exec_takes_the_command_after_the_double_dash() -> None:
    args = parser().parse_args(["exec", "--name", "x", "--", "sbatch", "--wait", "job.sbatch"])
    assert args.argv == ["--", "sbatch", "--wait", "job.sbatch"]
    assert args.name == "x"


# ---- images: built once per content ----------------------------------------------------------


def test_an_images_tag_is_the_digest_of_its_inputs() -> None:
    first = images.cluster_images("trainer", None)
    again = images.cluster_images("trainer", None)
    assert [layer.tag for layer in first.layers] == [layer.tag for layer in again.layers]
    slurm, trainer = first.layers
    assert trainer.parent == slurm.tag, "a layer's identity includes its parent's"
    changed = dataclasses.replace(slurm, dockerfile=slurm.dockerfile + "\n# a change\n")
    assert changed.tag != slurm.tag
    other_args = dataclasses.replace(slurm, args={**slurm.args, "JOB_UID": "4242"})
    assert other_args.tag != slurm.tag
    assert images.trainer_layer(changed.tag).tag != trainer.tag, "a new parent, a new child"


def test_a_projects_stack_and_requirements_pick_its_layers(tmp_path: Path) -> None:
    (tmp_path / "requirements.txt").write_text("tabulate==0.9.0\n")
    requirements = deps.resolve(tmp_path, None, "")
    base = images.cluster_images("base", requirements)
    assert [layer.repository for layer in base.layers] == ["slurmlab-slurm", "slurmlab-deps"]
    assert base.slurm_tag == base.layers[0].tag and base.cluster_tag == base.layers[1].tag
    on_trainer = images.cluster_images("trainer", requirements)
    assert [layer.repository for layer in on_trainer.layers] == [
        "slurmlab-slurm", "slurmlab-trainer", "slurmlab-deps"
    ]  # fmt: skip
    assert on_trainer.cluster_tag != base.cluster_tag
    assert images.cluster_images("base", None).cluster_tag == base.slurm_tag


def test_an_image_that_exists_is_neither_built_nor_pulled(monkeypatch: pytest.MonkeyPatch) -> None:
    """Stand-ins for Docker: `ensure` asks whether each tag exists and builds only the rest."""
    planned = images.cluster_images("trainer", None)
    present = {planned.slurm_tag}
    built: list[str] = []
    monkeypatch.setattr(images.docker, "check_docker", lambda: None)
    monkeypatch.setattr(images.docker, "image_exists", lambda tag: tag in present)
    monkeypatch.setattr(images, "build", lambda layer: built.append(layer.tag))
    monkeypatch.setenv("SLURMLAB_REGISTRY", "")
    images.ensure(planned.layers)
    assert built == [planned.cluster_tag]
    present.add(planned.cluster_tag)
    built.clear()
    images.ensure(planned.layers)
    assert built == []


def test_a_missing_image_is_pulled_from_the_registry_by_its_digest_tag(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A stand-in for `docker pull`: the registry has the Slurm image, not the trainer's."""
    planned = images.cluster_images("trainer", None)
    commands: list[list[str]] = []

    def fake_run(args: list[str], **_: object) -> subprocess.CompletedProcess[str]:
        commands.append(list(args))
        ok = args[:2] == ["docker", "pull"] and args[2].endswith(planned.slurm_tag)
        return subprocess.CompletedProcess(args, 0 if ok else 1, "", "" if ok else "not found")

    built: list[str] = []
    monkeypatch.setattr(images.docker, "check_docker", lambda: None)
    monkeypatch.setattr(images.docker, "image_exists", lambda tag: False)
    monkeypatch.setattr(images.docker, "run", fake_run)
    monkeypatch.setattr(images.docker, "output", lambda args, what="": fake_run(args).stdout)
    monkeypatch.setattr(images, "ensure_base_image", lambda: None)
    monkeypatch.setattr(images, "build", lambda layer: built.append(layer.tag))
    monkeypatch.setenv("SLURMLAB_REGISTRY", "registry.example/slurmlab/")
    images.ensure(planned.layers)
    assert ["docker", "pull", f"registry.example/slurmlab/{planned.slurm_tag}"] in commands
    assert ["docker", "tag", f"registry.example/slurmlab/{planned.slurm_tag}",
            planned.slurm_tag] in commands  # fmt: skip
    assert built == [planned.cluster_tag], "what the registry lacks is built here"


# ---- the recorded state, and `up` on a cluster that has it already ---------------------------


def test_the_recorded_state_round_trips_and_reads_the_old_shape_file(tmp_path: Path) -> None:
    recorded = state.Recorded(4, 2, "emulated", "slurmlab-slurm:a", "slurmlab-trainer:b", "d")
    state.save(tmp_path / "new", recorded)
    assert state.load(tmp_path / "new") == recorded
    old = tmp_path / "old"
    old.mkdir()
    (old / "shape.env").write_text("# by slurmlab 0.1.0\nNODES=3\nGPUS_PER_NODE=2\nGPUS=1\n")
    assert state.load(old) == state.Recorded(nodes=3, gpus_per_node=2, gpu_mode="nvidia")
    state.save(old, recorded)
    assert not (old / "shape.env").exists(), "the new file replaces the old one"
    assert state.load(tmp_path / "never") == state.Recorded()


def fake_containers(
    target: Target, image: str | None = None, health: str = "healthy", runtime: str | None = None
) -> list[docker.Container]:
    return [
        docker.Container(f"id-{service}", target.cluster.name, service, True, health,
                         image or target.image_of(service), "",
                         runtime or resources.runtime_digest())
        for service in target.services
    ]  # fmt: skip


def test_up_has_nothing_to_do_only_when_the_cluster_runs_exactly_its_target(
    tmp_path: Path,
) -> None:
    cluster = Cluster(open_project(tmp_path), CLI)
    shape = resolve_shape(ShapeRequest(nodes="2"), ProjectConfig(), state.Recorded(), CLI, no_gpus)
    target = Target(
        cluster, shape, "slurmlab-slurm:s", "slurmlab-deps:d", DEFAULT_SITE, "default", 6820
    )
    recorded = state.Recorded(compose_digest=target.digest())
    running = fake_containers(target)
    assert [c.image for c in running[:2]] == ["slurmlab-slurm:s"] * 2, "accounting: Slurm only"
    assert target.image_of("slurmrestd") == "slurmlab-slurm:s", "the REST API: Slurm only"
    assert "slurmrestd" in target.services
    assert target.is_running(running, recorded)
    assert not target.is_running(running, state.Recorded()), "never started by this CLI"
    assert not target.is_running(running[:-1], recorded), "a node is missing"
    extra = docker.Container("id-node3", cluster.name, "node3", False, "", "x", "")
    assert not target.is_running([*running, extra], recorded), "a node beyond the shape"
    assert not target.is_running(fake_containers(target, health="starting"), recorded)
    assert not target.is_running(fake_containers(target, image="slurmlab-deps:old"), recorded)
    assert not target.is_running(fake_containers(target, runtime="an-older-entrypoint"), recorded)
    bigger = dataclasses.replace(target, shape=dataclasses.replace(shape, nodes=3))
    assert bigger.digest() != target.digest()
    roomier = dataclasses.replace(
        target, site=dataclasses.replace(DEFAULT_SITE, memory_per_gpu_mb=32768)
    )
    assert roomier.digest() != target.digest(), "what the nodes offer is part of how they start"
    assert roomier.node.memory_mb == 32768 * shape.gpus_per_node
    elsewhere = dataclasses.replace(target, rest_port=6821)
    assert elsewhere.digest() != target.digest(), "the REST API's port is part of how it starts"


def test_a_new_cluster_takes_the_first_free_rest_port_and_keeps_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Clusters side by side each get their own REST port on 127.0.0.1 (no Docker: the
    published ports and the free ports are given)."""
    monkeypatch.setenv("SLURMLAB_REST_PORT", "7100")
    busy = {7100, 7101}
    published: set[int] = {7102}
    monkeypatch.setattr(docker, "published_ports", lambda: published)
    monkeypatch.setattr(docker, "port_is_free", lambda port, host="127.0.0.1": port not in busy)
    monkeypatch.setattr(Cluster, "service", lambda self, name: None)
    cluster = Cluster(open_project(tmp_path), CLI)
    assert cluster.rest_port() == 7103, "skips ports in use and those another cluster publishes"
    state.save(cluster.project.state_dir, state.Recorded(rest_port=7104))
    assert cluster.rest_port() == 7104, "a cluster keeps its port"
    busy.add(7104)
    assert cluster.rest_port() == 7103, "unless something else took it while it was down"
    busy.update(range(7100, 7300))
    with pytest.raises(SlurmlabError, match="SLURMLAB_REST_PORT"):
        cluster.rest_port()


def test_the_port_probe_sees_a_listening_socket() -> None:
    import socket

    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        assert not docker.port_is_free(port)
    assert docker.port_is_free(port)


# ---- the site a cluster takes ----------------------------------------------------------------


def test_the_site_comes_from_the_flag_else_the_config_else_the_last_else_the_default(
    tmp_path: Path,
) -> None:
    mine = tmp_path / "mysite.yaml"
    mine.write_text(site_mod.default_site_path().read_text())
    cluster = Cluster(open_project(tmp_path), CLI)
    assert cluster.site_source() == ("default", "slurmlab's default site")
    state.save(cluster.project.state_dir, state.Recorded(site=str(mine)))
    assert cluster.site_source()[0] == str(mine), "the cluster keeps the site it was given"
    config_file(tmp_path, "site: mysite.yaml\n")
    cluster = Cluster(open_project(tmp_path), CLI)
    assert cluster.site_source() == (
        str(mine),
        f"site: mysite.yaml in {tmp_path / 'slurmlab.yaml'}",
    )
    assert cluster.site_source("default")[0] == "default", "the flag wins"


def test_a_missing_site_file_is_refused_with_the_fix(tmp_path: Path) -> None:
    cluster = Cluster(open_project(tmp_path), MAKE)
    with pytest.raises(SlurmlabError, match=r"SITE=nope.yaml: no such file\..*SITE=default"):
        cluster.site("nope.yaml")


def test_only_the_sites_users_may_log_in(tmp_path: Path) -> None:
    cluster = Cluster(open_project(tmp_path), MAKE)
    assert cluster.login_user(None) == facts.JOB_USER
    assert cluster.login_user("alice") == "alice"
    with pytest.raises(
        SlurmlabError, match=r"AS=bob: the cluster's site \(default\) has no user bob"
    ):
        cluster.login_user("bob")


def test_up_takes_a_site_and_shell_and_exec_take_a_user() -> None:
    args = parser().parse_args(["up", "--site", "site.yaml"])
    assert args.site == "site.yaml"
    assert parser().parse_args(["shell", "--user", "alice"]).user == "alice"
    assert parser().parse_args(["exec", "--user", "alice", "--", "id"]).argv == ["--", "id"]
    imported = parser().parse_args(["site", "import", "dir", "-o", "site.yaml"])
    assert (imported.folder, imported.output) == (Path("dir"), Path("site.yaml"))


def test_the_default_site_is_applied_live_so_it_is_not_part_of_the_runtime(tmp_path: Path) -> None:
    assert "slurm/site.yaml" in resources.NOT_RUNTIME
    assert (resources.cluster_dir() / "slurm" / "site.yaml").is_file()


def test_a_controller_started_by_another_slurmlab_is_asked_with_a_minimal_client_config(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Its mounted slurm/ may include files it was not given (a site's part): Slurm's clients
    would fail for a minute. The minimal configuration only says where the controller is."""
    from slurmlab import slurm

    seen: list[list[str]] = []

    def fake_run(args: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
        seen.append(list(args))
        return subprocess.CompletedProcess(args, 0, "", "")

    monkeypatch.setattr(docker, "run", fake_run)
    login = docker.Container("id-login", "c", "slurmctld", True, "healthy", "img", "")
    slurm.Controller(login).minimal_client().run("squeue", "-h")
    command = seen[0][seen[0].index("id-login") + 1 :]
    assert command[:2] == ["sh", "-c"] and command[-2:] == ["squeue", "-h"]
    assert f"SLURM_CONF={slurm.MINIMAL_CLIENT_PATH}" in command[2]
    assert "SlurmctldHost=slurmctld" in slurm.MINIMAL_CLIENT_CONF
    slurm.Controller(login).run("squeue", "-h")
    assert seen[1][-2:] == ["squeue", "-h"] and "sh" not in seen[1], "the mounted config by default"


@pytest.mark.parametrize(
    ("argv", "name", "project"),
    [
        (["site", "--name", "n", "--project", "/p", "check"], "n", Path("/p")),
        (["site", "check", "--name", "m"], "m", None),
        (["site", "--name", "n", "check", "--name", "m"], "m", None),
        (["site", "check"], None, None),
    ],
)
def test_site_check_keeps_the_cluster_named_before_or_after_check(
    argv: list[str], name: str | None, project: Path | None
) -> None:
    args = parser().parse_args(argv)
    assert (args.name, args.project, args.site_command) == (name, project, "check")
