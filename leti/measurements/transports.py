"""How `leti measure` reaches the machine that runs a tool: `--adb [SERIAL]` (Android),
`--ssh HOST` (Linux boards), `--local` (this machine).

Every command is an argument list handed to `subprocess.run` without a shell. adb and ssh join
the words of the remote command with spaces and hand them to the device's shell, so each word
is quoted for that shell (`shlex.quote`) and none can run as code there; a host or serial that
looks like an option is refused. Files go to a folder of leti's own on the device
(`/data/local/tmp/leti` over adb, `/tmp/leti` over ssh) under names leti makes (letters,
digits, `._-` only).

A device that disappears (adb's "device not found", "no devices", "offline"; ssh's exit status
255) raises `DeviceError` for the graph being measured: the campaign records it and goes on.
"""

from __future__ import annotations

import hashlib
import re
import shlex
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from leti.core.errors import DeviceError, MeasurementError

ADB_DIR = "/data/local/tmp/leti"
SSH_DIR = "/tmp/leti"
_SAFE_ARG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.:@%+\[\]-]*$")
_ADB_GONE = re.compile(
    r"device '?[^']*'? not found|no devices/emulators found|device offline|device unauthorized|"
    r"error: closed|protocol fault|connection reset",
    re.I,
)


@dataclass(frozen=True)
class Output:
    rc: int
    stdout: str
    stderr: str

    @property
    def text(self) -> str:
        """stdout then stderr: the TFLite tools log to stderr, ncnn prints its results there."""
        return f"{self.stdout}\n{self.stderr}"

    def tail(self, n: int = 600) -> str:
        return (self.stderr.strip() or self.stdout.strip())[-n:]


def run_argv(argv: list[str], timeout: float, what: str) -> Output:
    """Run an argument list (no shell) and capture its output; DeviceError when it cannot
    start or runs past `timeout` seconds."""
    try:
        done = subprocess.run(
            argv, capture_output=True, text=True, errors="replace", timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise DeviceError(f"{what} timed out after {timeout:.0f} s") from exc
    except OSError as exc:
        raise DeviceError(f"{what} could not run: {exc}") from exc
    return Output(done.returncode, done.stdout or "", done.stderr or "")


def remote_name(path: Path) -> str:
    """A device-side file name for `path`: its stem made safe, plus a short content-free hash
    of the full path so that two graphs of the same name in different folders do not clash."""
    stem = re.sub(r"[^A-Za-z0-9_.-]", "_", path.stem).lstrip(".-") or "model"
    digest = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:8]
    return f"{stem[:60]}-{digest}{path.suffix.lower()}"


def _checked(text: str, what: str) -> str:
    if not text or not _SAFE_ARG.match(text):
        raise MeasurementError(
            f"bad {what} {text!r}: use letters, digits and . _ - : @ only, not starting with '-'"
        )
    return text


class Local:
    """This machine: nothing to copy, the argument list runs as it is."""

    kind = "local"

    def __init__(self) -> None:
        self.where = "local"

    def connect(self) -> None:
        return None

    def stage(self, path: Path) -> str:
        return str(Path(path).resolve())

    def execute(self, argv: list[str], timeout: float, what: str) -> Output:
        return run_argv(argv, timeout, what)


class Adb:
    """An Android device over adb: `adb [-s SERIAL] push|shell`."""

    kind = "adb"

    def __init__(self, serial: str | None = None, remote_dir: str = ADB_DIR) -> None:
        self.serial = _checked(serial, "adb serial") if serial else None
        self.remote_dir = remote_dir
        self.where = f"adb:{serial}" if serial else "adb"
        self._adb: str | None = None

    def _base(self) -> list[str]:
        if self._adb is None:
            self._adb = shutil.which("adb")
            if self._adb is None:
                raise DeviceError(
                    "adb not found on PATH: install Android platform-tools, or use --from-log"
                )
        return [self._adb, *(["-s", self.serial] if self.serial else [])]

    def _gone(self, out: Output, what: str) -> None:
        if out.rc != 0 and _ADB_GONE.search(out.text):
            who = f"device {self.serial!r}" if self.serial else "the device"
            raise DeviceError(f"{who} disappeared during {what}: {out.tail()}")

    def connect(self) -> None:
        state = run_argv([*self._base(), "get-state"], 30, "adb get-state")
        if state.rc != 0 or state.stdout.strip() != "device":
            who = f"device {self.serial!r}" if self.serial else "a device"
            raise DeviceError(f"{who} not found or not ready: {state.tail()}")
        if self.serial is None:
            serial = run_argv([*self._base(), "get-serialno"], 30, "adb get-serialno")
            if serial.rc == 0 and _SAFE_ARG.match(serial.stdout.strip()):
                self.serial = serial.stdout.strip()
                self.where = f"adb:{self.serial}"
        made = self.execute(["mkdir", "-p", self.remote_dir], 60, "mkdir on the device")
        if made.rc != 0:
            raise DeviceError(f"cannot create {self.remote_dir} on the device: {made.tail()}")

    def stage(self, path: Path) -> str:
        remote = f"{self.remote_dir}/{remote_name(Path(path))}"
        out = run_argv([*self._base(), "push", str(path), remote], 600, "adb push")
        self._gone(out, "adb push")
        if out.rc != 0:
            raise DeviceError(f"adb push {Path(path).name} failed: {out.tail()}")
        return remote

    def execute(self, argv: list[str], timeout: float, what: str) -> Output:
        out = run_argv([*self._base(), "shell", *(shlex.quote(a) for a in argv)], timeout, what)
        self._gone(out, what)
        return out


class Ssh:
    """A Linux board over ssh (keys, no password prompt): `ssh HOST`, `scp`."""

    kind = "ssh"

    def __init__(self, host: str, remote_dir: str = SSH_DIR) -> None:
        self.host = _checked(host, "ssh host")
        self.remote_dir = remote_dir
        self.where = f"ssh:{host}"
        self._opts = ["-o", "BatchMode=yes", "-o", "ConnectTimeout=20"]

    def _tool(self, name: str) -> str:
        found = shutil.which(name)
        if found is None:
            raise DeviceError(f"{name} not found on PATH: install an OpenSSH client")
        return found

    def _gone(self, out: Output, what: str) -> None:
        if out.rc == 255:  # ssh's own failure: the connection, not the remote command
            raise DeviceError(f"{self.host} unreachable during {what}: {out.tail()}")

    def connect(self) -> None:
        made = self.execute(["mkdir", "-p", self.remote_dir], 60, "mkdir on the board")
        if made.rc != 0:
            raise DeviceError(f"cannot create {self.remote_dir} on {self.host}: {made.tail()}")

    def stage(self, path: Path) -> str:
        remote = f"{self.remote_dir}/{remote_name(Path(path))}"
        argv = [self._tool("scp"), "-q", *self._opts, str(path), f"{self.host}:{remote}"]
        out = run_argv(argv, 600, "scp")
        if out.rc != 0:
            raise DeviceError(f"scp {Path(path).name} to {self.host} failed: {out.tail()}")
        return remote

    def execute(self, argv: list[str], timeout: float, what: str) -> Output:
        cmd = [self._tool("ssh"), *self._opts, self.host, *(shlex.quote(a) for a in argv)]
        out = run_argv(cmd, timeout, what)
        self._gone(out, what)
        return out


Transport = Local | Adb | Ssh
