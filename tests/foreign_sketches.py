"""KLL doubles sketches serialized by the Java Apache DataSketches library, for tests.

The pipeline builds and reads its sketches with the Python ``datasketches``
package (the C++ library). To check that it also ingests sketches built
elsewhere, :func:`java_kll_doubles` returns the bytes of
``KllDoublesSketch.toByteArray()`` from ``org.apache.datasketches:datasketches-java``,
run by the small program ``tests/java/KllBytes.java``.

As :mod:`pipeline.localbroker` does for Kafka, ``mvn`` fetches the jars from
Maven Central once into ``<repo>/.cache/datasketches-java/<version>/`` (a lock
serialises concurrent fetches, a marker says the fetch completed), and ``javac``
compiles the program once into the same cache; each call then costs one JVM start.
:func:`java_available` says whether all of that works here, and why not.
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import logging
import shutil
import struct
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import numpy.typing as npt

__all__ = [
    "DATASKETCHES_JAVA_VERSION",
    "ForeignSketchError",
    "Values",
    "java_available",
    "java_kll_doubles",
    "java_kll_doubles_many",
]

logger = logging.getLogger(__name__)

# The newest release that runs on Java 8 to 17 as it is: 7.x needs Java 17's incubating
# foreign-memory module switched on, 8.x and later a newer Java than our machines have.
DATASKETCHES_JAVA_VERSION = "6.2.0"
REPO_ROOT = Path(__file__).resolve().parents[1]
JAVA_SOURCE = Path(__file__).resolve().parent / "java" / "KllBytes.java"
CACHE_DIR = REPO_ROOT / ".cache" / "datasketches-java" / DATASKETCHES_JAVA_VERSION
_MAIN_CLASS = "KllBytes"
_FETCH_TIMEOUT_S = 900.0  # a cold Maven repository on a slow link
_COMPILE_TIMEOUT_S = 180.0
# C1 only and the serial collector: the program runs for well under a second, so
# the JVM's start-up, not its peak speed, is what a call pays for.
_JVM_FLAGS = ("-XX:TieredStopAtLevel=1", "-XX:+UseSerialGC", "-Xshare:auto", "-Xmx512m")
_LENGTH = struct.Struct(">i")
_HEADER = struct.Struct(">ii")  # k, count
_MAX_COUNT = 2**31 - 1  # the program reads the count as a Java int

# Nothing is built from this pom: it lists the jars for `mvn dependency:copy-dependencies`
# (datasketches-memory comes with datasketches-java). The plugin is pinned because Maven 3.8
# would otherwise fall back to maven-dependency-plugin 2.8 (2013).
Values = Sequence[float] | npt.NDArray[np.float64]
"""A flat sequence of numbers: a list, or a float64 array (taken as it is, no copy per item)."""

_POM = f"""<?xml version="1.0" encoding="UTF-8"?>
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>io.distributedmedian</groupId>
  <artifactId>datasketches-java-runtime</artifactId>
  <version>1.0.0</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency>
      <groupId>org.apache.datasketches</groupId>
      <artifactId>datasketches-java</artifactId>
      <version>{DATASKETCHES_JAVA_VERSION}</version>
    </dependency>
  </dependencies>
  <build>
    <pluginManagement>
      <plugins>
        <plugin>
          <groupId>org.apache.maven.plugins</groupId>
          <artifactId>maven-dependency-plugin</artifactId>
          <version>3.8.1</version>
        </plugin>
      </plugins>
    </pluginManagement>
  </build>
