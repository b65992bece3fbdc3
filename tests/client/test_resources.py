"""fleetflow.resources.parse_quantity: the quantity grammar, accepted and rejected."""

from __future__ import annotations

import math

import pytest
from fleetflow.resources import InvalidResourceError, parse_quantity, parse_resources

ACCEPTED = [
    # bare numbers
    (0, 0.0),
    (2, 2.0),
    (1.5, 1.5),
    ("3", 3.0),
    ("0.25", 0.25),
    (".5", 0.5),
    (" 7 ", 7.0),
    # exponent form
    ("2e9", 2e9),
    ("1.5E3", 1500.0),
    ("5e-1", 0.5),
    # Kubernetes decimal suffixes (case-sensitive)
    ("500m", 0.5),
    ("250m", 0.25),
    ("1k", 1e3),
    ("2M", 2e6),
    ("1G", 1e9),
    ("1T", 1e12),
    ("1P", 1e15),
    ("1E", 1e18),
    # Kubernetes binary suffixes
    ("1Ki", 1024.0),
    ("256Mi", 256 * 2.0**20),
    ("1.5Gi", 1.5 * 2.0**30),
    ("1Ti", 2.0**40),
    ("1Pi", 2.0**50),
    ("1Ei", 2.0**60),
    # unit spellings (case-insensitive): KB is 1000, KiB is 1024
    ("10B", 10.0),
    ("1KB", 1e3),
    ("1kb", 1e3),
    ("256MB", 256e6),
    ("2GB", 2e9),
    ("1TB", 1e12),
    ("1PB", 1e15),
    ("1KiB", 1024.0),
    ("512MiB", 512 * 2.0**20),
    ("512mib", 512 * 2.0**20),
    ("4GiB", 4 * 2.0**30),
    ("1TiB", 2.0**40),
    ("1PiB", 2.0**50),
    ("1.5 GB", 1.5e9),
]

REJECTED = [
    "",
    "   ",
    "abc",
    "-1",
    -1,
    -0.5,
    "nan",
    float("nan"),
    "inf",
    float("inf"),
    "5XB",
    "5 m m",
    "1e",
    "MB",
    "1,5GB",
    True,
    False,
    None,
    [1],
    b"1",
]


@pytest.mark.parametrize(("value", "expected"), ACCEPTED, ids=[repr(v) for v, _ in ACCEPTED])
def test_accepted(value, expected):
    assert math.isclose(parse_quantity(value), expected, rel_tol=1e-12)


@pytest.mark.parametrize("value", REJECTED, ids=[repr(v) for v in REJECTED])
def test_rejected(value):
    with pytest.raises(InvalidResourceError):
        parse_quantity(value, "memory")


def test_m_is_milli_but_mb_is_megabytes():
    assert parse_quantity("1m") == 1e-3
    assert parse_quantity("1M") == 1e6
    assert parse_quantity("1mb") == 1e6


def test_error_names_the_field_and_value():
    with pytest.raises(InvalidResourceError) as info:
        parse_quantity("5XB", "memory")
    assert info.value.field == "memory" and info.value.value == "5XB"
    assert "5XB" in str(info.value) and "memory" in str(info.value)
    assert isinstance(info.value, ValueError)


def test_parse_resources_prefixes_the_owner():
    assert parse_resources({"cpu": "500m", "memory": "256MB", "gpu": 1}) == {
        "cpu": 0.5,
        "memory": 256e6,
        "gpu": 1.0,
    }
    with pytest.raises(InvalidResourceError, match="parse.memory"):
        parse_resources({"memory": "lots"}, owner="parse")
    with pytest.raises(InvalidResourceError, match="non-empty"):
        parse_resources({"": 1})
