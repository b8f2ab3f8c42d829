"""onboard: privacy-preserving CRM onboarding, from Python.

Bindings over the Rust client library (the `onboard` CLI's): normalise and
hash identifiers, check a CRM export locally, and match it — or rows held
in memory, such as a DataFrame's records — with an onboard server. Raw
identifiers never leave the machine. Every failure raises `OnboardError`
with the library's message, which never quotes an identifier or a key.
"""

import os
from typing import Any, Iterable, Mapping, Optional, Sequence, Union

__version__: str

PathLike = Union[str, os.PathLike[str]]
Columns = Union[str, Sequence[str]]

class OnboardError(Exception):
    """An onboard operation failed; the message is the Rust library's."""

def normalize(kind: str, value: str, region: str = "FR") -> str:
    """The normalised form of an identifier, as the match uses it.

    kind: email, phone, maid, email_sha256 or phone_sha256. region: the
    default country (ISO code) of phone numbers written without one.
    Raises OnboardError (with the reason and its code, never the value)
    when the value is not a valid identifier of that kind.
    """

def digest(kind: str, value: str, region: str = "FR") -> str:
    """SHA-256 (lower-case hex) of the identifier's normalised form."""

class Key:
    """An advertiser secret key file: its path and fingerprint. The secret
    stays in the file and never leaves the machine."""

    @staticmethod
    def generate(path: PathLike) -> "Key":
        """Write a new secret key to `path`, mode 0600; never overwrites."""
    @staticmethod
    def load(path: PathLike) -> "Key":
        """Read a key file, refused unless a regular file of yours, mode 0600."""
    @property
    def path(self) -> os.PathLike[str]:
        """The key file."""
    @property
    def fingerprint(self) -> str:
        """The key's public fingerprint (hex), as the server records it."""

def quality(
    path: PathLike,
    *,
    segment_col: str,
    email_cols: Columns = (),
    phone_cols: Columns = (),
    maid_cols: Columns = (),
    email_sha256_cols: Columns = (),
    phone_sha256_cols: Columns = (),
    consent_col: Optional[str] = None,
    region: str = "FR",
    encoding: Optional[str] = None,
    sheet: Optional[str] = None,
) -> dict[str, Any]:
    """The data-quality report of a CRM export, as a dict; nothing is sent.

    path: a CSV (any delimiter, gzipped or not) or a spreadsheet (.xlsx,
    .xlsm, .xlsb, .xls, .ods). encoding: a WHATWG label forcing a CSV's
    encoding (default: a BOM, else UTF-8, else Windows-1252). sheet: the
    spreadsheet's sheet (default: the first). Column names match after
    trimming and Unicode normalisation, ignoring case. Counts per problem
    with the first line numbers (the header is line 1; a sheet's own row
    numbers), per identifier column and per segment; the format, encoding
    and delimiter or sheet read; never a value. A file found not to be
    UTF-8 and read as Windows-1252 also gets a UserWarning saying so."""

class Client:
    """A connection to an onboard server with one API key."""

    def __init__(
        self,
        server: str,
        *,
        ca: Optional[PathLike] = None,
        api_key_file: Optional[PathLike] = None,
    ) -> None:
        """server: https URL (plain http only to a loopback address). ca: PEM
        file of the CA that signed the server's certificate, then the only
        one trusted. api_key_file: a file of yours with mode 0600 holding
        the API key; without it, the ONBOARD_API_KEY environment variable."""
    def match_file(
        self,
        path: PathLike,
        *,
        key: Union[Key, PathLike],
        destination: str,
        segment_col: str,
        email_cols: Columns = (),
        phone_cols: Columns = (),
        maid_cols: Columns = (),
        email_sha256_cols: Columns = (),
        phone_sha256_cols: Columns = (),
        consent_col: Optional[str] = None,
        region: str = "FR",
        dry_run: bool = False,
        encoding: Optional[str] = None,
        sheet: Optional[str] = None,
    ) -> dict[str, Any]:
        """Check a CRM export, then match it for `destination` (advertiser
        key). path, encoding and sheet as in `quality`. Returns
        {"quality": ..., "report": ...} as `onboard match --json` prints it;
        "report" is None on a dry run. The report's matched counts are
        noisy; withheld segments say why."""
    def match_rows(
        self,
        rows: Iterable[Mapping[str, Any]],
        *,
        key: Union[Key, PathLike],
        destination: str,
        segment_col: str,
        email_cols: Columns = (),
        phone_cols: Columns = (),
        maid_cols: Columns = (),
        email_sha256_cols: Columns = (),
        phone_sha256_cols: Columns = (),
        consent_col: Optional[str] = None,
        region: str = "FR",
        dry_run: bool = False,
    ) -> dict[str, Any]:
        """Like match_file, over rows given as dicts of column name to value
        (a DataFrame's `to_dict("records")` works). Only the named columns
        are read; a missing key, None or NaN is an empty cell, a whole float
        an integer (a phone read as 612345678.0), a bool true/false. The
        quality report numbers the first row 2, as if line 1 were a header.
        The rows are held in an anonymous in-memory file while they match."""
    def audiences(self) -> list[dict[str, Any]]:
        """The audiences delivered to this destination (destination key)."""
    def pull(self, audience_id: str) -> list[str]:
        """Every member's cookie ID of an audience."""