</project>
"""


class ForeignSketchError(RuntimeError):
    """The Java library could not be fetched, compiled against or run; the first line says why."""


def _tool(name: str, why: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise ForeignSketchError(f"'{name}' is not on PATH; {why} (apt-get install maven openjdk-17-jdk-headless)")
    return path


def _run(cmd: list[str], timeout_s: float, stdin: bytes = b"", text_stdout: bool = True) -> bytes:
    """Run ``cmd``; :class:`ForeignSketchError` (its first line the gist) if it times out or fails."""
    try:
        res = subprocess.run(cmd, input=stdin, capture_output=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired as exc:
        raise ForeignSketchError(f"timed out after {timeout_s:.0f} s: {' '.join(cmd)}") from exc
    if res.returncode != 0:
        # mvn reports on stdout, javac and java on stderr (java's stdout carries sketch bytes).
        output = (res.stdout if text_stdout else b"") + res.stderr
        lines = [line.strip() for line in output.decode(errors="replace").splitlines() if line.strip()]
        # The first error line names the cause (mvn's last ones only say how to get more detail).
        gist = next((line for line in lines if "ERROR" in line or "Exception" in line or "error:" in line), "")
        gist = gist or (lines[-1] if lines else "no output")
        raise ForeignSketchError(f"exit {res.returncode} from {Path(cmd[0]).name}: {gist}\n" + "\n".join(lines[-30:]))
    return res.stdout


@contextmanager
def _fetch_lock() -> Iterator[None]:
    # Parallel test sessions share the cache: one fetches and compiles, the others wait for it.
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    with open(CACHE_DIR / ".fetch.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _ensure_jars() -> Path:
    """Fetch datasketches-java and its dependencies into ``CACHE_DIR/libs`` (once); return that directory."""
    libs, marker = CACHE_DIR / "libs", CACHE_DIR / "libs.complete"
    # The marker holds the pom's hash, so a changed pom fetches again.
    digest = hashlib.sha256(_POM.encode()).hexdigest()
    if marker.is_file() and marker.read_text().strip() == digest:
        return libs
    mvn = _tool("mvn", f"Maven fetches datasketches-java {DATASKETCHES_JAVA_VERSION} once into {libs}")
    with _fetch_lock():
        if marker.is_file() and marker.read_text().strip() == digest:
            return libs
        # Fetch beside libs/ and swap it in: a failed fetch never leaves a half-filled libs/.
        new, old, pom = CACHE_DIR / "libs.partial", CACHE_DIR / "libs.old", CACHE_DIR / "pom.xml"
        for d in (new, old):
            shutil.rmtree(d, ignore_errors=True)
        pom.write_text(_POM)
        logger.info("fetching datasketches-java %s into %s", DATASKETCHES_JAVA_VERSION, libs)
        started = time.monotonic()
        cmd = [mvn, "-q", "-B", "-Dstyle.color=never", "-f", str(pom), "dependency:copy-dependencies"]
        _run([*cmd, f"-DoutputDirectory={new}"], _FETCH_TIMEOUT_S)
        if not any(new.glob("datasketches-java-*.jar")) or not any(new.glob("datasketches-memory-*.jar")):
            raise ForeignSketchError(f"mvn succeeded but left no datasketches-java and -memory jars in {new}")
        if libs.exists():
            libs.rename(old)
        new.rename(libs)
        shutil.rmtree(old, ignore_errors=True)
        marker.write_text(digest + "\n")
        logger.info("fetched the jars in %.1f s", time.monotonic() - started)
    return libs


def _ensure_classes(libs: Path) -> Path:
    """Compile ``KllBytes.java`` against ``libs`` (once per source and version); return the class directory."""
    try:
        source = JAVA_SOURCE.read_bytes()
    except OSError as exc:
        raise ForeignSketchError(f"cannot read {JAVA_SOURCE}: {exc}") from exc
    # Named by the source's hash: an edited program compiles anew, and a directory that
    # exists is complete (it is renamed into place only after javac succeeded).
    classes = CACHE_DIR / f"classes-{hashlib.sha256(source).hexdigest()[:16]}"
    if (classes / f"{_MAIN_CLASS}.class").is_file():
        return classes
    javac = _tool("javac", "it compiles tests/java/KllBytes.java once")
    with _fetch_lock():
        if (classes / f"{_MAIN_CLASS}.class").is_file():
            return classes
        partial = classes.with_name(classes.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        _run([javac, "-nowarn", "-cp", f"{libs}/*", "-d", str(partial), str(JAVA_SOURCE)], _COMPILE_TIMEOUT_S)
        partial.rename(classes)
        for stale in CACHE_DIR.glob("classes-*"):  # from earlier versions of the program
            if stale != classes:
                shutil.rmtree(stale, ignore_errors=True)
    return classes


@functools.cache
def _classpath() -> str:
    _tool("java", "it runs datasketches-java")
    libs = _ensure_jars()
    # Java expands the "dir/*" wildcard itself; no shell is involved.
    return f"{_ensure_classes(libs)}:{libs}/*"


@functools.cache
def java_available() -> str | None:
    """``None`` when :func:`java_kll_doubles` can run here (fetching and compiling first if
    need be), else a one-line reason: a missing ``java``/``javac``/``mvn``, a failed fetch."""
    try:
        _classpath()
    except ForeignSketchError as exc:
        return str(exc).splitlines()[0]
    return None


def java_kll_doubles_many(sketches: Sequence[tuple[Values, int]], timeout_s: float = 120.0) -> list[bytes]:
    """``KllDoublesSketch.toByteArray()`` of one Java sketch per ``(values, k)``, built by
    ``newHeapInstance(k)`` then ``update(v)`` for each value in order; one JVM for all of them.

    Java's sketch, like the Python one, ignores NaN; it refuses a ``k`` outside 8 .. 65535
    (:class:`ForeignSketchError` with its message). Java picks its compaction offsets at
    random, so the same input need not give the same bytes twice."""
    payload = bytearray()
    for values, k in sketches:
        if not 0 < k <= _MAX_COUNT:
            raise ValueError(f"k={k} does not fit the program's int")
        doubles = np.asarray(values, dtype=">f8")  # big-endian, as java.io.DataInputStream reads
        if doubles.ndim != 1 or len(doubles) > _MAX_COUNT:
            raise ValueError(f"values must be a flat sequence of at most {_MAX_COUNT} numbers")
        payload += _HEADER.pack(k, len(doubles)) + doubles.tobytes()
    if not sketches:
        return []
    java = shutil.which("java") or "java"
    out = _run([java, *_JVM_FLAGS, "-cp", _classpath(), _MAIN_CLASS], timeout_s, bytes(payload), text_stdout=False)
    result, pos = [], 0
    for _ in sketches:
        if pos + _LENGTH.size > len(out):
            raise ForeignSketchError(f"{_MAIN_CLASS} wrote fewer sketches than the {len(sketches)} asked")
        (length,) = _LENGTH.unpack_from(out, pos)
        pos += _LENGTH.size
        result.append(bytes(out[pos : pos + length]))
        pos += length
    if pos != len(out) or any(len(r) == 0 for r in result):
        raise ForeignSketchError(f"{_MAIN_CLASS} wrote {len(out)} bytes that do not frame {len(sketches)} sketches")
    return result


def java_kll_doubles(values: Values, k: int = 200) -> bytes:
    """``KllDoublesSketch.toByteArray()`` of a Java sketch of ``k`` updated with ``values`` in order."""
    return java_kll_doubles_many([(values, k)])[0]
