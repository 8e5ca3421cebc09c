"""The CPU feature set: detection, names, and the host check."""

from __future__ import annotations

import subprocess
import sys

import pytest

from snapbox.platform.cpuid import HOST_FEATURES_ENV, KNOWN_FEATURES, FeatureSet
from snapbox.state import IncompatibleHostError


def cpuinfo_flags() -> set[str]:
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    return set()


def test_detected_names_match_proc_cpuinfo():
    fs = FeatureSet.detect()
    flags = cpuinfo_flags()
    assert {"fpu", "sse2", "lm"} <= fs.features
    # Every feature both of us know about must agree (Linux hides some CPUID bits, so
    # only the direction "cpuinfo says yes" is checked).
    missing = (flags & KNOWN_FEATURES) - fs.features
    assert not missing, f"cpuinfo has {missing} that CPUID detection missed"


def test_xsave_layout_is_recorded():
    fs = FeatureSet.detect()
    if "xsave" in fs.features:
        assert fs.xcr0 & 0b11 == 0b11 and fs.xsave_size >= 576


def test_check_host_names_missing_features():
    image = FeatureSet(features=frozenset({"sse2", "avx2", "avx512f", "vmx"}))
    host = FeatureSet(features=frozenset({"sse2"}))
    with pytest.raises(IncompatibleHostError) as e:
        image.check_host(host)
    assert str(e.value) == "image needs CPU features this host lacks: avx2, avx512f"
    FeatureSet(features=frozenset({"sse2", "vmx"})).check_host(host)  # vmx is system-only


def test_check_host_refuses_missing_xsave_components():
    with pytest.raises(IncompatibleHostError, match="XSAVE"):
        FeatureSet(xcr0=0xE7).check_host(FeatureSet(xcr0=0x7))


def test_env_replaces_host_features(monkeypatch):
    monkeypatch.setenv(HOST_FEATURES_ENV, "fpu, sse2 ,lm")
    assert FeatureSet.host().features == {"fpu", "sse2", "lm"}


def test_cpu_features_command():
    out = subprocess.run([sys.executable, "-m", "snapbox", "cpu-features"], capture_output=True,
                         text=True, check=True).stdout.split()
    assert set(out) == FeatureSet.detect().features
    help_text = subprocess.run([sys.executable, "-m", "snapbox", "cpu-features", "--help"],
                               capture_output=True, text=True, check=True).stdout
    assert HOST_FEATURES_ENV in help_text
