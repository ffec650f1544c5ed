"""The SoC registry: ids, aliases and hardware descriptors, read from `data/socs.json`, and the
descriptors of GPUs outside it (`GpuSpec`, from `data/ncnn_gpus.json`: the ncnn benchmark's
mobile GPUs).

Descriptors feed the transfer model, so they live in data rather than code: adding a SoC is a
JSON edit, not a release.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import cache
from importlib import resources

from leti.core.errors import UnknownRuntimeError, UnknownSocError


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

    @property
    def measured_runtimes(self) -> tuple[str, ...]:
        return tuple(self.phones)


def _norm(text: str) -> str:
    return re.sub(r"[^a-z0-9]", "", text.lower())


@cache
def _raw() -> dict:
    return json.loads(resources.files("leti").joinpath("data/socs.json").read_text("utf-8"))


@cache
def all_socs() -> dict[str, Soc]:
    out = {}
    for sid, d in _raw()["socs"].items():
        out[sid] = Soc(
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
        )
    return out


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


def runtimes() -> dict[str, dict]:
    return dict(_raw()["runtimes"])


def default_runtime() -> str:
    return _raw()["default_runtime"]


def resolve_runtime(name: str | None) -> str:
    if not name:
        return default_runtime()
    key = name.strip().lower()
    if key not in runtimes():
        known = ", ".join(sorted(runtimes()))
        raise UnknownRuntimeError(
            f"unknown runtime {name!r}; known runtimes: {known}", detail=known
        )
    return key


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
