"""Readers for rating files: MovieLens (``u.data``, ``ratings.dat``, ``ratings.csv``, or the zip holding
one), delimited text (CSV/TSV, any separator), Parquet and RecBole atomic ``.inter`` files.

Every reader returns a DataFrame with columns ``user, item, rating`` (and ``timestamp`` where the file has
one) holding the original ids, and rejects bad rows with an error that names the file, the line (the row,
for Parquet) and the value. Text is parsed by pyarrow's multithreaded CSV reader (ml-25m's 678 MB
``ratings.csv`` in seconds); when pyarrow rejects a file, pandas' C parser reads it again only to find the
offending line for the error message.

``columns`` maps the roles ``user``, ``item``, ``rating`` and optional ``timestamp`` to the file's column
names (files with a header) or 0-based positions (files without). Left out, a role is found by its usual
names (``userId``, ``user_id``, ``movieId``, ``item_id``, ``rating``, ``score``, ``timestamp``, ...) or,
in a file without a header, by position 0, 1, 2, 3.
"""

from __future__ import annotations

import codecs
import csv
import io
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

COLUMNS = ["user", "item", "rating", "timestamp"]
QUOTES = {"none": None, "double": '"', "single": "'"}  # data.quote as typed on a command line
REQUIRED = ("user", "item", "rating")
FORMATS = ("movielens", "csv", "tsv", "parquet", "inter")
ALIASES = {  # usual column names for each role, compared case-insensitively
    "user": ("user", "user_id", "userid", "uid", "user id", "reviewerid"),
    "item": ("item", "item_id", "itemid", "iid", "movie", "movie_id", "movieid", "asin", "isbn"),
    "rating": ("rating", "score", "stars", "overall", "rating_value"),
    "timestamp": ("timestamp", "time", "ts", "unixreviewtime", "date"),
}


SUFFIXES = {"user": ("userid",), "item": ("itemid",), "rating": ("rating",), "timestamp": ("timestamp",)}


def _bare(name) -> str:
    """A column name without case or separators: ``User-ID``, ``user_id`` and ``userid`` are one name."""
    return re.sub(r"[\s_\-.]", "", str(name).strip().lower())


class RatingsFormatError(ValueError):
    """A ratings file holds a row that cannot be used."""


def check_scale(ratings: np.ndarray, scale: tuple[float, float] | None, unrated_value: float | None,
                line_of, source: str) -> None:
    """The declared scale over what the filters left (rows holding ``unrated_value`` aside): the first rating
    outside it is an error naming its line (``line_of(position)``) and the settings that would drop it."""
    if scale is None:
        return
    lo, hi = scale
    out = (ratings < lo) | (ratings > hi)
    if unrated_value is not None:
        out &= ratings != float(unrated_value)
    if out.any():
        pos = int(np.flatnonzero(out)[0])
        raise RatingsFormatError(
            f"{source}, {line_of(pos)}: rating outside the scale [{lo:g}, {hi:g}]: {float(ratings[pos]):g} "
            f"({int(out.sum()):,} such ratings); declare the scale with data.rating_min/data.rating_max, drop them "
            "with data.filter.ratings=[lo, hi], or mark a value that means 'not rated' with data.unrated_value")


