"""The slurmlab CLI's checks, before anything touches Docker: slurmlab.yaml, the shape and where
each setting comes from, a project's requirement files, and what a project folder becomes."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from conftest import REPO

from slurmlab import deps, resources
from slurmlab.cli import parser
from slurmlab.config import ProjectConfig, ShapeRequest, Style, load_config, resolve_shape
from slurmlab.errors import SlurmlabError
from slurmlab.project import check_mount, default_name, find_root, open_project

CLI, MAKE = Style(make=False), Style(make=True)


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
    assert load_config(path) == ProjectConfig(path, "my-proj", 2, 2, "nvidia", "r.txt")


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
    recorded = {"NODES": "5", "GPUS_PER_NODE": "2", "GPU_MODE": "emulated"}
    # the command line, then slurmlab.yaml, then the recorded shape, then .env
    shape = resolve_shape(ShapeRequest(nodes="6"), config, recorded, CLI, no_gpus)
    assert (shape.nodes, shape.gpus_per_node) == (6, 2)
    assert resolve_shape(ShapeRequest(), config, recorded, CLI, no_gpus).nodes == 3
    assert resolve_shape(ShapeRequest(), ProjectConfig(), recorded, CLI, no_gpus).nodes == 5
    default = resolve_shape(ShapeRequest(), ProjectConfig(), {}, CLI, no_gpus)
    env = resources.env_defaults()
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
        resolve_shape(request_, ProjectConfig(), {}, style, no_gpus)


def test_a_shape_from_the_config_file_is_named_with_its_file(tmp_path: Path) -> None:
    path = config_file(tmp_path, "nodes: 0\n")
    with pytest.raises(SlurmlabError, match=re.escape(f"nodes: 0 in {path}: a cluster has 1")):
        resolve_shape(ShapeRequest(), load_config(path), {}, CLI, no_gpus)


def test_the_node_bound_is_the_compose_files_node_services_and_slurms_max_node_count() -> None:
    conf = (REPO / "slurm" / "slurm.conf").read_text()
    assert resources.max_nodes() == int(re.search(r"^MaxNodeCount=(\d+)", conf, re.M).group(1))


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
        resolve_shape(request, ProjectConfig(), {}, style, lambda: host)
    fits = ShapeRequest(nodes="2", gpus_per_node="2", gpu_mode="nvidia")
    assert resolve_shape(fits, ProjectConfig(), {}, style, lambda: 4).nodes == 2


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
    assert project.mount == "/workspace"
    assert project.name == resources.env_defaults()["COMPOSE_PROJECT_NAME"]
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
