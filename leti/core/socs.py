"""The SoC registry: ids, aliases and hardware descriptors, read from `data/socs.json`, and the
descriptors of GPUs outside it (`GpuSpec`, from `data/ncnn_gpus.json`: the ncnn benchmark's
mobile GPUs).

Descriptors feed the transfer model, so they live in data rather than code: adding a SoC is a
JSON edit, not a release.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

from leti.core.errors import SocRegistryError, UnknownRuntimeError, UnknownSocError
from leti.core.store import atomic_write_json


@dataclass(frozen=True)
class Soc:
    id: str
    name: str
    gpu: str
    vendor: str
    family: str
    arch_gen: float
    gpu_mhz: float
    fp32_gflops: float
    fp16_gflops: float
    dram_gbps: float
    aliases: tuple[str, ...]
    phones: dict[str, tuple[str, ...]]  # runtime -> data column prefixes measured on this SoC
    #: Whether the GPU transfer model may answer for it (False for a CPU such as `host`).
    transfer: bool = True

    @property
    def measured_runtimes(self) -> tuple[str, ...]:
        return tuple(self.phones)


def _norm(text: str) -> str:
    return re.sub(r"[^a-z0-9]", "", text.lower())


@cache
def _raw() -> dict:
    return json.loads(resources.files("leti").joinpath("data/socs.json").read_text("utf-8"))


def _soc(sid: str, d: dict) -> Soc:
    return Soc(
        id=sid,
        name=d["name"],
        gpu=d["gpu"],
        vendor=d["vendor"],
        family=d["family"],
        arch_gen=float(d["arch_gen"]),
        gpu_mhz=float(d["gpu_mhz"]),
        fp32_gflops=float(d["fp32_gflops"]),
        fp16_gflops=float(d["fp16_gflops"]),
        dram_gbps=float(d["dram_gbps"]),
        aliases=tuple(d["aliases"]),
        phones={rt: tuple(p) for rt, p in d["phones"].items()},
        transfer=bool(d.get("transfer", True)),
    )


@cache
def all_socs() -> dict[str, Soc]:
    return {sid: _soc(sid, d) for sid, d in _raw()["socs"].items()}


@cache
def _alias_index() -> dict[str, str]:
    index: dict[str, str] = {}
    for sid, soc in all_socs().items():
        for key in (sid, soc.name, *soc.aliases):
            index[_norm(key)] = sid
    return index


def resolve(name: str) -> Soc:
    """Map an id or alias ("Snapdragon 888", "SM8350", "sd888") to its SoC, or fail loudly."""
    sid = _alias_index().get(_norm(name or ""))
    if sid is None:
        known = ", ".join(sorted(all_socs()))
        raise UnknownSocError(f"unknown SoC {name!r}; known SoCs: {known}", detail=known)
    return all_socs()[sid]


# --------------------------------------------------------------------------------------------
# User-defined SoCs: `<models-dir>/socs.json`, merged with the bundled registry

USER_SOCS_FILE = "socs.json"
USER_SOCS_FORMAT = "leti-user-socs/1"
FAMILIES = ("adreno", "mali", "powervr", "apple", "other")
_ID_RE = re.compile(r"^[a-z0-9]+(?:-[a-z0-9]+)*$")
#: The vendor of each family (a user SoC's `vendor`).
_VENDORS = {"adreno": "qualcomm", "mali": "arm", "powervr": "imagination", "apple": "apple"}


@dataclass(frozen=True)
class Registry:
    """The SoCs one models dir knows: the bundled registry plus that dir's user-defined SoCs."""

    socs: dict[str, Soc]
    user: frozenset[str] = field(default_factory=frozenset)

    def all(self) -> dict[str, Soc]:
        return dict(self.socs)

    def is_user(self, sid: str) -> bool:
        return sid in self.user

    def resolve(self, name: str) -> Soc:
        if not self.user:
            return resolve(name)
        key = _norm(name or "")
        for sid in sorted(self.user):
            soc = self.socs[sid]
            if key in {_norm(k) for k in (sid, soc.name, *soc.aliases)}:
                return soc
        try:
            return resolve(name)
        except UnknownSocError:
            known = ", ".join(sorted(self.socs))
            raise UnknownSocError(
                f"unknown SoC {name!r}; known SoCs: {known}", detail=known
            ) from None


def user_socs_path(models_dir: str | os.PathLike[str]) -> Path:
    return Path(models_dir) / USER_SOCS_FILE


