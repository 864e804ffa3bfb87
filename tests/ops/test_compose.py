"""The container setup: Dockerfile, .dockerignore and docker-compose.yml say what they must.

No Docker engine is needed: the files are parsed, and `docker-compose config` (when the
command exists) validates the compose file the way `up` would read it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
REPLICAS = ("inventory", "inventory-2")
PORT = 8000


# --- docker-compose.yml -------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    # safe_load resolves the `<<: *inventory` merge keys, as compose does.
    return yaml.safe_load(COMPOSE_FILE.read_text())


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


def environment(service: dict[str, Any]) -> dict[str, str]:
    """A service's `environment`, in either of compose's two spellings."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        return dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {key: "" if value is None else str(value) for key, value in env.items()}


def command_text(test: str | list[str]) -> str:
    """A healthcheck's `test` as one command line."""
    if isinstance(test, str):
        return test
    assert test[0] in ("CMD", "CMD-SHELL"), test
    return " ".join(test[1:])


def published_ports(service: dict[str, Any]) -> set[tuple[int, int]]:
    """(host port, container port) pairs, from the short or the long syntax."""
    pairs = set()
    for port in service.get("ports", []):
        if isinstance(port, dict):
            pairs.add((int(port["published"]), int(port["target"])))
        else:
            *_, host, container = str(port).split(":")
            pairs.add((int(host), int(container.split("/")[0])))
    return pairs


def test_postgres_healthcheck_uses_pg_isready_over_tcp(services):
    # While the image initialises a new database it runs a temporary server on the Unix
    # socket only; only a check over TCP waits for the real one.
    postgres = services["postgres"]
    check = command_text(postgres["healthcheck"]["test"])
    assert re.search(r"\bpg_isready\b.*\s-h\s+127\.0\.0\.1(\s|$)", check), check
    user = re.search(r"\s-U\s+(\S+)", check)
    assert user, f"pg_isready without -U logs failed connections as root: {check}"
    assert user.group(1) == environment(postgres).get("POSTGRES_USER", "postgres")


def test_postgres_data_is_on_a_named_volume(compose, services):
    postgres = services["postgres"]
    image = re.fullmatch(r"postgres:(\d+)(\.\d+)*(-\S+)?", postgres["image"])
    assert image, f"pin a major version (the data directory depends on it): {postgres['image']}"
    major = int(image.group(1))
    default_pgdata = f"/var/lib/postgresql/{major}/docker" if major >= 18 else None
    pgdata = environment(postgres).get("PGDATA") or default_pgdata or "/var/lib/postgresql/data"
    # 18+ refuses to start with a volume on /var/lib/postgresql/data: mount its parent.
    named = set(compose.get("volumes") or {})
    targets = set()
    for volume in postgres.get("volumes", []):
        if isinstance(volume, dict):
            source, target = volume.get("source"), volume["target"]
        else:
            source, target, *_ = volume.split(":")
        if source in named:
            targets.add(target.rstrip("/"))
    assert targets, f"no named volume (declared under top-level volumes:) for {pgdata}"
    assert any(pgdata == t or pgdata.startswith(t + "/") for t in targets), (targets, pgdata)


@pytest.mark.parametrize("name", REPLICAS)
def test_replica_waits_for_a_healthy_postgres(services, name):
    depends_on = services[name].get("depends_on")
    assert isinstance(depends_on, dict), f"{name}: depends_on needs the long form: {depends_on}"
    assert depends_on["postgres"]["condition"] == "service_healthy"


@pytest.mark.parametrize("name", REPLICAS)
def test_replica_uses_the_postgres_service(services, name):
    postgres = environment(services["postgres"])
    url = urlsplit(environment(services[name])["DATABASE_URL"])
    assert url.scheme in ("postgresql", "postgres")
    assert url.hostname == "postgres"
    assert url.port in (None, 5432)
    assert url.username == postgres.get("POSTGRES_USER", "postgres")
    assert url.password == postgres["POSTGRES_PASSWORD"]  # the same (interpolated) value
    assert url.path == "/" + postgres.get("POSTGRES_DB", url.username)


@pytest.mark.parametrize("name", REPLICAS)
def test_replica_takes_the_admin_token_from_the_environment(services, name):
    service = services[name]
    token = environment(service).get("INVENTORY_ADMIN_TOKEN")
    # `${VAR:?message}`: required, so compose refuses to start without it; never a literal.
    assert token is not None and re.fullmatch(r"\$\{INVENTORY_ADMIN_TOKEN:\?[^}]+\}", token), token
    assert "env_file" not in service, "a token in an env_file would be a literal on disk"


