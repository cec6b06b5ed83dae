"""The deployment files (docker-compose.yml, deploy/) against the code they start.

Nothing here builds an image or starts a container: the files are parsed and checked against the
real CLI (``service.cli.app``, Ray's ``ray start``), the real ``Settings`` and the real source tree,
so a misspelt command, option, setting or path fails here instead of at ``docker compose up``.
Only ``docker compose config`` needs Docker's compose plugin, and is skipped (with the reason) without it.
"""

from __future__ import annotations

import fnmatch
import functools
import os
import re
import shlex
import shutil
import subprocess
import tomllib
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import click
import pytest
import typer.main
import yaml
from pydantic import AliasChoices
from sqlalchemy.engine import make_url

from service.cli import app
from service.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
KUBERAY = ROOT / "deploy" / "kuberay"
DOCKERFILES = [ROOT / "deploy" / "Dockerfile", ROOT / "deploy" / "Dockerfile.cuda"]

# What compose needs from the shell; everything else has a default in the file.
HOST_ENV = {"RAY_AUTH_TOKEN": "token-for-tests", "POSTGRES_PASSWORD": "password-for-tests"}
SERVICES_WITH_SETTINGS = ("migrate", "api", "dispatcher")
SERVICES_ON_THE_SHARED_VOLUME = ("api", "dispatcher", "ray-head", "ray-worker", "ray-worker-gpu")
# Variables read by Ray itself, not by Settings (checked in the Ray sources where they are set).
RAY_ENV = {"RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_USAGE_STATS_ENABLED"}


# --- reading the files -------------------------------------------------------------------------
class MissingVariable(KeyError):
    """A ``${NAME:?message}`` variable is not set."""


_VARIABLE = re.compile(
    r"\$\$|\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}|\$(?P<bare>[A-Za-z_][A-Za-z0-9_]*)"
)


def interpolate(value: Any, env: Mapping[str, str]) -> Any:
    """Compose's variable substitution (``$$``, ``${X}``, ``${X:-default}``, ``${X:?error}``), recursively."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def substitute(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name, op, arg = match.group("name") or match.group("bare"), match.group("op"), match.group("arg")
        unset = name not in env or (op is not None and op.startswith(":") and env[name] == "")
        if not unset:
            return env[name]
        if op and op.endswith("?"):
            raise MissingVariable(f"{name}: {arg}")
        return arg if op else ""

    return _VARIABLE.sub(substitute, value)


@pytest.fixture(scope="module")
def raw_compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


@pytest.fixture(scope="module")
def compose(raw_compose: dict[str, Any]) -> dict[str, Any]:
    """docker-compose.yml as compose sees it with only ``HOST_ENV`` set."""
    return interpolate(raw_compose, HOST_ENV)


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


def load_manifests(name: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all((KUBERAY / name).read_text()) if doc]


def environment(service: Mapping[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def command_lines(command: str | list[str]) -> list[list[str]]:
    """The programs a command runs: ``sh -c "a && exec b"`` gives ``[a, b]``."""
    argv = shlex.split(command) if isinstance(command, str) else [str(a) for a in command]
    if argv[:2] not in (["sh", "-c"], ["/bin/sh", "-c"], ["bash", "-c"]):
        return [argv]
    lines = [shlex.split(part) for part in argv[2].split("&&")]
    return [line[1:] if line[:1] == ["exec"] else line for line in lines]


def volume_mounts(service: Mapping[str, Any]) -> dict[str, str]:
    """Named-volume source -> container path (bind mounts left out)."""
    mounts = {}
    for volume in service.get("volumes", []):
        if isinstance(volume, str):
            source, _, rest = volume.partition(":")
            target = rest.split(":")[0]
            kind = "bind" if source.startswith((".", "/", "~")) else "volume"
        else:
            source, target, kind = volume.get("source"), volume["target"], volume.get("type", "volume")
        if kind == "volume" and source:
            mounts[source] = target
    return mounts


def settings_env_names() -> set[str]:
    """Every environment name ``Settings`` reads: ``env_prefix`` + field name, or the field's aliases."""
    prefix = Settings.model_config.get("env_prefix", "")
    names = set()
    for name, field in Settings.model_fields.items():
        alias = field.validation_alias
        if isinstance(alias, AliasChoices):
            names |= {choice.upper() for choice in alias.choices if isinstance(choice, str)}
        elif isinstance(alias, str):
            names.add(alias.upper())
        else:
            names.add(f"{prefix}{name}".upper())
    return names


