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


def test_quality_finds_or_is_told_the_encoding(tmp_path):
    # Excel's "CSV" on a Western Windows: Windows-1252, `;`, CRLF, accents.
    crm = tmp_path / "excel.csv"
    crm.write_bytes("Courriel;Téléphone;Segment\r\na@example.com;06 12 34 56 78;Fidèle\r\n".encode("cp1252"))
    columns = dict(email_cols="courriel", phone_cols="TÉLÉPHONE", segment_col="segment")
    with pytest.warns(UserWarning, match="excel.csv is not valid UTF-8; it was read as windows-1252"):
        found = onboard.quality(crm, **columns)
    assert (found["encoding"], found["encoding_source"]) == ("windows-1252", "fallback")
    assert found["segments"]["Fidèle"]["rows_to_upload"] == 1
    told = onboard.quality(crm, encoding="latin1", **columns)
    assert (told["encoding"], told["encoding_source"]) == ("windows-1252", "forced")
    assert told["segments"] == found["segments"]
    with pytest.raises(onboard.OnboardError, match="line 1.*not valid UTF-8"):
        onboard.quality(crm, encoding="utf-8", **columns)
    with pytest.raises(onboard.OnboardError, match="`klingon`"):
        onboard.quality(crm, encoding="klingon", **columns)


def write_ods(path, sheets):
    """A minimal OpenDocument spreadsheet: one table of text cells per sheet."""
    import zipfile
    from xml.sax.saxutils import escape

    def table(name, rows):
        cells = lambda row: "".join(
            f'<table:table-cell office:value-type="string"><text:p>{escape(c)}</text:p></table:table-cell>' for c in row
        )
        body = "".join(f"<table:table-row>{cells(row)}</table:table-row>" for row in rows)
        return f'<table:table table:name="{name}">{body}</table:table>'

    ns = (
        'xmlns:office="urn:oasis:names:tc:opendocument:xmlns:office:1.0" '
        'xmlns:table="urn:oasis:names:tc:opendocument:xmlns:table:1.0" '
        'xmlns:text="urn:oasis:names:tc:opendocument:xmlns:text:1.0"'
    )
    tables = "".join(table(name, rows) for name, rows in sheets.items())
    content = (
        f'<?xml version="1.0" encoding="UTF-8"?><office:document-content {ns} office:version="1.2">'
        f"<office:body><office:spreadsheet>{tables}</office:spreadsheet></office:body></office:document-content>"
    )
    manifest = (
        '<?xml version="1.0" encoding="UTF-8"?>'
        '<manifest:manifest xmlns:manifest="urn:oasis:names:tc:opendocument:xmlns:manifest:1.0" manifest:version="1.2">'
        '<manifest:file-entry manifest:full-path="/" manifest:media-type="application/vnd.oasis.opendocument.spreadsheet"/>'
        '<manifest:file-entry manifest:full-path="content.xml" manifest:media-type="text/xml"/></manifest:manifest>'
    )
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        z.writestr("mimetype", "application/vnd.oasis.opendocument.spreadsheet")
        z.writestr("META-INF/manifest.xml", manifest)
        z.writestr("content.xml", content)


def test_quality_reads_the_sheet_it_is_given(tmp_path):
    book = tmp_path / "crm.ods"
    write_ods(book, {
        "Notes": [["exported for the Q3 campaign"]],
        "Clients": [["Email", "Segment"], ["a@example.com", "Or"], ["not-an-address", "Or"]],
    })
    q = onboard.quality(book, sheet="clients", email_cols="email", segment_col="segment")
    assert (q["format"], q["sheet"], q["rows_read"]) == ("ods", "Clients", 2)
    assert q["columns"][0]["invalid"] == {"email-shape": {"count": 1, "first_rows": [3]}}
    with pytest.raises(onboard.OnboardError, match="no sheet `Feuil1`"):
        onboard.quality(book, sheet="Feuil1", email_cols="email", segment_col="segment")


def test_signatures_show_their_defaults():
    import inspect

    quality = inspect.signature(onboard.quality)
    assert quality.parameters["email_cols"].default == ()
    assert quality.parameters["region"].default == "FR"
    assert quality.parameters["sheet"].default is None
    for method in [onboard.Client.match_file, onboard.Client.match_rows]:
        parameters = inspect.signature(method).parameters
        assert parameters["phone_cols"].default == () and parameters["dry_run"].default is False
