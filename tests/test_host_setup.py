"""scripts/host.sh with COMFYUI_DIR (a user's own ComfyUI and Python) adds what is missing and changes nothing else.

The user's Python here is a throwaway venv whose torch, torchvision and torchaudio are tiny stub distributions
with version numbers of their own (no test host pins them). pip runs offline against a folder of stub wheels that
mirrors the real dependency metadata (name, version, Requires-Dist, Provides-Extra) of every distribution the pack's
requirements pull into the Python running this test: pip's resolver sees the same dependency graph as on PyPI, and
each install takes seconds and no network. The assertions are on what the real scripts/host.sh does to that venv.
"""

import importlib.metadata
import io
import json
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from conftest import skip_unless_host_required
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[1]
REQUIREMENT_FILES = (REPO / "requirements.txt", REPO / "tests" / "requirements.txt")
HOST_PINS = REPO / "scripts" / "host-requirements.txt"
OLDEST_PINS = REPO / "scripts" / "oldest-requirements.txt"  # the lower end of each range in requirements.txt
# The user's own torch builds: versions that no host pins (checked below), new enough for open_clip_torch (torch>=2.0).
USER_TORCH = {"torch": "2.10.0", "torchvision": "0.25.0", "torchaudio": "2.10.0"}
# Too old for open_clip_torch's torch>=2.0: host.sh must refuse instead of upgrading it.
OLD_TORCH = {"torch": "1.13.1", "torchvision": "0.14.1", "torchaudio": "0.13.1"}


def requirement_lines(path: Path) -> list[str]:
    lines = (line.split("#", 1)[0].strip() for line in path.read_text().splitlines())
    return [line for line in lines if line]


def requirements(path: Path) -> dict[str, Requirement]:
    return {canonicalize_name(requirement.name): requirement for requirement in map(Requirement, requirement_lines(path))}


def pinned_versions(path: Path) -> dict[str, str]:
    """name -> version of a file of exact pins (`name==version` lines only)."""
    pins = {}
    for name, requirement in requirements(path).items():
        (specifier,) = requirement.specifier
        assert specifier.operator == "==", f"{path.name}: {requirement} is not an exact pin"
        pins[name] = specifier.version
    return pins


def installed_closure() -> list[importlib.metadata.Distribution]:
    """Every distribution installed in this Python that the pack's requirements need, with their dependencies (as pip
    would walk them: markers evaluated here, extras followed)."""
    environment = default_environment()
    found: dict[str, importlib.metadata.Distribution] = {}
    pending = [Requirement(line) for path in REQUIREMENT_FILES for line in requirement_lines(path)]
    seen: set[tuple[str, frozenset]] = set()
    while pending:
        requirement = pending.pop()
        name = canonicalize_name(requirement.name)
        key = (name, frozenset(requirement.extras))
        if key in seen:
            continue
        seen.add(key)
        try:
            distribution = found.get(name) or importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            skip_unless_host_required(f"the mirror is made from this Python's packages, and {name} is not installed here")
        found[name] = distribution
        for line in distribution.requires or ():
            dependency = Requirement(line)
            extras = {""} | set(requirement.extras)
            if dependency.marker is None or any(
                dependency.marker.evaluate(dict(environment, extra=extra)) for extra in extras
            ):
                pending.append(dependency)
    return list(found.values())


def write_stub_wheel(folder: Path, name: str, version: str, metadata_lines=()) -> None:
    """A wheel holding only its .dist-info: enough for pip to resolve, install and list it."""
    stem = f"{re.sub(r'[-_.]+', '_', name)}-{version}"
    info = f"{stem}.dist-info"
    files = {
        f"{info}/METADATA": "\n".join(["Metadata-Version: 2.1", f"Name: {name}", f"Version: {version}", *metadata_lines])
        + "\n",
        f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test_host_setup\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for path, text in files.items():
            archive.writestr(path, text)
        archive.writestr(f"{info}/RECORD", "".join(f"{path},,\n" for path in files) + f"{info}/RECORD,,\n")
    (folder / f"{stem}-py3-none-any.whl").write_bytes(buffer.getvalue())


@pytest.fixture(scope="module")
def mirror(tmp_path_factory) -> Path:
    """The offline index: a stub wheel for each distribution of installed_closure(), with its real metadata."""
    folder = tmp_path_factory.mktemp("mirror")
    for distribution in installed_closure():
        metadata = distribution.metadata
        lines = [f"Provides-Extra: {extra}" for extra in metadata.get_all("Provides-Extra") or ()]
        lines += [f"Requires-Dist: {line}" for line in metadata.get_all("Requires-Dist") or ()]
        write_stub_wheel(folder, metadata["Name"], distribution.version, lines)
    return folder


def offline_pip_environment(mirror: Path) -> dict:
    """pip reads only the mirror: no configuration files, no index, no cache."""
    environment = {key: value for key, value in os.environ.items() if not key.startswith("PIP_")}
    environment.pop("COMFYUI_PYTHON", None)
    environment.update(
        PIP_CONFIG_FILE=os.devnull, PIP_NO_INDEX="1", PIP_FIND_LINKS=str(mirror), PIP_NO_CACHE_DIR="1",
        PIP_DISABLE_PIP_VERSION_CHECK="1",
    )  # fmt: skip
    return environment


def user_setup(tmp_path: Path, mirror: Path, torch_versions: dict) -> tuple[Path, Path, dict]:
    """A fake ComfyUI folder and a venv with stub torch, torchvision and torchaudio (no dependencies)."""
    comfyui = tmp_path / "ComfyUI"
    comfyui.mkdir()
    (comfyui / "main.py").write_text("")
    (comfyui / "folder_paths.py").write_text("")
    stubs = tmp_path / "user-builds"
    stubs.mkdir()
    for name, version in torch_versions.items():
        write_stub_wheel(stubs, name, version)
    subprocess.run([sys.executable, "-m", "venv", str(tmp_path / "venv")], check=True)
    python = tmp_path / "venv" / "bin" / "python"
    environment = offline_pip_environment(mirror)
    wanted = [f"{name}=={version}" for name, version in torch_versions.items()]
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--find-links", str(stubs), *wanted],
                   check=True, env=environment)  # fmt: skip
    return comfyui, python, environment