@pytest.mark.parametrize("name", REPLICAS)
def test_replica_builds_from_the_dockerfile(services, name):
    build = services[name].get("build")
    assert build is not None, f"{name} does not build"
    if isinstance(build, str):
        build = {"context": build}
    context = ROOT / build.get("context", ".")
    assert context.resolve() == ROOT
    assert (context / build.get("dockerfile", "Dockerfile")).resolve() == DOCKERFILE


def test_building_services_do_not_share_an_image_tag(services):
    # `docker compose` v2 builds them in parallel and fails with "image already exists".
    tags = [s["image"] for s in services.values() if "build" in s and "image" in s]
    assert len(tags) == len(set(tags)), tags


def test_replicas_publish_their_own_host_ports(services):
    assert published_ports(services["inventory"]) == {(8000, PORT)}
    assert published_ports(services["inventory-2"]) == {(8001, PORT)}


@pytest.mark.parametrize("name", REPLICAS)
def test_replica_healthcheck_asks_for_readiness(services, name):
    check = command_text(services[name]["healthcheck"]["test"])
    assert f"127.0.0.1:{PORT}/readyz" in check, check
    assert "curl" not in check and "wget" not in check, "the slim image has neither"


# --- Dockerfile ---------------------------------------------------------------------------


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order; comments dropped, continuations joined."""
    joined, current = [], ""
    for line in DOCKERFILE.read_text().splitlines():
        if line.lstrip().startswith("#") or not line.strip():
            continue
        if line.rstrip().endswith("\\"):
            current += line.rstrip()[:-1] + " "
            continue
        joined.append(current + line)
        current = ""
    assert not current, "the Dockerfile ends inside a continuation"
    result = []
    for line in joined:
        keyword, _, arguments = line.strip().partition(" ")
        result.append((keyword.upper(), arguments.strip()))
    return result


def arguments(keyword: str) -> list[str]:
    return [args for kw, args in instructions() if kw == keyword]


def exec_form(keyword: str) -> list[str]:
    (args,) = arguments(keyword)
    argv = json.loads(args)  # exec form: signals reach the server, no shell in between
    assert isinstance(argv, list), args
    return argv


def strip_flags(args: str) -> list[str]:
    return [word for word in args.split() if not word.startswith("--")]


def test_dockerfile_starts_from_python_slim():
    build_args: dict[str, str] = {}
    for keyword, args in instructions():
        if keyword == "FROM":
            image = re.sub(r"\$\{?(\w+)\}?", lambda m: build_args.get(m.group(1), m.group(0)), args)
            break
        if keyword == "ARG" and "=" in args:
            name, value = args.split("=", 1)
            build_args[name] = value
    assert re.fullmatch(r"python:3\.1[1-9]-slim(-\w+)?", image), image


def test_dockerfile_runs_as_non_root():
    users = arguments("USER")
    assert users, "no USER: the service would run as root"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0"), users[-1]


def test_dockerfile_installs_the_project():
    copied: set[str] = set()
    for keyword, args in instructions():
        if keyword == "COPY":
            copied.update(s.rstrip("/") for s in strip_flags(args)[:-1])
        if keyword == "RUN" and re.search(
            r"\bpip install\s+([^&;|]*\s)?\"?\.(\[[a-z,]+\])?\"?(\s|$)", args
        ):
            missing = {"pyproject.toml", "README.md", "src"} - copied
            assert not missing, f"pip install . runs before {missing} are copied"
            return
    pytest.fail("no `pip install .`")


def test_dockerfile_serves_the_demo_from_its_copy():
    env: dict[str, str] = {}
    for args in arguments("ENV"):
        env.update(re.findall(r'(\w+)=("[^"]*"|\S+)', args))
    demo_dir = env.get("INVENTORY_DEMO_DIR", "").strip('"')
    assert demo_dir == "/app/frontend-demo"
    copies = [strip_flags(args) for args in arguments("COPY")]
    assert ["frontend-demo", demo_dir] in [[p.rstrip("/") for p in copy] for copy in copies], copies
    assert (ROOT / "frontend-demo" / "index.html").is_file()


def test_dockerfile_serves_on_all_interfaces():
    assert not arguments("ENTRYPOINT"), "an ENTRYPOINT would change what CMD runs"
    argv = exec_form("CMD")
    assert argv[:2] == ["inventory-graphql", "serve"], argv
    assert argv[argv.index("--host") + 1] == "0.0.0.0"
    assert int(argv[argv.index("--port") + 1]) == PORT
    assert str(PORT) in arguments("EXPOSE")[0].split()


def test_dockerfile_healthcheck_asks_if_the_process_lives():
    (check,) = arguments("HEALTHCHECK")
    assert f"127.0.0.1:{PORT}/livez" in check, check
    assert "curl" not in check and "wget" not in check, "the slim image has neither"


# --- .dockerignore ------------------------------------------------------------------------


def glob_regex(pattern: str) -> re.Pattern[str]:
    """A .dockerignore pattern (Go filepath.Match plus `**`) as a regular expression."""
    pattern = pattern.strip().strip("/").removeprefix("./")
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        elif pattern[i] == "[":
            end = pattern.index("]", i)
            out, i = out + "[" + pattern[i + 1 : end].replace("!", "^", 1) + "]", end + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out)


def dockerignore_patterns() -> list[str]:
    lines = DOCKERIGNORE.read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def ignored(path: str, patterns: list[str]) -> bool:
    """Whether docker leaves `path` out of the build context (a parent's exclusion counts)."""
    parts = path.split("/")
    prefixes = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
    result = False
    for pattern in patterns:
        regex = glob_regex(pattern.removeprefix("!"))
        if any(regex.fullmatch(prefix) for prefix in prefixes):
            result = not pattern.startswith("!")
    return result


def test_glob_regex_follows_dockerignore_rules():
    assert ignored("src/pkg/__pycache__/x.pyc", ["**/__pycache__"])
    assert ignored("a.pyc", ["**/*.py[cod]"])
    assert not ignored("a.py", ["**/*.py[cod]"])
    assert ignored("tests/artifacts/shot.png", ["tests/artifacts"])
    assert not ignored("tests/conftest.py", ["tests/artifacts"])
    assert not ignored("README.md", ["*.md", "!README.md"])


@pytest.mark.parametrize(
    "path",
    [".venv", ".git", "bench-results", "tests/artifacts", ".pytest_cache", ".ruff_cache"],
)
def test_dockerignore_leaves_out(path):
    assert ignored(path, dockerignore_patterns())


def test_dockerignore_keeps_what_the_image_copies():
    patterns = dockerignore_patterns()
    needed = []
    for args in arguments("COPY"):
        if "--from" in args:
            continue
        for source in strip_flags(args)[:-1]:
            path = ROOT / source
            assert path.exists(), f"COPY {source}: not in the checkout"
            files = [p for p in path.rglob("*") if p.is_file()] if path.is_dir() else [path]
            needed += [
                p.relative_to(ROOT).as_posix()
                for p in files
                if p.suffix in {".toml", ".md", ".py", ".sql", ".html", ".js", ".css"}
                and "__pycache__" not in p.parts
            ]
    assert {"pyproject.toml", "README.md", "frontend-demo/index.html"} <= set(needed)
    assert any(path.endswith(".sql") for path in needed), "the migrations are package data"
    assert [path for path in needed if ignored(path, patterns)] == []


# --- docker-compose config ----------------------------------------------------------------


def compose_command() -> list[str]:
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    if shutil.which("docker"):
        version = subprocess.run(
            ["docker", "compose", "version"], capture_output=True, timeout=30, check=False
        )
        if version.returncode == 0:
            return ["docker", "compose"]
    reason = "needs docker-compose or `docker compose` (apt-get install docker-compose)"
    if os.environ.get("INVENTORY_REQUIRE_COMPOSE") == "1":
        pytest.fail(reason)
    pytest.skip(reason)


def run_compose(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """`<compose> -f docker-compose.yml ARGS`, without any variable the test did not give."""
    clean = {
        k: v
        for k, v in os.environ.items()
        if k not in ("INVENTORY_ADMIN_TOKEN", "POSTGRES_PASSWORD") and not k.startswith("COMPOSE_")
    }
    empty = tmp_path / "empty.env"  # no developer's .env
    empty.write_text("")
    return subprocess.run(
        [*compose_command(), "--env-file", str(empty), "-f", str(COMPOSE_FILE), *args],
        cwd=ROOT,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_compose_file_is_valid_with_an_admin_token(tmp_path):
    result = run_compose(tmp_path, "config", "-q", INVENTORY_ADMIN_TOKEN="ops-test-token")
    assert result.returncode == 0, result.stderr


def test_compose_renders_the_token_and_database_into_both_replicas(tmp_path):
    result = run_compose(tmp_path, "config", INVENTORY_ADMIN_TOKEN="ops-test-token")
    assert result.returncode == 0, result.stderr
    rendered = yaml.safe_load(result.stdout)["services"]
    password = environment(rendered["postgres"])["POSTGRES_PASSWORD"]
    for name in REPLICAS:
        env = environment(rendered[name])
        assert env["INVENTORY_ADMIN_TOKEN"] == "ops-test-token"
        url = urlsplit(env["DATABASE_URL"])
        assert (url.hostname, url.password) == ("postgres", password)


def test_compose_refuses_to_run_without_an_admin_token(tmp_path):
    result = run_compose(tmp_path, "config", "-q")
    assert result.returncode != 0
    assert "INVENTORY_ADMIN_TOKEN" in result.stderr, result.stderr
