"""Key files and the local data-quality report."""

import os
import stat

import pytest

import onboard


def test_generate_writes_a_private_key_file_that_loads(tmp_path):
    path = tmp_path / "acme.key"
    key = onboard.Key.generate(path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert len(key.fingerprint) == 32
    loaded = onboard.Key.load(str(path))
    assert loaded.fingerprint == key.fingerprint
    assert loaded.path == path
    # The secret never shows in the object's text.
    assert open(path).read().strip() not in repr(key)


def test_generate_never_overwrites(tmp_path):
    path = tmp_path / "acme.key"
    first = onboard.Key.generate(path)
    with pytest.raises(onboard.OnboardError, match="refusing to overwrite"):
        onboard.Key.generate(path)
    assert onboard.Key.load(path).fingerprint == first.fingerprint


def test_load_refuses_a_key_file_open_to_others(tmp_path):
    path = tmp_path / "acme.key"
    onboard.Key.generate(path)
    os.chmod(path, 0o644)
    with pytest.raises(onboard.OnboardError, match="acme.key"):
        onboard.Key.load(path)


def test_quality_is_a_dict_of_the_reports_counts(tmp_path):
    crm = tmp_path / "crm.csv"
    crm.write_text(
        "Email;Phone;Segment;Consent\n"
        "a@example.com;06 12 34 56 78;Gold;oui\n"
        "not-an-address;;Gold|Silver;yes\n"
        "b@example.com;;;true\n"
        "c@example.com;;Silver;non\n"
        "a@example.com;06 12 34 56 78;Gold;oui\n"
    )
    q = onboard.quality(
        crm, email_cols="Email", phone_cols=["Phone"], segment_col="Segment", consent_col="Consent"
    )
    assert q["delimiter"] == ";"
    assert q["rows_read"] == 5
    assert q["rows_without_consent"] == 1
    assert q["rows_without_segment"] == {"count": 1, "first_rows": [4]}
    assert q["rows_without_identifier"] == {"count": 1, "first_rows": [3]}
    assert q["duplicate_rows"] == {"count": 1, "first_rows": [6]}
    assert q["rows_to_upload"] == 1
    assert q["kinds"] == ["email", "phone"]
    email = next(c for c in q["columns"] if c["column"] == "Email")
    assert email["invalid"] == {"email-shape": {"count": 1, "first_rows": [3]}}
    assert q["segments"]["Gold"] == {"rows": 3, "rows_to_upload": 1, "rows_rejected": 2}
    assert "not-an-address" not in repr(q)


def test_quality_names_a_missing_column(tmp_path):
    crm = tmp_path / "crm.csv"
    crm.write_text("email,segment\na@example.com,Gold\n")
    with pytest.raises(onboard.OnboardError, match="column `phone` is not in the header"):
        onboard.quality(crm, phone_cols="phone", segment_col="segment")