def pip_list(python: Path, environment: dict) -> dict[str, str]:
    listing = subprocess.run([str(python), "-m", "pip", "list", "--format=json"], check=True, capture_output=True,
                             text=True, env=environment)  # fmt: skip
    return {canonicalize_name(item["name"]): item["version"] for item in json.loads(listing.stdout)}


def run_host_sh(comfyui: Path, python: Path, environment: dict) -> subprocess.CompletedProcess:
    environment = dict(environment, COMFYUI_DIR=str(comfyui), COMFYUI_PYTHON=str(python))
    return subprocess.run(["bash", str(REPO / "scripts" / "host.sh")], capture_output=True, text=True,
                          env=environment, timeout=600)  # fmt: skip


def test_user_torch_versions_differ_from_the_host_pins():
    """Otherwise a script that installs the host's pins could leave the stubs' versions as they were by chance."""
    pins = pinned_versions(HOST_PINS)
    for name, version in {**USER_TORCH, **OLD_TORCH}.items():
        assert pins.get(name) != version, f"{HOST_PINS.name} pins {name}=={version}: pick another stub version"


def optional_requirements() -> dict[str, Requirement]:
    """The optional requirements of pyproject.toml's extras (FaceID's insightface and onnxruntime)."""
    import tomllib

    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    return {canonicalize_name(Requirement(line).name): Requirement(line) for lines in extras.values() for line in lines}


def test_the_faceid_error_names_the_optional_requirements():
    """The pip command that the FaceID nodes' refusal gives installs exactly pyproject.toml's `faceid` extra."""
    from decoupled_ipadapter.ipadapter_core.face_analysis import FACEID_PIP

    quoted = re.findall(r'"([^"]+)"', FACEID_PIP)
    assert FACEID_PIP.startswith("pip install ") and {str(Requirement(line)) for line in quoted} == {
        str(requirement) for requirement in optional_requirements().values()
    }


def test_the_pack_requires_ranges_whose_two_ends_are_tested():
    """requirements.txt goes into the user's ComfyUI Python, beside other packs: ranges, not pins. The host pins a
    version inside each range (the newest the tests prove), and oldest-requirements.txt pins each range's lower end
    (which `make test` lays over the host for the tests that use it)."""
    pack = {**requirements(REPO / "requirements.txt"), **optional_requirements()}
    host, oldest = pinned_versions(HOST_PINS), pinned_versions(OLDEST_PINS)
    assert set(oldest) == set(pack), "oldest-requirements.txt must name exactly the pack's requirements (and its extras')"
    for name, requirement in pack.items():
        operators = {specifier.operator: specifier.version for specifier in requirement.specifier}
        assert set(operators) == {">=", "<"}, f"requirements.txt: {requirement} is not a range '>=oldest,<next major'"
        assert oldest[name] == operators[">="], f"oldest-requirements.txt tests {name}=={oldest[name]}, not {requirement}'s end"
        assert requirement.specifier.contains(host[name]), f"the host's {name}=={host[name]} is outside {requirement}"


def test_comfyui_dir_setup_adds_the_requirements_and_keeps_torch(tmp_path, mirror):
    comfyui, python, environment = user_setup(tmp_path, mirror, USER_TORCH)
    before = pip_list(python, environment)
    assert {name: before.get(name) for name in USER_TORCH} == USER_TORCH

    result = run_host_sh(comfyui, python, environment)
    after = pip_list(python, environment)

    assert result.returncode == 0, result.stderr
    assert {name: after.get(name) for name in USER_TORCH} == USER_TORCH, "host.sh moved torch/torchvision/torchaudio"
    assert {name: after.get(name) for name in before} == before, "host.sh changed an installed package"
    # What was missing is there now, at the versions the requirement files pin, and host.sh says what it added.
    for path in REQUIREMENT_FILES:
        for name, requirement in requirements(path).items():
            assert requirement.specifier.contains(after.get(name, "0")), f"{name} from {path.name} was not installed"
    added = [line for line in result.stderr.splitlines() if line.startswith(f"[host] added to {python}:")]
    assert len(added) == 1 and "open_clip_torch==3.3.0" in added[0], result.stderr
    assert f"COMFYUI_DIR={comfyui}" in result.stdout.splitlines()
    assert f"COMFYUI_PYTHON={python}" in result.stdout.splitlines()


def test_comfyui_dir_setup_refuses_to_upgrade_torch(tmp_path, mirror):
    """open_clip_torch needs torch>=2.0: with torch 1.13.1 installed, host.sh stops with one line and changes
    nothing instead of upgrading torch (the mirror has a newer one it could take)."""
    comfyui, python, environment = user_setup(tmp_path, mirror, OLD_TORCH)
    before = pip_list(python, environment)

    result = run_host_sh(comfyui, python, environment)

    assert pip_list(python, environment) == before, "host.sh changed the user's Python"
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("[host] cannot add the pack's requirements to"), result.stderr
    assert "torch" in lines[-1] and "nothing was changed" in lines[-1], lines[-1]