def read_user_socs(models_dir: str | os.PathLike[str] | None) -> dict[str, dict]:
    """The raw user SoC entries of `<models_dir>/socs.json` (empty when there is none)."""
    if models_dir is None:
        return {}
    path = user_socs_path(models_dir)
    if not path.is_file():
        return {}
    try:
        doc = json.loads(path.read_text("utf-8"))
    except (OSError, ValueError) as exc:
        raise SocRegistryError(f"{path}: unreadable user SoC registry: {exc}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("socs"), dict):
        raise SocRegistryError(f"{path}: not a {USER_SOCS_FORMAT} document (no 'socs' object)")
    return doc["socs"]


def registry(models_dir: str | os.PathLike[str] | None = None) -> Registry:
    """The bundled SoCs, plus the user-defined ones of `models_dir` (none: the bundled ones)."""
    entries = read_user_socs(models_dir)
    if not entries:
        return Registry(all_socs())
    merged = dict(all_socs())
    for sid, d in entries.items():
        if sid in merged:
            continue  # a bundled id always wins
        try:
            merged[sid] = _soc(sid, d)
        except (KeyError, TypeError, ValueError) as exc:
            raise SocRegistryError(
                f"{user_socs_path(models_dir)}: bad entry {sid!r}: {exc}"
            ) from None
    return Registry(merged, frozenset(s for s in entries if s not in all_socs()))


def _positive(name: str, value: float) -> float:
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise SocRegistryError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(x) or x <= 0:
        raise SocRegistryError(f"{name} must be a positive finite number, got {value!r}")
    return x


def user_soc_entry(
    sid: str,
    name: str,
    gpu: str,
    family: str,
    fp16_gflops: float,
    fp32_gflops: float,
    dram_gbps: float,
) -> dict:
    """A validated `socs.json` entry for a user-defined SoC; raises ConfigError on bad input."""
    if not isinstance(sid, str) or not _ID_RE.match(sid):
        raise SocRegistryError(
            f"SoC id {sid!r}: use lowercase letters, digits and single dashes (e.g. my-board)"
        )
    if sid in _alias_index().values() or _norm(sid) in _alias_index():
        raise SocRegistryError(f"SoC id {sid!r} clashes with the bundled SoC {resolve(sid).id!r}")
    for label, text in (("name", name), ("gpu", gpu)):
        if not isinstance(text, str) or not text.strip():
            raise SocRegistryError(f"{label} must be a non-empty string")
    if _norm(name) in _alias_index():
        raise SocRegistryError(f"name {name!r} clashes with the bundled SoC {resolve(name).id!r}")
    if family not in FAMILIES:
        raise SocRegistryError(f"unknown family {family!r}; known families: {', '.join(FAMILIES)}")
    d = {
        "name": name.strip(),
        "aliases": [],
        "gpu": gpu.strip(),
        "vendor": _VENDORS.get(family, "other"),
        "family": family,
        "arch_gen": 0.0,
        "gpu_mhz": 0.0,
        "fp32_gflops": _positive("fp32_gflops", fp32_gflops),
        "fp16_gflops": _positive("fp16_gflops", fp16_gflops),
        "dram_gbps": _positive("dram_gbps", dram_gbps),
        "phones": {},
    }
    return d


def add_user_soc(
    models_dir: str | os.PathLike[str], sid: str, replace: bool = False, **fields: Any
) -> Path:
    """Validate a user-defined SoC and write it into `<models_dir>/socs.json` (atomically,
    keeping the SoCs already there); `replace` edits one already defined. Raises
    SocRegistryError and writes nothing on bad input."""
    entry = user_soc_entry(sid, **fields)
    existing = read_user_socs(models_dir)
    if sid in existing and not replace:
        raise SocRegistryError(
            f"SoC id {sid!r} is already defined in {user_socs_path(models_dir)}: "
            "`leti socs add --replace` edits it"
        )
    if replace and sid not in existing:
        raise SocRegistryError(f"no SoC {sid!r} of yours in {user_socs_path(models_dir)}")
    for other, d in existing.items():
        if other == sid:
            continue
        if _norm(d.get("name", "")) == _norm(entry["name"]):
            raise SocRegistryError(f"name {entry['name']!r} is already used by {other!r}")
    doc = {**_user_doc(models_dir), "format": USER_SOCS_FORMAT, "socs": {**existing, sid: entry}}
    return atomic_write_json(user_socs_path(models_dir), doc)


def remove_user_soc(models_dir: str | os.PathLike[str], sid: str) -> Path:
    """Take a user-defined SoC out of `<models_dir>/socs.json` (atomically). A bundled SoC
    cannot be removed, nor one that calibrations still answer for (they are named)."""
    existing = read_user_socs(models_dir)
    if sid not in existing:
        bundled = sid in _raw()["socs"]
        raise SocRegistryError(
            f"{sid!r} is a bundled SoC: only your own can be removed"
            if bundled
            else f"no SoC {sid!r} of yours in {user_socs_path(models_dir)}"
        )
    left = sorted(str(p) for p in (Path(models_dir) / sid).glob("*/calibration.json"))
    if left:
        raise SocRegistryError(
            f"{sid!r} still has calibrations: {', '.join(left)}; delete them first"
        )
    rest = {k: v for k, v in existing.items() if k != sid}
    doc = {**_user_doc(models_dir), "format": USER_SOCS_FORMAT, "socs": rest}
    return atomic_write_json(user_socs_path(models_dir), doc)


def _user_doc(models_dir: str | os.PathLike[str] | None) -> dict:
    """The whole `<models_dir>/socs.json` (user SoCs and runtimes), or an empty document."""
    if models_dir is None or not user_socs_path(models_dir).is_file():
        return {}
    read_user_socs(models_dir)  # validates the document
    return json.loads(user_socs_path(models_dir).read_text("utf-8"))


def runtimes() -> dict[str, dict]:
    return dict(_raw()["runtimes"])


def default_runtime() -> str:
    return _raw()["default_runtime"]


def read_user_runtimes(models_dir: str | os.PathLike[str] | None) -> dict[str, dict]:
    """Runtimes a user named in `leti calibrate --runtime NAME` (e.g. armnn-opencl): leti has no
    per-kernel data and no fusion rules of its own for them; they answer through the
    calibration of each SoC (`<models_dir>/socs.json`, `runtimes`)."""
    raw = _user_doc(models_dir).get("runtimes", {})
    if not isinstance(raw, dict):
        raise SocRegistryError(f"{user_socs_path(models_dir)}: 'runtimes' is not an object")
    return raw


def all_runtimes(models_dir: str | os.PathLike[str] | None = None) -> dict[str, dict]:
    """The bundled runtimes plus the user's runtimes of `models_dir`."""
    return {**read_user_runtimes(models_dir), **runtimes()}


def resolve_runtime(name: str | None, models_dir: str | os.PathLike[str] | None = None) -> str:
    if not name:
        return default_runtime()
    key = name.strip().lower()
    if key not in all_runtimes(models_dir):
        known = ", ".join(sorted(all_runtimes(models_dir)))
        raise UnknownRuntimeError(
            f"unknown runtime {name!r}; known runtimes: {known} (a runtime of your own "
            "answers once `leti calibrate --runtime NAME` has fitted it from timings)",
            detail=known,
        )
    return key


def user_runtime_name(name: str) -> str:
    """A new runtime name as `leti calibrate --runtime` accepts it; SocRegistryError if bad."""
    key = (name or "").strip().lower()
    if not _ID_RE.match(key):
        raise SocRegistryError(
            f"runtime {name!r}: use lowercase letters, digits and single dashes (e.g. armnn-opencl)"
        )
    return key


def add_user_runtime(models_dir: str | os.PathLike[str], name: str) -> Path | None:
    """Record a user's runtime in `<models_dir>/socs.json` (atomically, keeping the rest);
    None when it is already known."""
    key = user_runtime_name(name)
    if key in all_runtimes(models_dir):
        return None
    doc = _user_doc(models_dir)
    entry = {
        "name": key,
        "per_kernel_data": False,
        "fusion_rules": default_runtime(),
        "note": "a runtime of your own: planned with the default runtime's fusion rules, "
        "answered through each SoC's calibration from your timings",
    }
    doc = {
        "format": USER_SOCS_FORMAT,
        "socs": doc.get("socs", {}),
        "runtimes": {**doc.get("runtimes", {}), key: entry},
    }
    return atomic_write_json(user_socs_path(models_dir), doc)


def soc_for_phone(runtime: str, phone: str) -> Soc | None:
    """Which SoC a column prefix of the public data (e.g. `pixel4`) was measured on."""
    for soc in all_socs().values():
        if phone in soc.phones.get(runtime, ()):
            return soc
    return None


@dataclass(frozen=True)
class GpuSpec:
    """Hardware descriptors of a GPU outside the SoC registry (e.g. an ncnn benchmark target).

    It has every attribute the transfer model reads from a `Soc`, so either can price kernels.
    """

    id: str
    name: str
    family: str
    arch_gen: float
    fp32_gflops: float
    fp16_gflops: float
    dram_gbps: float


@cache
def gpu_specs() -> dict[str, dict]:
    """The raw `data/ncnn_gpus.json` entries, by GPU id."""
    raw = resources.files("leti").joinpath("data/ncnn_gpus.json").read_text("utf-8")
    return json.loads(raw)["gpus"]


def gpu_borrow() -> dict[str, dict]:
    """SoC id -> {"gpus": [...], "why": ...}: the GPUs of the ncnn benchmark whose runtime map
    a SoC with no public timing borrows (`data/ncnn_gpus.json`, `borrow`)."""
    raw = resources.files("leti").joinpath("data/ncnn_gpus.json").read_text("utf-8")
    return dict(json.loads(raw).get("borrow", {}))


def gpu_spec(gid: str) -> GpuSpec:
    d = gpu_specs()[gid]
    return GpuSpec(
        id=gid,
        name=d["name"],
        family=d["family"],
        arch_gen=float(d["arch_gen"]),
        fp32_gflops=float(d["fp32_gflops"]),
        fp16_gflops=float(d["fp16_gflops"]),
        dram_gbps=float(d["dram_gbps"]),
    )
