"""normalize and digest equal the CLI's `onboard normalize` on the protocol's
test vectors (the published UID2 examples among them)."""

import base64
import json

import pytest

import onboard
from conftest import REPO, cli

VECTORS = json.loads((REPO / "protocol" / "test-vectors" / "v1.json").read_text())["vectors"]


def test_every_vector_is_read():
    assert len(VECTORS) == 9


@pytest.mark.parametrize("vector", VECTORS, ids=lambda v: f"{v['kind']}:{v['input'].strip()}")
def test_normalize_and_digest_equal_the_cli(suite, vector):
    kind, region, raw = vector["kind"], vector["region"], vector["input"]
    printed = cli(suite, "normalize", "--kind", kind, "--region", region, "--", raw)
    cli_value, cli_digest = printed.rstrip("\n").split("\t")
    assert onboard.normalize(kind, raw, region=region) == cli_value == vector["normalised"]
    assert onboard.digest(kind, raw, region=region) == cli_digest == vector["sha256"]


def test_the_published_uid2_email_example():
    # UID2's documentation: this address normalises and hashes to this base64.
    value = "JaneSaoirse+Work@gmail.com"
    assert onboard.normalize("email", value) == "janesaoirse@gmail.com"
    digest = bytes.fromhex(onboard.digest("email", value))
    assert base64.b64encode(digest).decode() == "ku4mBX7Z3qJTXWyLFB1INzkyR2WZGW4ANSJUiW21iI8="


def test_region_defaults_to_france():
    assert onboard.normalize("phone", "06 12 34 56 78") == "+33612345678"
    assert onboard.normalize("phone", "(201) 555-0123", region="US") == "+12015550123"


def test_an_invalid_value_raises_with_the_reason_and_never_the_value():
    with pytest.raises(onboard.OnboardError) as raised:
        onboard.normalize("email", "jane-secret-address")
    message = str(raised.value)
    assert "email-shape" in message
    assert "jane-secret-address" not in message


def test_an_unknown_kind_or_region_raises():
    with pytest.raises(onboard.OnboardError, match="unknown identifier kind"):
        onboard.digest("fax", "0123")
    with pytest.raises(onboard.OnboardError):
        onboard.normalize("phone", "0612345678", region="XX")
