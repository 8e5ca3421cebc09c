"""Build hook: compiles snapbox/_cpuid.c through cffi (metadata lives in pyproject.toml)."""

from setuptools import setup

setup(cffi_modules=["snapbox/_cpuid_build.py:ffibuilder"])
