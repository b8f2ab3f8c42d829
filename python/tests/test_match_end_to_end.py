"""One match through `Client.match_rows` against the real server equals the
same match through the CLI: the same quality report, the same segments
with the same status, and audiences with the same members (the counts
themselves are noisy, so they are not compared). The two jobs are for two
destinations: the server withholds an audience identical to an earlier one
of the same advertiser and destination."""

import csv
import json

import pytest

import onboard

CLI_DESTINATION, ROWS_DESTINATION = "dsp-cli", "dsp-rows"
PERSONS = 400
BIG = range(0, 300)  # far above k + its release margin: delivered
TINY = range(300, 310)  # far below k: withheld


def crm_rows():
    """The advertiser's rows: graph members, strangers and a few bad rows.
    Phones sometimes arrive as numbers, consent as booleans, as a
    DataFrame's records would."""
    rows = []
    for i in BIG:
        rows.append({"email": f"person{i}@example.com", "phone": None, "segment": "Big", "consent": True})
    for i in TINY:
        rows.append({"email": f"person{i}@example.com", "phone": None, "segment": "Tiny", "consent": True})
    for j in range(40):
        rows.append({"email": f"stranger{j}@elsewhere.example.org", "phone": 612000000 + j, "segment": "Big", "consent": True})
    rows.append({"email": "not-an-address", "phone": float("nan"), "segment": "Big", "consent": True})
    rows.append({"email": "person5@example.com", "phone": None, "segment": "", "consent": True})
    rows.append({"email": "person6@example.com", "phone": None, "segment": "Big", "consent": False})
    return rows


def as_csv_cell(value):
    if value is None or (isinstance(value, float) and value != value):
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


@pytest.fixture(scope="module")
def world(server, tmp_path_factory):
    root = tmp_path_factory.mktemp("world")
    ids, cookies = root / "ids.csv", root / "cookies.csv"
    ids.write_text("person_id,kind,value\n" + "".join(f"p{i},email,person{i}@example.com\n" for i in range(PERSONS)))
    cookies.write_text(
        "person_id,destination,cookie_id\n"
        + "".join(f"p{i},{d},{d}-ck-{i}\n" for i in range(PERSONS) for d in [CLI_DESTINATION, ROWS_DESTINATION])
    )
    server.cli(server.admin_key, "admin", "graph", "import", "--identifiers", str(ids), "--cookies", str(cookies))
    advertiser = server.create("advertiser", "py-advertiser")
    cli_destination = server.create("destination", CLI_DESTINATION)
    rows_destination = server.create("destination", ROWS_DESTINATION)
    return {
        "root": root,
        "advertiser": advertiser,
        "advertiser_key_file": server.key_file(advertiser, "advertiser.apikey"),
        "cli_destination_key_file": server.key_file(cli_destination, "cli-destination.apikey"),
        "rows_destination_key_file": server.key_file(rows_destination, "rows-destination.apikey"),
        "key": onboard.Key.generate(root / "acme.key"),
    }


COLUMNS = dict(email_cols="email", phone_cols="phone", segment_col="segment", consent_col="consent")


def by_name(report):
    return {s["name"]: s for s in report["report"]["segments"]}


def test_match_rows_equals_the_cli_match(server, world):
    rows = crm_rows()
    crm = world["root"] / "crm.csv"
    with open(crm, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["email", "phone", "segment", "consent"])
        for row in rows:
            writer.writerow([as_csv_cell(row[c]) for c in ["email", "phone", "segment", "consent"]])

    printed = server.cli(
        world["advertiser"],
        "match", "--input", str(crm), "--key", str(world["key"].path), "--destination", CLI_DESTINATION,
        "--email-col", "email", "--phone-col", "phone", "--segment-col", "segment",
        "--consent-col", "consent", "--json",
    )
    through_cli = json.loads(printed)

    client = onboard.Client(server.url, ca=server.ca, api_key_file=world["advertiser_key_file"])
    through_rows = client.match_rows(iter(rows), key=world["key"], destination=ROWS_DESTINATION, **COLUMNS)

    # The same local report, line numbers included (only the input's name differs).
    assert through_rows["quality"].pop("input") == "(rows)"
    assert through_cli["quality"].pop("input") == str(crm)
    assert through_rows["quality"] == through_cli["quality"]
    assert through_rows["quality"]["rows_to_upload"] == len(BIG) + len(TINY) + 40

    # The same segments, sizes and decisions.
    cli_segments, rows_segments = by_name(through_cli), by_name(through_rows)
    assert set(rows_segments) == set(cli_segments) == {"Big", "Tiny"}
    for name in ["Big", "Tiny"]:
        for field in ["rows_uploaded", "status", "reason"]:
            assert rows_segments[name][field] == cli_segments[name][field], (name, field)
    assert rows_segments["Big"]["status"] == "delivered"
    assert rows_segments["Tiny"]["status"] == "withheld"
    assert through_rows["report"]["job_id"] != through_cli["report"]["job_id"]

    # Each destination gets the same persons from its job: exactly Big's.
    members = {}
    for name, segments, key_file in [
        (CLI_DESTINATION, cli_segments, world["cli_destination_key_file"]),
        (ROWS_DESTINATION, rows_segments, world["rows_destination_key_file"]),
    ]:
        destination = onboard.Client(server.url, ca=server.ca, api_key_file=key_file)
        audiences = destination.audiences()
        assert [a["segment"] for a in audiences] == ["Big"], audiences
        assert audiences[0]["id"] == segments["Big"]["audience_id"]
        members[name] = {c.removeprefix(f"{name}-") for c in destination.pull(audiences[0]["id"])}
    assert members[CLI_DESTINATION] == members[ROWS_DESTINATION] == {f"ck-{i}" for i in BIG}


def test_match_file_and_a_dry_run(server, world):
    crm = world["root"] / "dry.csv"
    crm.write_text("email,segment\n" + "".join(f"person{i}@example.com,Big\n" for i in BIG))
    client = onboard.Client(server.url, ca=server.ca, api_key_file=world["advertiser_key_file"])
    dry = client.match_file(crm, key=world["key"].path, destination=ROWS_DESTINATION,
                            email_cols=["email"], segment_col="segment", dry_run=True)
    assert dry["report"] is None
    assert dry["quality"]["rows_to_upload"] == len(BIG)
    rows = client.match_rows([], key=world["key"], destination=ROWS_DESTINATION,
                             email_cols="email", segment_col="segment", dry_run=True)
    assert rows["quality"]["rows_read"] == 0


def test_server_errors_are_onboard_errors(server, world):
    with pytest.raises(onboard.OnboardError, match="not a dict|expected a dict"):
        client = onboard.Client(server.url, ca=server.ca, api_key_file=world["advertiser_key_file"])
        client.match_rows([["a list", "not a dict"]], key=world["key"], destination=ROWS_DESTINATION,
                          email_cols="email", segment_col="segment")
    advertiser = onboard.Client(server.url, ca=server.ca, api_key_file=world["advertiser_key_file"])
    with pytest.raises(onboard.OnboardError):
        advertiser.audiences()  # an advertiser key may not list audiences
    with pytest.raises(onboard.OnboardError, match="0600|others|mode"):
        loose = world["root"] / "loose.apikey"
        loose.write_text(world["advertiser"])
        loose.chmod(0o644)
        onboard.Client(server.url, ca=server.ca, api_key_file=loose)
