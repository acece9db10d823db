"""Shim for the stdeb and dh-python routes; all metadata lives in setup.cfg."""
from setuptools import setup

setup()