def settings_from(env: Mapping[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    for name in list(os.environ):
        if name.upper().startswith("FSG_") or name.upper() == "RAY_ADDRESS":
            monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return Settings()


# --- the commands ------------------------------------------------------------------------------
def check_fsg_command(argv: list[str]) -> Any:
    """Resolve ``fsg a b --opt`` through the typer app and parse its options; return the command.

    Typer builds on its own copy of click, so groups are recognised by ``get_command``, not by class.
    """
    assert argv[0] == "fsg", argv
    command: Any = typer.main.get_command(app)
    args = argv[1:]
    while hasattr(command, "get_command") and args and not args[0].startswith("-"):
        sub = command.get_command(command.context_class(command), args[0])
        assert sub is not None, f"`{' '.join(argv)}`: {args[0]!r} is not a command of {command.name or 'fsg'}"
        command, args = sub, args[1:]
    assert not hasattr(command, "get_command"), f"`{' '.join(argv)}` names a group, not a command"
    try:
        command.make_context(command.name or "fsg", list(args))  # parses options and arguments, runs nothing
    except Exception as exc:  # typer's click raises its own UsageError class
        raise AssertionError(f"`{' '.join(argv)}`: {exc}") from exc
    return command


@functools.cache
def ray_start_command() -> click.Command:
    with warnings.catch_warnings():  # Ray's CLI imports Serve, which warns about pydantic on import
        warnings.simplefilter("ignore")
        from ray.scripts.scripts import cli
    start = cli.get_command(click.Context(cli), "start")
    assert start is not None
    return start


def check_ray_start(argv: list[str]) -> dict[str, Any]:
    """Parse ``ray start ...`` with Ray's own CLI; return its parameters."""
    assert argv[:2] == ["ray", "start"], f"a Ray command must be `ray start ...`, got {argv}"
    try:
        return dict(ray_start_command().make_context("start", argv[2:]).params)
    except click.UsageError as exc:
        raise AssertionError(f"`{' '.join(argv)}`: {exc}") from exc


def check_line(argv: list[str]) -> None:
    assert argv and argv[0] in ("fsg", "ray"), f"unexpected program in a command: {argv}"
    if argv[0] == "fsg":
        check_fsg_command(argv)
    else:
        check_ray_start(argv)


def test_the_checkers_refuse_what_does_not_exist() -> None:
    check_fsg_command(["fsg", "db", "upgrade", "--revision", "head"])
    for bad in (["fsg", "dispatch"], ["fsg", "db"], ["fsg", "api", "--hots", "x"], ["fsg", "db", "migrate"]):
        with pytest.raises(AssertionError):
            check_fsg_command(bad)
    with pytest.raises(AssertionError, match="No such option"):
        check_ray_start(["ray", "start", "--head", "--dashbord-port=8265"])
    with pytest.raises(AssertionError, match="num-cpus"):
        check_ray_start(["ray", "start", "--num-cpus=${RAY_WORKER_NUM_CPUS}"])
    with pytest.raises(AssertionError):
        check_ray_start(["ray", "up", "cluster.yaml"])
    with pytest.raises(MissingVariable):
        interpolate("${X:?set X}", {})
    assert interpolate("a${X:-1}$${Y}", {}) == "a1${Y}"


def test_every_service_command_is_a_real_fsg_or_ray_start_command(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        if service.get("image", "").startswith("postgres"):
            continue
        assert "command" in service, f"{name} has no command"
        for argv in command_lines(service["command"]):
            check_line(argv)


def test_the_services_run_what_their_names_say(services: dict[str, dict[str, Any]]) -> None:
    last = {name: command_lines(s["command"])[-1] for name, s in services.items() if "command" in s}
    assert last["migrate"] == ["fsg", "db", "upgrade"]
    assert last["api"] == ["fsg", "api"]
    assert last["dispatcher"] == ["fsg", "dispatcher"]
    assert check_ray_start(last["ray-head"])["head"] and check_ray_start(last["ray-head"])["block"]
    for worker in ("ray-worker", "ray-worker-gpu"):
        assert check_ray_start(last[worker])["block"], f"{worker} would exit right after starting Ray"


# --- Ray: one address, one token -----------------------------------------------------------------
def test_every_ray_node_and_driver_joins_the_head_on_its_gcs_port(services: dict[str, dict[str, Any]]) -> None:
    head = check_ray_start(command_lines(services["ray-head"]["command"])[0])
    port = head["port"]
    assert port is not None and int(port) != 6379, "the GCS must not take Redis's port 6379"
    assert head["dashboard_host"] == "0.0.0.0" and head["dashboard_port"] == 8265
    assert any(str(p).endswith(":8265") for p in services["ray-head"]["ports"]), "the dashboard is not published"
    address = f"ray-head:{port}"
    for name in ("ray-worker", "ray-worker-gpu", "dispatcher"):
        joins = [check_ray_start(argv) for argv in command_lines(services[name]["command"]) if argv[0] == "ray"]
        assert [params["address"] for params in joins] == [address], name
    assert check_ray_start(command_lines(services["dispatcher"]["command"])[0])["num_cpus"] == 0
    for name in SERVICES_WITH_SETTINGS:
        assert environment(services[name])["RAY_ADDRESS"] == address, name


def test_workers_can_be_scaled(services: dict[str, dict[str, Any]]) -> None:
    for name in ("ray-worker", "ray-worker-gpu"):
        assert "container_name" not in services[name], f"--scale {name}=N needs distinct container names"
        assert not services[name].get("ports"), f"copies of {name} would fight over the same host port"


def test_every_ray_process_gets_the_same_required_token(raw_compose: dict[str, Any]) -> None:
    ray_services = ("ray-head", "ray-worker", "ray-worker-gpu", "dispatcher")
    for name in ray_services:
        env = environment(interpolate(raw_compose["services"][name], HOST_ENV))
        assert env["RAY_AUTH_MODE"] == "token", name
        assert env["RAY_AUTH_TOKEN"] == HOST_ENV["RAY_AUTH_TOKEN"], name
        with pytest.raises(MissingVariable):  # no silent default: compose refuses to start without it
            interpolate(raw_compose["services"][name]["environment"], {})


def test_the_database_password_has_no_default(raw_compose: dict[str, Any]) -> None:
    """Every service that holds the password (PostgreSQL, and the URL of the API, migrate, dispatcher)
    refuses to start without POSTGRES_PASSWORD: no well-known default to log in with."""
    holders = [name for name in raw_compose["services"] if "POSTGRES_PASSWORD" in str(raw_compose["services"][name])]
    assert {"postgres", "api", "migrate", "dispatcher"} <= set(holders)
    without = {k: v for k, v in HOST_ENV.items() if k != "POSTGRES_PASSWORD"}
    for name in holders:
        with pytest.raises(MissingVariable, match="POSTGRES_PASSWORD"):
            interpolate(raw_compose["services"][name], without)


# --- settings -------------------------------------------------------------------------------------
def test_every_variable_of_the_service_containers_is_read_by_someone(services: dict[str, dict[str, Any]]) -> None:
    known = settings_env_names()
    for name in SERVICES_WITH_SETTINGS:
        for variable in environment(services[name]):
            if variable.startswith("FSG_") or variable == "RAY_ADDRESS":
                assert variable in known, f"{name}: {variable} is not a setting (service/settings.py)"
            else:
                assert variable in RAY_ENV, f"{name}: nothing reads {variable}"


def test_the_service_settings_point_at_postgres_ray_and_the_shared_volume(
    services: dict[str, dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    postgres = environment(services["postgres"])
    home = volume_mounts(services["api"])["fsg-home"]
    for name in SERVICES_WITH_SETTINGS:
        settings = settings_from(environment(services[name]), monkeypatch)
        url = make_url(settings.resolved_database_url)
        assert url.drivername == "postgresql+psycopg", name
        assert url.host in services and services[url.host]["image"].startswith("postgres:"), name
        assert (url.username, url.password, url.database) == (
            postgres["POSTGRES_USER"],
            postgres["POSTGRES_PASSWORD"],
            postgres["POSTGRES_DB"],
        ), name
        assert settings.ray_address and settings.ray_address.split(":")[0] in services, name
        if name != "migrate":
            assert settings.resolved_artifacts_dir.is_relative_to(home), f"{name} writes artifacts off the volume"
            assert all(root.is_relative_to(home) for root in settings.resolved_data_roots), name
    api = settings_from(environment(services["api"]), monkeypatch)
    assert api.api_host == "0.0.0.0", "the API must listen beyond the container's loopback"
    published = {str(p).rsplit(":", 1)[-1] for p in services["api"]["ports"]}
    assert str(api.api_port) in published


def test_settings_env_names_follow_the_prefix_and_aliases() -> None:
    names = settings_env_names()
    assert {"FSG_HOME", "FSG_DATABASE_URL", "RAY_ADDRESS", "FSG_RAY_ADDRESS", "FSG_API_HOST"} <= names
    assert "FSG_DATABSE_URL" not in names


# --- the compose graph ----------------------------------------------------------------------------
def test_dependencies_exist_and_wait_for_the_right_condition(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        for target, condition in (service.get("depends_on") or {}).items():
            assert target in services, f"{name} depends on a missing service {target}"
            if condition.get("condition") == "service_healthy":
                assert "healthcheck" in services[target], f"{name} waits for {target}'s health, which it has none of"
    for name in ("api", "dispatcher"):
        depends = services[name]["depends_on"]
        assert depends["migrate"]["condition"] == "service_completed_successfully", name
        assert "ray-head" in depends, name
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert services["migrate"].get("restart") == "no", "a one-shot service must not be restarted"


def test_postgres_is_16_on_a_named_volume_with_pg_isready(
    compose: dict[str, Any], services: dict[str, dict[str, Any]]
) -> None:
    postgres = services["postgres"]
    assert postgres["image"] == "postgres:16"
    assert "pg_isready" in " ".join(postgres["healthcheck"]["test"])
    assert volume_mounts(postgres) and set(volume_mounts(postgres)) <= set(compose.get("volumes") or {})


def test_every_named_volume_is_declared(compose: dict[str, Any], services: dict[str, dict[str, Any]]) -> None:
    declared = set(compose.get("volumes") or {})
    for name, service in services.items():
        for source in volume_mounts(service):
            assert source in declared, f"{name} mounts the undeclared volume {source}"


def test_the_artifact_volume_is_mounted_at_the_same_path_everywhere(services: dict[str, dict[str, Any]]) -> None:
    targets = {name: volume_mounts(services[name]).get("fsg-home") for name in SERVICES_ON_THE_SHARED_VOLUME}
    assert None not in targets.values(), targets
    assert len(set(targets.values())) == 1, targets


def test_the_gpu_worker_reserves_nvidia_gpus_under_the_gpu_profile(services: dict[str, dict[str, Any]]) -> None:
    gpu = services["ray-worker-gpu"]
    assert gpu["profiles"] == ["gpu"]
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert any(d["driver"] == "nvidia" and "gpu" in d["capabilities"] for d in devices)
    assert Path(gpu["build"]["dockerfile"]).name == "Dockerfile.cuda"
    # Everything else starts with a plain `docker compose up`.
    assert [name for name, s in services.items() if s.get("profiles")] == ["ray-worker-gpu"]


def test_compose_config_is_valid_for_docker_compose() -> None:
    cli = _compose_cli()
    if cli is None:
        pytest.skip("neither `docker compose` (the plugin) nor `docker-compose` is installed here")
    env = {**os.environ, **HOST_ENV}
    for profile in ([], ["--profile", "gpu"]):
        result = subprocess.run(
            [*cli, "-f", str(COMPOSE), *profile, "config", "-q"], cwd=ROOT, env=env, capture_output=True, text=True
        )
        assert result.returncode == 0, result.stderr
    for secret in ("RAY_AUTH_TOKEN", "POSTGRES_PASSWORD"):
        without = {k: v for k, v in env.items() if k != secret}
        result = subprocess.run(
            [*cli, "-f", str(COMPOSE), "config", "-q"], cwd=ROOT, env=without, capture_output=True, text=True
        )
        assert result.returncode != 0 and secret in result.stderr


def _compose_cli() -> list[str] | None:
    for cli in (["docker", "compose"], ["docker-compose"]):
        if shutil.which(cli[0]) is None:
            continue
        try:
            version = subprocess.run([*cli, "version"], capture_output=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if version.returncode == 0:
            return cli
    return None


# --- images ---------------------------------------------------------------------------------------
def dockerfile_instructions(path: Path) -> Iterator[tuple[str, list[str]]]:
    """(instruction, arguments), continuation lines joined and comments dropped."""
    text = re.sub(
        r"\\\n", " ", "\n".join(line for line in path.read_text().splitlines() if not line.lstrip().startswith("#"))
    )
    for line in text.splitlines():
        if line.strip():
            word, _, rest = line.strip().partition(" ")
            yield word.upper(), shlex.split(rest)


def copy_sources(path: Path) -> list[str]:
    sources = []
    for instruction, args in dockerfile_instructions(path):
        if instruction in ("COPY", "ADD") and not any(a.startswith("--from") for a in args):
            sources += [a for a in args if not a.startswith("--")][:-1]
    return sources


def dockerignore_patterns() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_what_the_images_copy_exists_and_is_not_ignored(dockerfile: Path) -> None:
    sources = copy_sources(dockerfile)
    assert sources
    ignored = dockerignore_patterns()
    for source in sources:
        assert (ROOT / source).exists(), f"{dockerfile.name} copies {source}, which does not exist"
        hit = [p for p in ignored if fnmatch.fnmatch(source.rstrip("/"), p.removeprefix("**/"))]
        assert not hit, f"{dockerfile.name} copies {source}, which .dockerignore drops ({hit})"
    # pip install . needs the readme pyproject names and every package it finds.
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    copied = {Path(s).parts[0] for s in sources}
    assert project["project"]["readme"] in copied
    for package in project["tool"]["setuptools"]["packages"]["find"]["include"]:
        assert package.rstrip("*") in copied, f"{dockerfile.name} does not copy the package {package}"


def test_the_images_share_one_python_and_differ_in_torch() -> None:
    defaults = {}
    for dockerfile in DOCKERFILES:
        args = dict(
            a.split("=", 1) for i, line in dockerfile_instructions(dockerfile) if i == "ARG" for a in line if "=" in a
        )
        defaults[dockerfile.name] = args
        assert args["PYTHON_IMAGE"].startswith("python:3.11"), "pyproject and CI use Python 3.11"
    assert defaults["Dockerfile"]["PYTHON_IMAGE"] == defaults["Dockerfile.cuda"]["PYTHON_IMAGE"]
    assert defaults["Dockerfile"]["TORCH_INDEX_URL"].endswith("/whl/cpu")
    assert defaults["Dockerfile.cuda"]["TORCH_CUDA"].startswith("cu")
    assert ".venv" in dockerignore_patterns(), "the build context would carry the 1.6 GB venv"


def test_compose_builds_from_the_dockerfiles(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        if "build" in service:
            build = service["build"]
            assert (ROOT / build["context"] / build["dockerfile"]).is_file(), name
            assert set(build.get("args") or {}) <= {"PYTHON_IMAGE"}, name


# --- KubeRay ---------------------------------------------------------------------------------------
def by_kind(docs: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(doc["kind"], doc["metadata"]["name"]): doc for doc in docs}


def pod_specs() -> dict[str, dict[str, Any]]:
    """Every pod template of both manifests, by a readable name."""
    docs = by_kind(load_manifests("raycluster.yaml") + load_manifests("fsg-service.yaml"))
    pods = {}
    for (kind, name), doc in docs.items():
        if kind == "RayCluster":
            pods[f"{name}/head"] = doc["spec"]["headGroupSpec"]["template"]["spec"]
            for group in doc["spec"]["workerGroupSpecs"]:
                pods[f"{name}/{group['groupName']}"] = group["template"]["spec"]
        elif kind == "Deployment":
            pods[name] = doc["spec"]["template"]["spec"]
    return pods


def container_env(container: Mapping[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def test_the_kuberay_manifests_have_the_expected_kinds() -> None:
    cluster = by_kind(load_manifests("raycluster.yaml"))
    assert set(cluster) == {("PersistentVolumeClaim", "fsg-home"), ("RayCluster", "fsg")}
    ray = cluster["RayCluster", "fsg"]
    assert ray["apiVersion"] == "ray.io/v1"
    assert set(by_kind(load_manifests("fsg-service.yaml"))) == {
        ("Deployment", "fsg-api"),
        ("Deployment", "fsg-dispatcher"),
        ("Service", "fsg-api"),
    }
    head = ray["spec"]["headGroupSpec"]
    assert head["rayStartParams"]["dashboard-host"] == "0.0.0.0"
    assert {"name": "dashboard", "containerPort": 8265} in head["template"]["spec"]["containers"][0]["ports"]
    groups = {g["groupName"]: g for g in ray["spec"]["workerGroupSpecs"]}
    assert "cpu" in groups and groups["cpu"]["replicas"] >= 1
    gpu_limits = groups["gpu"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert int(gpu_limits["nvidia.com/gpu"]) >= 1
    assert "ReadWriteMany" in cluster["PersistentVolumeClaim", "fsg-home"]["spec"]["accessModes"]


def test_kuberay_ray_start_params_are_options_of_ray_start() -> None:
    ray = by_kind(load_manifests("raycluster.yaml"))["RayCluster", "fsg"]["spec"]
    groups = [("head", ray["headGroupSpec"])] + [(g["groupName"], g) for g in ray["workerGroupSpecs"]]
    for name, group in groups:
        flags = [f"--{key}={value}" for key, value in group["rayStartParams"].items()]
        check_ray_start(["ray", "start", *(["--head"] if name == "head" else []), *flags])


def test_every_kuberay_pod_mounts_the_artifact_claim_at_one_path() -> None:
    paths = set()
    for name, pod in pod_specs().items():
        claims = {
            v["name"]: v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"] if "persistentVolumeClaim" in v
        }
        mounted = [
            m["mountPath"]
            for c in pod["containers"]
            for m in c.get("volumeMounts", [])
            if claims.get(m["name"]) == "fsg-home"
        ]
        assert mounted, f"{name} does not mount the fsg-home claim"
        paths |= set(mounted)
    assert len(paths) == 1, paths
    for deployment in ("fsg-api", "fsg-dispatcher"):
        env = container_env(pod_specs()[deployment]["containers"][0])
        assert env["FSG_HOME"] in paths, deployment


def test_kuberay_services_reach_the_head_the_database_secret_and_the_token(monkeypatch: pytest.MonkeyPatch) -> None:
    ray = by_kind(load_manifests("raycluster.yaml"))["RayCluster", "fsg"]
    head_ports = {
        p["name"]: p["containerPort"]
        for p in ray["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["ports"]
    }
    gcs_port = int(ray["spec"]["headGroupSpec"]["rayStartParams"].get("port", head_ports["gcs-server"]))
    address = f"{ray['metadata']['name']}-head-svc:{gcs_port}"
    known = settings_env_names()
    pods = pod_specs()
    for deployment in ("fsg-api", "fsg-dispatcher"):
        pod = pods[deployment]
        for container in pod.get("initContainers", []) + pod["containers"]:
            env = container_env(container)
            for variable in env:
                assert variable in known | RAY_ENV, f"{deployment}/{container['name']}: nothing reads {variable}"
            assert env["FSG_DATABASE_URL"]["secretKeyRef"]["key"], deployment
            for argv in command_lines(container["command"]):
                check_line(argv)
        env = container_env(pod["containers"][0])
        assert env["RAY_ADDRESS"] == address, deployment
        plain = {k: v for k, v in env.items() if isinstance(v, str)} | {"FSG_DATABASE_URL": "postgresql+psycopg://h/db"}
        settings = settings_from(plain, monkeypatch)
        assert settings.resolved_artifacts_dir.is_relative_to(Path(env["FSG_HOME"]))
    dispatcher = pods["fsg-dispatcher"]["containers"][0]
    joins = [check_ray_start(a) for a in command_lines(dispatcher["command"]) if a[0] == "ray"]
    assert [j["address"] for j in joins] == [address]
    # One token for every Ray process: the cluster's pods and the dispatcher (a driver).
    containers = [c for name, pod in pods.items() if name != "fsg-api" for c in pod["containers"]]
    secrets = {(container_env(c)["RAY_AUTH_TOKEN"]["secretKeyRef"]["name"]) for c in containers}
    assert len(secrets) == 1 and all(container_env(c)["RAY_AUTH_MODE"] == "token" for c in containers)


def test_kuberay_selectors_match_their_pods() -> None:
    docs = by_kind(load_manifests("fsg-service.yaml"))
    for (kind, name), doc in docs.items():
        if kind == "Deployment":
            labels = doc["spec"]["template"]["metadata"]["labels"]
            assert doc["spec"]["selector"]["matchLabels"].items() <= labels.items(), name
    api_labels = docs["Deployment", "fsg-api"]["spec"]["template"]["metadata"]["labels"]
    assert docs["Service", "fsg-api"]["spec"]["selector"].items() <= api_labels.items()
