"""Does every pin of the lock install on every supported platform and Python, hash-checked?

    .venv/bin/python tools/lock_check.py requirements.lock requirements-torch.lock   (make lock-check)

For each platform and Python below, each pin whose environment marker applies must have a file on the
package index that pip would take there (a wheel whose tags that interpreter accepts, or the sdist of
a release that has no wheels) and whose sha256 is among the pin's hashes in the lock. The index is read
through its JSON pages (PEP 691), one request per package, never a download of the files. A failure
names the pin, the platform and the Python; the exit status is 1.
"""

import argparse
import re
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import requests
from packaging import tags
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import InvalidSdistFilename, InvalidWheelFilename, canonicalize_name
from packaging.utils import parse_sdist_filename, parse_wheel_filename
from packaging.version import Version

INDEX = "https://pypi.org/simple"
PYTHONS = [(3, 11), (3, 12), (3, 13), (3, 14)]
# glibc 2.28 (Debian 10, RHEL 8, Ubuntu 18.10 and later): torch's wheels are manylinux_2_28.
GLIBC_MINOR = 28
# macOS 14: torch's arm64 wheels are macosx_14_0.
MACOS = (14, 0)


def manylinux(arch):
    """The manylinux platform tags a glibc 2.GLIBC_MINOR system accepts, newest first."""
    legacy = {17: "manylinux2014", 12: "manylinux2010", 5: "manylinux1"}
    out = []
    for minor in range(GLIBC_MINOR, 4, -1):
        out.append(f"manylinux_2_{minor}_{arch}")
        if minor in legacy and (minor == 17 or arch in ("x86_64", "i686")):
            out.append(f"{legacy[minor]}_{arch}")
    return out


@dataclass(frozen=True)
class Platform:
    name: str
    sys_platform: str
    platform_system: str
    machine: str
    platform_tags: tuple

    def environment(self, python):
        """The marker environment of CPython `python` (major, minor) here."""
        version = f"{python[0]}.{python[1]}"
        return {"sys_platform": self.sys_platform, "platform_system": self.platform_system,
                "platform_machine": self.machine, "os_name": "posix", "implementation_name": "cpython",
                "platform_python_implementation": "CPython", "python_version": version,
                "python_full_version": f"{version}.0", "implementation_version": f"{version}.0",
                "platform_release": "", "platform_version": "", "extra": ""}

    def tags(self, python):
        """Every wheel tag CPython `python` accepts on this platform."""
        interpreter = f"cp{python[0]}{python[1]}"
        return (set(tags.cpython_tags(python, [interpreter], self.platform_tags))
                | set(tags.compatible_tags(python, interpreter, self.platform_tags)))


PLATFORMS = [
    Platform("linux-x86_64", "linux", "Linux", "x86_64", tuple(manylinux("x86_64"))),
    Platform("linux-aarch64", "linux", "Linux", "aarch64", tuple(manylinux("aarch64"))),
    Platform("macos-arm64", "darwin", "Darwin", "arm64", tuple(tags.mac_platforms(MACOS, "arm64"))),
]


@dataclass(frozen=True)
class Pin:
    requirement: Requirement
    hashes: frozenset

    @property
    def version(self):
        return Version(next(iter(self.requirement.specifier)).version)

    def __str__(self):
        return f"{self.requirement.name}=={self.version}"


def parse_lock(text, path="the lock"):
    """The pins of a hashed requirements file (`name==version ; marker --hash=sha256:...`)."""
    pins, next_line = [], 1
    for entry in re.split(r"(?<!\\)\n", text):  # one entry, its hashes on continuation lines
        number, next_line = next_line, next_line + 1 + entry.count("\\\n")
        line = entry.split(" #", 1)[0].replace("\\\n", " ").strip()
        if not line or line.startswith("#"):
            continue
        requirement_text = line.split(" --hash=", 1)[0].strip()
        hashes = frozenset(re.findall(r"--hash=sha256:([0-9a-f]{64})", line))
        requirement = Requirement(requirement_text)
        specifiers = list(requirement.specifier)
        if len(specifiers) != 1 or specifiers[0].operator != "==" or not hashes:
            raise ValueError(f"{path}: line {number} ({requirement_text!r}) is not `name==version` with "
                             f"sha256 hashes: regenerate it with `make lock`")
        pins.append(Pin(requirement, hashes))
    return pins


def pypi_files(index=INDEX):
    """A function name -> the index's file list for it, each {"filename", "hashes", "requires-python"}."""
    session = requests.Session()
    session.headers["Accept"] = "application/vnd.pypi.simple.v1+json"

    def files(name):
        response = session.get(f"{index}/{canonicalize_name(name)}/", timeout=60)
        response.raise_for_status()
        return response.json()["files"]
    return files


def release_files(files, version):
    """(wheel tags or None for an sdist, sha256, requires-python) of each file of release `version`."""
    out = []
    for file in files:
        filename = file["filename"]
        try:
            if filename.endswith(".whl"):
                _, file_version, _, file_tags = parse_wheel_filename(filename)
            else:
                _, file_version = parse_sdist_filename(filename)
                file_tags = None
        except (InvalidWheelFilename, InvalidSdistFilename):
            continue  # eggs, installers: pip takes neither
        if file_version == version:
            out.append((file_tags, file["hashes"].get("sha256"), file.get("requires-python") or ""))
    return out


def problems(pins, files_by_name, platforms=PLATFORMS, pythons=PYTHONS):
    """Each (pin, platform, Python) that has no installable file whose sha256 the lock holds, in words."""
    out = []
    for pin in pins:
        release = release_files(files_by_name[canonicalize_name(pin.requirement.name)], pin.version)
        has_wheels = any(file_tags is not None for file_tags, _, _ in release)
        for platform in platforms:
            for python in pythons:
                marker = pin.requirement.marker
                if marker is not None and not marker.evaluate(platform.environment(python)):
                    continue
                accepted, full = platform.tags(python), f"{python[0]}.{python[1]}.0"
                candidates = [sha for file_tags, sha, requires in release
                              if SpecifierSet(requires).contains(full, prereleases=True)
                              and (bool(file_tags and file_tags & accepted) if has_wheels else file_tags is None)]
                where = f"{pin} on {platform.name}, Python {python[0]}.{python[1]}"
                if not candidates:
                    out.append(f"{where}: the index has no file for it")
                elif not pin.hashes & set(candidates):
                    out.append(f"{where}: no sha256 of its {len(candidates)} file(s) is in the lock")
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("locks", nargs="+", help="hashed requirements files (requirements.lock ...)")
    parser.add_argument("--index", default=INDEX, help=f"a PEP 691 simple index (default {INDEX})")
    args = parser.parse_args(argv)
    start = time.monotonic()
    pins = [pin for path in args.locks for pin in parse_lock(open(path, encoding="utf-8").read(), path)]
    names = sorted({canonicalize_name(pin.requirement.name) for pin in pins})
    with ThreadPoolExecutor(8) as pool:
        files_by_name = dict(zip(names, pool.map(pypi_files(args.index), names)))
    found = problems(pins, files_by_name)
    for problem in found:
        print(problem, file=sys.stderr)
    combos = ", ".join(p.name for p in PLATFORMS) + "; Python " + ", ".join(f"{a}.{b}" for a, b in PYTHONS)
    print(f"{len(pins)} pins ({len(names)} packages) on {combos}: {len(found)} problem(s), "
          f"{time.monotonic() - start:.0f} s")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