def _seconds(raw: pd.Series) -> pd.Series:
    """Timestamps as Unix seconds: numbers as they are; datetimes (Parquet) and ISO 8601 dates or date-times
    (``2013-06-11``, ``2013-06-11T09:30:00Z``; UTC where no zone is given) converted; NaN where neither."""
    if pd.api.types.is_datetime64_any_dtype(raw):
        dates = raw if raw.dt.tz is not None else raw.dt.tz_localize("UTC")
        return ((dates - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(seconds=1)).astype("float64")
    num = pd.to_numeric(raw, errors="coerce")
    text = (num.isna() & raw.notna()).to_numpy()
    if text.any():
        dates = pd.to_datetime(raw[text], errors="coerce", utc=True, format="ISO8601")
        num = num.astype("float64")
        num[text] = ((dates - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(seconds=1)).to_numpy(dtype="float64",
                                                                                            na_value=np.nan)
    return num


def validate(df: pd.DataFrame, source: str, first_line: int = 1,
             scale: tuple[float, float] | None = None, unit: str = "line") -> pd.DataFrame:
    """Coerce ``rating``/``timestamp`` to numbers and check the scale; fail on the first bad row.

    ``first_line`` is the file line number of ``df``'s first row (2 after a header); ``unit`` names
    what is counted (``line`` in text files, ``row`` in Parquet).
    """
    if len(df) == 0:
        raise RatingsFormatError(f"{source}: no ratings in file")
    for col in ("rating", "timestamp"):
        if col not in df:
            continue
        raw = df[col]
        num = raw if pd.api.types.is_numeric_dtype(raw) else _seconds(raw) if col == "timestamp" else \
            pd.to_numeric(raw, errors="coerce")
        bad = num.isna().to_numpy()
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            value = raw.iloc[row]
            what = (f"missing or NaN {col} (too few fields?)" if pd.isna(value) or value == ""
                    else f"non-numeric {col}" if col == "rating" else
                    "timestamp that is neither a number (Unix seconds) nor an ISO 8601 date")
            raise RatingsFormatError(f"{source}, {unit} {first_line + row}: {what} {value!r}; check "
                                     f"data.columns.{col}, data.sep and data.quote")
        df[col] = num
    check_scale(df["rating"].to_numpy(), scale, None, lambda pos: f"{unit} {first_line + pos}", source)
    for col in ("user", "item"):
        miss = df[col].isna().to_numpy()
        if miss.any():
            raise RatingsFormatError(f"{source}, {unit} {first_line + int(np.flatnonzero(miss)[0])}: missing {col} "
                                     f"(an empty field); check data.columns.{col} and data.sep")
    df["rating"] = df["rating"].astype(np.float32)
    df = df.reset_index(drop=True)
    df.attrs.update(first_line=first_line, unit=unit)  # for errors found later (duplicates)
    return df


def resolve_columns(names: list, columns: Mapping | None, source: str, positional: bool) -> dict[str, int]:
    """Positions of the roles in a file whose columns are ``names`` (header names, or 0..n-1)."""
    columns = dict(columns or {})
    unknown = set(columns) - set(COLUMNS)
    if unknown:
        raise ValueError(f"data.columns has unknown roles {sorted(unknown)}; roles are {COLUMNS}")
    lower = {str(n).strip().lower(): i for i, n in enumerate(names)}
    bare = {_bare(n): i for i, n in enumerate(names)}
    found = {}
    for role in COLUMNS:
        want = columns.get(role)
        if want is None:
            if positional:
                pos = COLUMNS.index(role)
                if pos < len(names):
                    found[role] = pos
            else:  # a usual name, then one written with other separators (User-ID), then a unique *Rating
                hit = next((lower[a] for a in ALIASES[role] if a in lower), None)
                hit = next((bare[_bare(a)] for a in ALIASES[role] if _bare(a) in bare), None) if hit is None else hit
                if hit is None:
                    ends = [i for b, i in bare.items() if b.endswith(SUFFIXES[role]) and i not in found.values()]
                    hit = ends[0] if len(ends) == 1 else None
                if hit is not None:
                    found[role] = hit
        elif isinstance(want, int) and not isinstance(want, bool):
            if not 0 <= want < len(names):
                raise RatingsFormatError(f"{source}: data.columns.{role}={want} but the file has "
                                         f"{len(names)} columns")
            found[role] = want
        else:
            hit = list(names).index(want) if want in names else lower.get(str(want).strip().lower())
            if hit is None:
                raise RatingsFormatError(f"{source}: data.columns.{role}={want!r} is not a column of the "
                                         f"file; its columns are {list(names)}")
            found[role] = hit
        if role in REQUIRED and role not in found:
            raise RatingsFormatError(
                f"{source}: no {role} column among {list(names)}; name it with data.columns.{role}=<column>")
    if len(set(found.values())) < len(found):
        raise RatingsFormatError(f"{source}: two roles map to the same column: {found}")
    return found


BOM = b"\xef\xbb\xbf"
ENCODING_HINT = "data.encoding=latin-1 or data.encoding=cp1252 (or data.encoding=auto to detect it)"


def resolve_encoding(data: bytes | Path, encoding: str, source: str) -> str:
    """The text encoding to read with: ``encoding`` as given, or for ``auto`` the one a well-kept detector
    (charset-normalizer) finds; a UTF-8 byte-order mark means ``utf-8`` whatever was declared for UTF-8."""
    if encoding != "auto":
        try:
            return codecs.lookup(encoding).name
        except LookupError:
            raise ValueError(f"data.encoding={encoding!r} is not a text encoding Python knows (e.g. utf-8, "
                             "latin-1, cp1252, or auto)") from None
    from charset_normalizer import from_bytes, from_path

    best = (from_path(data) if isinstance(data, Path) else from_bytes(data)).best()
    if best is None:
        raise RatingsFormatError(f"{source}: data.encoding=auto found no text encoding that decodes the file "
                                 "(is it text?)")
    return codecs.lookup(best.encoding).name


def check_decodes(data: bytes | Path, encoding: str, source: str) -> None:
    """Raise naming the file, the line, the byte and the setting to change where ``data`` does not decode."""
    raw = data.read_bytes() if isinstance(data, Path) else data
    try:
        raw.decode(encoding)
    except UnicodeDecodeError as err:
        line = raw.count(b"\n", 0, err.start) + 1
        column = err.start - (raw.rfind(b"\n", 0, err.start) + 1) + 1
        raise RatingsFormatError(f"{source}, line {line}: byte 0x{raw[err.start]:02x} (column {column}) is not "
                                 f"{encoding} text; set {ENCODING_HINT}") from None


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def split_fields(line: str, sep: str, quote: str | None) -> list[str]:
    """One line's fields by the reader's rules: ``sep`` between fields, ``quote`` around a field that may hold
    the separator (a doubled quote inside is a quote), surrounding quotes removed."""
    if quote is None or len(sep) != 1:
        return line.split(sep)
    return next(csv.reader([line], delimiter=sep, quotechar=quote), [])


def _sniff(first_line: str, sep: str | None, columns: Mapping | None) -> tuple[str, bool]:
    """Separator and whether the first line is a header."""
    if sep is None:
        sep = next((s for s in ("::", "\t", ",", ";", "|") if s in first_line), " ")
    fields = split_fields(first_line, sep, '"')
    named = any(isinstance(v, str) for v in (columns or {}).values())
    if named:
        return sep, True
    rating_pos = (columns or {}).get("rating", 2)
    header = rating_pos >= len(fields) or not _is_number(fields[rating_pos].strip())
    return sep, header


def read_delimited(data: bytes | Path, source: str, sep: str | None = None, columns: Mapping | None = None,
                   header: bool | None = None, scale: tuple[float, float] | None = None,
                   strip_types: bool = False, encoding: str = "utf-8", quote: str | None = '"') -> pd.DataFrame:
    """Delimited text (in memory, or a file pyarrow reads itself): separator and header sniffed from the
    first line unless given. ``strip_types`` drops RecBole's ``:type`` suffix from header names.

    One set of rules for every text file, whichever parser reads it: fields separated by ``sep``; a field may be
    quoted with ``quote`` (default ``"``; None: no quoting), and then hold the separator; numbers and ids may
    both be quoted; LF, CRLF or CR line ends; blank lines skipped; a UTF-8 byte-order mark ignored. Bytes are
    decoded with ``encoding`` (``auto``: detected; the choice is in ``df.attrs["encoding"]``).
    """
    if isinstance(data, Path):
        with open(data, "rb") as f:
            head = f.read(1 << 16)
        if len(head) == 0 or (head.isspace() and data.stat().st_size == len(head)):
            raise RatingsFormatError(f"{source}: file is empty")
    else:
        head = data[:1 << 16]
        if len(data) == 0 or data.isspace():
            raise RatingsFormatError(f"{source}: file is empty")
    encoding = resolve_encoding(data, encoding, source)
    if head.startswith(BOM) and encoding in ("utf-8", "utf-8-sig"):
        encoding = "utf-8-sig"  # the mark is not part of the first column's name
    first_line = re.split(rb"\r\n|\r|\n", head, maxsplit=1)[0].decode(encoding, errors="replace")
    sep, sniffed_header = _sniff(first_line, sep, columns)
    header = sniffed_header if header is None else header
    if len(sep) > 1:  # the fast parsers take one-character separators: swap in a tab (vectorized)
        data = data.read_bytes() if isinstance(data, Path) else data
        data, first_line, sep = data.replace(sep.encode(), b"\t"), first_line.replace(sep, "\t"), "\t"
    fields = split_fields(first_line, sep, quote)
    names = [f.strip().strip('"') for f in fields] if header else list(range(len(fields)))
    names = [n.split(":")[0] for n in names] if strip_types else names
    roles = resolve_columns(names, columns, source, positional=not header)
    first_row = 2 if header else 1
    labels = [f"c{i}" for i in range(len(fields))]
    keep = {labels[pos]: role for role, pos in roles.items()}
    try:
        import pyarrow as pa
        import pyarrow.csv as pacsv

        table = pacsv.read_csv(
            data if isinstance(data, Path) else io.BytesIO(data),
            read_options=pacsv.ReadOptions(column_names=labels, skip_rows=1 if header else 0,
                                           encoding="utf8" if encoding in ("utf-8", "utf-8-sig") else encoding),
            parse_options=pacsv.ParseOptions(delimiter=sep, quote_char=quote or False, ignore_empty_lines=True),
            convert_options=pacsv.ConvertOptions(
                include_columns=list(keep), strings_can_be_null=True,
                # ids as text first: a number-looking id must never pass through float (see exact_ids)
                column_types={labels[roles["rating"]]: pa.float32(), labels[roles["user"]]: pa.string(),
                              labels[roles["item"]]: pa.string()}),
        )
        for role in ("user", "item"):
            label = labels[roles[role]]
            table = table.set_column(table.column_names.index(label), label, exact_ids(table.column(label)))
        df = table.to_pandas(self_destruct=True, split_blocks=True)  # frees arrow buffers as it goes
        del table
    except Exception as err:  # noqa: BLE001 - find the line with pandas' C parser, else report pyarrow's
        check_decodes(data, encoding, source)
        _read_slowly(data, source, sep, header, roles, first_row, scale, encoding, quote)
        raise RatingsFormatError(f"{source}: {err}") from None
    df = df.rename(columns=keep)[[c for c in COLUMNS if c in keep.values()]]
    df = validate(df, source, first_row, scale)
    df.attrs["encoding"] = encoding
    return df


INTEGER = r"^-?(0|[1-9][0-9]*)$"  # no sign, zero padding or exponent games: "007" and "7" stay two ids


def exact_ids(column):
    """An id column as int64 when every token is a plain integer that fits, else as strings for every row.

    Ids never pass through float: 9007199254740992 and 9007199254740993 stay two users, ``1e30`` is the
    string "1e30", and "007" keeps its zeros (a column holding it is read as strings).
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    tokens = pc.drop_null(column)
    if len(tokens) and pc.all(pc.match_substring_regex(tokens, INTEGER)).as_py():
        try:
            return pc.cast(column, pa.int64())
        except pa.ArrowInvalid:  # beyond int64: keep the digits as text
            pass
    return column


def _read_slowly(data: bytes | Path, source: str, sep: str, header: bool, roles: dict[str, int], first_row: int,
                 scale: tuple[float, float] | None, encoding: str = "utf-8", quote: str | None = '"') -> None:
    """pandas' C parser with the same rules, for line numbers in errors; raises on the first bad line it finds."""
    try:
        df = pd.read_csv(data if isinstance(data, Path) else io.BytesIO(data), sep=sep, header=None,
                         skiprows=1 if header else 0, index_col=False, engine="c", dtype=str, keep_default_na=False,
                         encoding=encoding, quotechar=quote or '"', skip_blank_lines=True,
                         quoting=csv.QUOTE_MINIMAL if quote else csv.QUOTE_NONE)
    except pd.errors.ParserError as err:
        msg = str(err)
        found = re.search(r"Expected (\d+) fields in line (\d+), saw (\d+)", msg)
        if found:  # pandas counts physical lines, the skipped header included
            want, line, saw = map(int, found.groups())
            raise RatingsFormatError(f"{source}, line {line}: {saw} fields, expected {want} "
                                     "(wrong column count, or a separator inside an unquoted field?); check "
                                     "data.sep and data.quote") from None
        raise RatingsFormatError(f"{source}: {msg}") from None
    df = pd.DataFrame({role: df.iloc[:, pos] if pos < df.shape[1] else None for role, pos in roles.items()})
    validate(df.replace("", None), source, first_row, scale)


def read_parquet(path: Path, columns: Mapping | None = None,
                 scale: tuple[float, float] | None = None) -> pd.DataFrame:
    import pyarrow.parquet as pq

    try:
        names = pq.read_schema(path).names
    except Exception as err:  # noqa: BLE001 - not a Parquet file, or a damaged one
        raise RatingsFormatError(f"{path}: not a readable Parquet file ({err})") from None
    roles = resolve_columns(names, columns, str(path), positional=False)
    df = pd.read_parquet(path, columns=[names[p] for p in roles.values()])
    df.columns = list(roles)
    return validate(df[[c for c in COLUMNS if c in roles]], str(path), 1, scale, unit="row")


# MovieLens layouts by file name: separator and header (columns in file order: user item rating timestamp)
LAYOUTS = {
    "u.data": ("\t", False),          # ml-100k: user item rating timestamp
    "ratings.dat": ("::", False),      # ml-1m, ml-10m: UserID::MovieID::Rating::Timestamp
    "ratings.csv": (",", True),        # ml-20m/25m/32m/latest: userId,movieId,rating,timestamp
}


def _zip_member(path: Path, member: str | None = None) -> tuple[bytes, str, str]:
    """The bytes of the ratings file inside a zip (``member``, or the MovieLens one), its name and layout."""
    try:
        zf = zipfile.ZipFile(path)
    except zipfile.BadZipFile as err:
        raise RatingsFormatError(f"{path}: not a readable zip file ({err})") from None
    with zf:
        for name in zf.namelist():
            base = name.rsplit("/", 1)[-1]
            if (member is None and base in LAYOUTS) or name == member or (member and base == member):
                return zf.read(name), f"{path}:{name}", base
    wanted = f"member {member!r}" if member else f"ratings member (one of {sorted(LAYOUTS)})"
    raise RatingsFormatError(f"{path}: zip has no {wanted}; it holds {zf.namelist()[:10]}")


def guess_format(path: Path) -> str:
    """The format of ``path`` from its name: MovieLens names and zips, .inter, .parquet, .tsv, else csv."""
    suffix = path.suffix.lower()
    if path.name in LAYOUTS or suffix in (".zip", ".dat", ".data"):
        return "movielens"
    if suffix == ".inter":
        return "inter"
    if suffix in (".parquet", ".pq"):
        return "parquet"
    if suffix in (".tsv", ".tab"):
        return "tsv"
    return "csv"  # separator and header are sniffed from the first line


def read_ratings(path: str | Path, scale: tuple[float, float] | None = (1, 5), format: str | None = None,
                 columns: Mapping | None = None, sep: str | None = None,
                 member: str | None = None, encoding: str = "utf-8", quote: str | None = '"') -> pd.DataFrame:
    """Read any supported ratings file; see the module docstring.

    ``format`` is one of :data:`FORMATS` (default: from the file name); ``sep`` overrides the sniffed
    separator of text files (``\\t`` or ``tab`` for a tab, as typed on a command line); ``member`` names
    the file to read inside a zip.
    """
    sep = {"\\t": "\t", "tab": "\t", "space": " "}.get(sep, sep) if sep is not None else None
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"ratings file {path} does not exist")
    if path.is_dir():
        raise RatingsFormatError(f"{path} is a folder; data.path must name a ratings file")
    format = format or guess_format(path)
    if format not in FORMATS:
        raise ValueError(f"data.format={format!r} is not one of {FORMATS}")
    if format == "parquet":
        return read_parquet(path, columns, scale)
    if path.suffix.lower() == ".zip":
        data, source, base = _zip_member(path, member)
        layout = LAYOUTS.get(base)
    else:
        data, source = path, str(path)
        layout = LAYOUTS.get(path.name)
    text = {"encoding": encoding, "quote": QUOTES.get(quote, quote) if isinstance(quote, str) else quote}
    if format == "inter":
        return read_delimited(data, source, sep or "\t", columns, True, scale, strip_types=True, **text)
    header = None  # sniffed
    if format == "tsv":
        sep = sep or "\t"
    elif format == "movielens" and layout is not None and sep is None and columns is None:
        sep, header = layout  # a known MovieLens file: its own separator and header
    return read_delimited(data, source, sep, columns, header, scale, **text)

