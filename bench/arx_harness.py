"""Build ARX from its public source with javac and run bench/arx/ArxBench.java beside ppml (issue 15).

The ARX column of bench/anonymization_bench.py used to hold two numbers recorded elsewhere; a ratio against those
says little when the machine differs. This module compiles ARX's core library (``src/main`` of
github:arx-deidentifier/arx) against the jars its repository carries and keeps one JVM open, so that the benchmark
can time ARX and ppml alternately, configuration by configuration, on the same cores under the same load.

Three of the repository's jars are absent from the stored snapshot (Git objects missing): pdfbox-app-2.0.1,
hadoop-core-1.2.1 and poi-ooxml-schemas-3.10. Only PDF certificates use pdfbox and only mahout's classifiers use
hadoop, so bench/arx/pdfbox-stubs/ holds compile-time stand-ins for the four types ARX names from them; nothing on
the anonymization path loads them. poi-ooxml-schemas is not needed to compile ``src/main``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
HARNESS = ROOT / "bench" / "arx" / "ArxBench.java"
STUBS = ROOT / "bench" / "arx" / "pdfbox-stubs"
#: Compiled ARX, harness and the data file; ignored by git (bench/arx/build/).
BUILD = ROOT / "bench" / "arx" / "build"
#: Where to look for ARX's source when neither --arx-src nor $ARX_SRC is given.
DEFAULT_SOURCES = (Path("/work/arx-src"), Path("/work/.mirror/arx-deidentifier+arx/repo"))


def find_source(explicit: str | None = None) -> Path | None:
    """ARX's source: a checkout (has src/main) or a bare git directory (has objects/), or None."""
    candidates = [Path(explicit)] if explicit else []
    if os.environ.get("ARX_SRC"):
        candidates.append(Path(os.environ["ARX_SRC"]))
    candidates += list(DEFAULT_SOURCES)
    for path in candidates:
        if (path / "src" / "main").is_dir() or (path / "objects").is_dir():
            return path
    return None


def _extract(git_dir: Path, target: Path) -> list[str]:
    """Write src/main and lib of HEAD into target, blob by blob, so that missing objects cost one file each."""
    listing = subprocess.run(
        ["git", "--git-dir", str(git_dir), "ls-tree", "-r", "HEAD", "--", "src/main", "lib"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    missing = []
    for line in listing:
        meta, path = line.split("\t", 1)
        sha = meta.split()[2]
        blob = subprocess.run(["git", "--git-dir", str(git_dir), "cat-file", "blob", sha], capture_output=True)
        if blob.returncode != 0:
            missing.append(path)
            continue
        (target / path).parent.mkdir(parents=True, exist_ok=True)
        (target / path).write_bytes(blob.stdout)
    return missing


def _checkout(source: Path, log: Any = print) -> Path:
    """A directory with src/main and lib: the source itself, or its files extracted from a bare git directory."""
    if not (source / "objects").is_dir():
        return source
    checkout = BUILD / "arx-src"
    if not (checkout / "src" / "main").is_dir():
        missing = _extract(source, checkout)
        log(f"ARX extracted from {source}; objects missing from the snapshot: {missing or 'none'}")
    return checkout


def _sources_and_stamp(checkout: Path) -> tuple[list[str], str]:
    """The files javac compiles and a stamp that changes when they do (so that ARX is compiled once)."""
    sources = sorted(str(p) for p in (checkout / "src" / "main").rglob("*.java"))
    sources += sorted(str(p) for p in STUBS.rglob("*.java"))
    digest = hashlib.sha256()
    for name in sources:
        digest.update(f"{name}\0{os.path.getsize(name)}\0{os.path.getmtime(name)}\n".encode())
    return sources, digest.hexdigest()


def is_built(source: Path) -> bool:
    """Whether ARX's classes are compiled and current, i.e. :func:`build` only has to compile the harness."""
    checkout = BUILD / "arx-src" if (source / "objects").is_dir() else source
    if not (checkout / "src" / "main").is_dir():
        return False
    stamp = BUILD / "classes" / ".stamp"
    return stamp.exists() and stamp.read_text() == _sources_and_stamp(checkout)[1]


def build(source: Path, log: Any = print) -> str:
    """Compile ARX (once per source revision) and the harness; returns the classpath to run ArxBench with."""
    if shutil.which("javac") is None or shutil.which("java") is None:
        raise RuntimeError("javac/java not found on PATH")
    checkout = _checkout(source, log)
    classes = BUILD / "classes"
    jars = sorted(str(p) for p in (checkout / "lib").rglob("*.jar"))
    if not is_built(checkout):
        sources, stamp = _sources_and_stamp(checkout)
        shutil.rmtree(classes, ignore_errors=True)
        classes.mkdir(parents=True)
        args_file = BUILD / "sources.txt"
        args_file.write_text("\n".join(sources) + "\n")
        log(f"compiling ARX: {len(sources)} files with javac (about a minute) ...")
        _javac(["-d", str(classes), "-cp", os.pathsep.join(jars), f"@{args_file}"])
        main = checkout / "src" / "main"
        for resource in main.rglob("*"):
            if resource.is_file() and resource.suffix != ".java":
                dest = classes / resource.relative_to(main)
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(resource, dest)
        (classes / ".stamp").write_text(stamp)
    harness = BUILD / "harness"
    harness.mkdir(parents=True, exist_ok=True)
    _javac(["-d", str(harness), "-cp", str(classes), str(HARNESS)])
    return os.pathsep.join([str(harness), str(classes), *jars])


def _javac(args: list[str]) -> None:
    done = subprocess.run(["javac", "-nowarn", "-encoding", "UTF-8", *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError("javac failed:\n" + done.stderr[-4000:])


def write_data(df: pd.DataFrame, columns: list[str]) -> Path:
    """The data set as ARX reads it: ';'-separated with a header, ARX's column order (its adult.csv)."""
    BUILD.mkdir(parents=True, exist_ok=True)
    path = BUILD / "adult.csv"
    df[columns].to_csv(path, sep=";", index=False)
    return path


class ArxSession:
    """One JVM that answers one configuration at a time, so that its JIT stays warm across configurations."""

    def __init__(self, classpath: str, data: Path, hierarchy_files: dict[str, Path], warmups: int, runs: int) -> None:
        command = ["java", "-cp", classpath, "ArxBench", str(data), str(warmups), str(runs)]
        for name, path in hierarchy_files.items():
            command += ["-h", f"{name}={path}"]
        self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def measure(self, k: int, suppression: float, sensitive: str | None = None, diversity: int = 3) -> dict[str, Any]:
        """ARX's median time, optimum (attribute -> level) and Loss for one configuration."""
        spec = f"{k},{suppression!r}" + (f",{sensitive},{diversity}" if sensitive else "")
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(spec + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"ArxBench exited (code {self.process.poll()}) on {spec}")
        return json.loads(line)

    def close(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        self.process.wait(timeout=60)


def agrees(levels: list[int], loss: float, qis: list[str], arx: dict[str, Any]) -> bool:
    """ppml's optimum equals ARX's: same level per attribute and the same Loss to 1e-9."""
    same_levels = [arx["transformation"].get(name) for name in qis] == list(levels)
    return same_levels and arx["loss"] is not None and abs(float(arx["loss"]) - loss) <= 1e-9
