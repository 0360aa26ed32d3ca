"""Reading rows from CSV/XLSX files and writing them, streamed: memory does not grow with rows.

A row that cannot be read (a line that is not valid in the file's encoding, a cell longer
than ``csv.field_size_limit()``, broken CSV) is yielded as a :class:`RowProblem`: the
importer reports it with its row number and goes on with the next row.
"""

from __future__ import annotations

import codecs
import csv
import io
import re
import tempfile
import zipfile
from array import array
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import IO, Any

from .conf import conf
from .exceptions import FileRejected

#: Characters a cell may have (CSV's own field limit, the same for XLSX): a longer one is read
#: no further than one character past it, and its row goes to the error report.
MAX_CELL = csv.field_size_limit()
#: Cells a row may have (Excel's own column limit): the rest of a wider row is not read.
MAX_COLUMNS = 16_384
#: Bytes of an XLSX member parsed at a time.
_XML_CHUNK = 64 * 1024
#: Bytes read up front to detect the encoding and the delimiter.
SAMPLE_SIZE = 64 * 1024
DELIMITERS = ",;\t|"
#: Encodings that decode any bytes into text without being a file's encoding (Python's codecs of
#: host names, escapes and placeholders); codecs that are not text encodings at all (rot13, zlib,
#: base64, ...) are refused by their codec's own flag.
NOT_FILE_ENCODINGS = frozenset({"idna", "punycode", "undefined", "unicode-escape", "raw-unicode-escape"})
ENCODINGS_HINT = "utf-8, utf-8-sig, cp1252, latin-1, utf-16, shift_jis, ..."


def _shown(value: Any, limit: int = 60) -> Any:
    """A value a user gave, as a message quotes it (``{_shown(x)!r}``): text bounded (a name of a
    megabyte is no message), other values as they are."""
    from worker_mode.storable import text

    return text(value, limit) if isinstance(value, str) else value


def check_encoding(name: str) -> str:
    """The codec's canonical name if ``name`` is a text encoding a file can be in; FileRejected if not."""
    try:
        info = codecs.lookup(name)
    except (LookupError, TypeError, ValueError):
        raise FileRejected(f"Unknown encoding {_shown(name)!r}; e.g. {ENCODINGS_HINT}.") from None
    if not getattr(info, "_is_text_encoding", True) or info.name in NOT_FILE_ENCODINGS:
        raise FileRejected(
            f"{_shown(name)!r} is not a text encoding a file is written in; e.g. {ENCODINGS_HINT}."
        )
    return info.name


@dataclass(frozen=True)
class RowProblem:
    """A row that could not be read; ``message`` says why (the importer reports it)."""

    message: str


# A well-formed multi-byte UTF-8 sequence (2 to 4 bytes).
_UTF8_MULTIBYTE = re.compile(rb"[\xc2-\xdf][\x80-\xbf]|[\xe0-\xef][\x80-\xbf]{2}|[\xf0-\xf4][\x80-\xbf]{3}")


def guess_format(name: str) -> str:
    lowered = name.lower()
    for fmt in ("csv", "xlsx"):
        if lowered.endswith("." + fmt):
            return fmt
    if lowered.endswith(".txt") or lowered.endswith(".tsv"):
        return "csv"
    raise FileRejected(
        f"Cannot tell the format of {_shown(name)!r}: name it .csv or .xlsx, or choose the format."
    )


def detect_encoding(sample: bytes) -> str:
    """utf-8-sig/utf-16 by BOM, else UTF-8 if the sample decodes, else a legacy encoding.

    For a legacy file charset-normalizer's guess is taken when it is a multi-byte
    encoding (Shift-JIS, GB18030, Big5, ...); among single-byte ones a short
    sample is ambiguous (cp1252 and cp1257 both decode it), so cp1252, the usual
    encoding of Western spreadsheet exports, wins when it decodes the sample.
    """
    if sample.startswith(codecs.BOM_UTF8):
        return "utf-8-sig"
    if sample.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return "utf-16"
    try:
        codecs.getincrementaldecoder("utf-8")().decode(sample, final=False)
        return "utf-8"
    except UnicodeDecodeError:
        pass
    # UTF-8 with a few bad bytes is UTF-8 with bad lines (reported), not a legacy encoding that
    # would turn every "é" into "Ã©": it is, when well-formed multi-byte sequences outnumber
    # the bytes that do not decode.
    invalid = sample.decode("utf-8", errors="replace").count("\ufffd")
    if len(_UTF8_MULTIBYTE.findall(sample)) >= max(invalid, 1):
        return "utf-8"
    from charset_normalizer import from_bytes
    from charset_normalizer.utils import is_multi_byte_encoding

    best = from_bytes(sample).best()
    if best is not None and is_multi_byte_encoding(best.encoding):
        return best.encoding
    try:
        sample.decode("cp1252")
        return "cp1252"
    except UnicodeDecodeError:
        return best.encoding if best is not None else "latin-1"


def sniff_delimiter(text: str) -> str:
    lines = text[:16384].rsplit("\n", 1)[0] if "\n" in text[:16384] else text[:16384]
    try:
        return csv.Sniffer().sniff(lines, delimiters=DELIMITERS).delimiter
    except csv.Error:
        return ","


class CsvReader:
    """Rows of a CSV file: ``header`` and an iterator of (row number, values); row 1 is the header.

    A row that cannot be read costs that row, not the rows after it: a line with more than
    ``MAX_COLUMNS`` values is not split; a quote never closed (which would read the rest of
    the file as one value) or a value over the field limit is reported, and reading goes on
    from the line after the one the row started on.
    """

    def __init__(self, raw: IO[bytes], *, encoding: str | None = None, delimiter: str | None = None) -> None:
        sample = raw.read(SAMPLE_SIZE)
        raw.seek(0)
        self.encoding = encoding or detect_encoding(sample)
        check_encoding(self.encoding)
        text_sample = sample.decode(self.encoding, errors="ignore")
        self.delimiter = delimiter or sniff_delimiter(text_sample)
        self.total = _count_lines(raw)
        self._raw = raw
        self._size = raw.seek(0, io.SEEK_END)
        raw.seek(0)
        self.line = 0
        #: Byte offset of the next physical line (ASCII-compatible encodings only).
        self._next_pos = 0
        #: Physical lines that could not be read, not yet attributed to a row: (line, message).
        self._undecodable: list[tuple[int, str]] = []
        self._wide = str(self.delimiter).encode(self.encoding, errors="replace")
        self._seekable = not codecs.lookup(self.encoding).name.startswith(("utf-16", "utf-32"))
        if self._seekable:
            lines: Iterator[str] = self._decoded_lines(raw)
        else:
            lines = io.TextIOWrapper(raw, encoding=self.encoding, newline="")
        self._reader = csv.reader(lines, delimiter=self.delimiter)
        try:
            self.header = next(self._reader, [])
        except csv.Error as exc:
            raise FileRejected(f"Cannot read the header row: {exc}.") from None
        if self._undecodable and self._undecodable[0][0] == 1:
            if "values" in self._undecodable[0][1]:
                raise FileRejected(f"The header row has more than {MAX_COLUMNS:,} columns.")
            raise FileRejected(self._undecodable[0][1].replace("Line 1", "The header row", 1))

    def _decoded_lines(self, raw: IO[bytes]) -> Iterator[str]:
        # Line by line, so a bad byte names its line (and only its row is lost).
        encoding = self.encoding
        for data in iter(raw.readline, b""):  # from where raw is (iterating a Django File rewinds)
            self.line += 1
            self._next_pos += len(data)
            if data.count(self._wide) >= MAX_COLUMNS:
                self._undecodable.append(
                    (self.line, f"Line {self.line} has more than {MAX_COLUMNS:,} values; it was not read.")
                )
                yield "\n"
                continue
            try:
                yield data.decode(encoding)
            except UnicodeDecodeError as exc:
                self._undecodable.append(
                    (
                        self.line,
                        f"Line {self.line} is not valid {encoding} ({exc.reason}); if many rows say so, "
                        "choose the file's encoding.",
                    )
                )
                yield data.decode(encoding, errors="replace")

    def _restart_after(self, line: int, position: int) -> None:
        """Read on from the physical line after ``line`` (which starts at byte ``position``)."""
        self._raw.seek(position)
        self._raw.readline()
        self._next_pos = self._raw.tell()
        self.line = line
        self._undecodable.clear()
        self._reader = csv.reader(self._decoded_lines(self._raw), delimiter=self.delimiter)

    def _quote_left_open(self, position: int) -> bool:
        """Whether the text from byte ``position`` to the end has an odd number of quotes."""
        self._raw.seek(position)
        quotes = 0
        while chunk := self._raw.read(1024 * 1024):
            quotes += chunk.count(b'"')
        return quotes % 2 == 1

    def __iter__(self) -> Iterator[tuple[int, list[str] | RowProblem]]:
        number = 1
        while True:
            number += 1
            start_line, start_pos = self.line + 1, self._next_pos
            try:
                row = next(self._reader)
            except StopIteration:
                return
            except UnicodeDecodeError as exc:  # a UTF-16/32 stream: the rest cannot be read
                raise FileRejected(
                    f"Row {number} is not valid {self.encoding}: {exc.reason}; choose the file's encoding."
                ) from None
            except csv.Error as exc:  # e.g. a value over csv.field_size_limit(): this row only
                message = f"The row (from line {start_line}) cannot be read as CSV: {exc}."
                if self._seekable and self.line > start_line:
                    message += f" Reading goes on from line {start_line + 1}."
                    self._restart_after(start_line, start_pos)
                yield number, RowProblem(message)
                continue
            # The last row took several lines to the end of the file: a quote never closed?
            at_end = self._seekable and self.line > start_line and self._next_pos >= self._size
            if at_end and self._quote_left_open(start_pos):
                yield (
                    number,
                    RowProblem(
                        f"A quote opened in this row (line {start_line}) is never closed; "
                        f"reading goes on from line {start_line + 1}."
                    ),
                )
                self._restart_after(start_line, start_pos)
                continue
            if self._undecodable:
                _, message = self._undecodable[0]
                self._undecodable.clear()
                yield number, RowProblem(message)
                continue
            yield number, [unneutralize(value) for value in row]


def _count_lines(raw: IO[bytes]) -> int:
    # An estimate for the progress bar (quoted newlines count too); the header is not a row.
    lines, last = 0, b""
    while chunk := raw.read(1024 * 1024):
        lines += chunk.count(b"\n")
        last = chunk
    raw.seek(0)
    if last and not last.endswith(b"\n"):
        lines += 1
    return max(0, lines - 1)


def check_xlsx(raw: IO[bytes]) -> None:
    """Refuse a file that is not a zip, or would unpack to too much (a zip bomb), before parsing it."""
    try:
        with zipfile.ZipFile(raw) as archive:
            members = archive.infolist()
    except zipfile.BadZipFile:
        raise FileRejected("The file is not an XLSX workbook (not a zip archive).") from None
    finally:
        raw.seek(0)
    unpacked = 0
    limit = conf.ASYNC_TASKS_XLSX_MAX_RATIO
    for member in members:
        unpacked += member.file_size
        ratio = member.file_size // max(member.compress_size, 1)
        if member.file_size > 1024 * 1024 and ratio > limit:
            raise FileRejected(
                f"The workbook member {member.filename!r} unpacks {ratio} times its size"
                f" (limit {limit}): refused as a zip bomb."
            )
    if unpacked > conf.ASYNC_TASKS_XLSX_MAX_UNPACKED:
        raise FileRejected(
            f"The workbook unpacks to {unpacked} bytes (limit {conf.ASYNC_TASKS_XLSX_MAX_UNPACKED}): refused."
        )


def _xml_parser() -> Any:
    """An expat parser giving names as ``{namespace}local`` that refuses entity declarations
    (a "billion laughs" workbook) instead of expanding them."""
    from xml.parsers import expat

    parser = expat.ParserCreate(namespace_separator="}")
    parser.buffer_text = True

    def refuse(*args: Any) -> None:
        raise FileRejected("The workbook declares XML entities: refused.")

    parser.EntityDeclHandler = refuse
    parser.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)
    return parser


def _clark(name: str) -> str:
    return "{" + name if "}" in name else name


def _feed(parser: Any, source: IO[bytes]) -> Iterator[None]:
    """Feed ``source`` to ``parser`` a chunk at a time, yielding after each chunk."""
    from xml.parsers import expat

    try:
        while chunk := source.read(_XML_CHUNK):
            parser.Parse(chunk, False)
            yield
        parser.Parse(b"", True)
    except expat.ExpatError as exc:
        raise FileRejected(f"The workbook's XML is damaged: {exc}.") from None
    yield


#: OOXML's escape of a character XML cannot carry (ECMA-376 ST_Xstring): ``_x000D_`` is a carriage
#: return, ``_x005F_`` an underscore (so ``_x005F_x000D_`` is the text "_x000D_").
_XSTRING_ESCAPE = re.compile(r"_x([0-9A-Fa-f]{4})_")


def unescape_xstring(text: str) -> str:
    """The text Excel (and XlsxWriter) escaped; openpyxl reads such escapes literally."""
    if "_x" not in text:
        return text
    return _XSTRING_ESCAPE.sub(lambda match: chr(int(match.group(1), 16)), text)


class _BoundedText:
    """Text collected from many callbacks, kept up to ``MAX_CELL`` + 1 characters."""

    __slots__ = ("parts", "size")

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.size = 0

    def add(self, data: str) -> None:
        room = MAX_CELL + 1 - self.size
        if room > 0:
            self.parts.append(data[:room])
            self.size += min(len(data), room)

    def text(self) -> str:
        return "".join(self.parts)


class DiskStrings(Sequence[str]):
    """A workbook's shared strings in a temporary file: memory holds 8 bytes per string.

    openpyxl reads a sheet row by row (read-only mode), but loads the shared-string table
    whole; a 17 MB workbook with 180 MB of shared strings took half a gigabyte. Here the
    table is parsed as a stream (expat, a chunk at a time) and looked up on disk, and no string
    is kept past ``MAX_CELL`` + 1 characters (a cell that long is an error of its row anyway),
    so an import's memory stays flat whatever one string or all of them hold.
    """

    def __init__(self, source: IO[bytes]) -> None:
        from openpyxl.xml.constants import SHEET_MAIN_NS

        si, t, rph = (f"{{{SHEET_MAIN_NS}}}{name}" for name in ("si", "t", "rPh"))
        self._file = tempfile.TemporaryFile()  # noqa: SIM115 (closed with the workbook)
        self._offsets = array("Q", [0])
        state = {"text": None, "in_t": False, "phonetic": 0}

        def start(name: str, attrs: dict) -> None:
            name = _clark(name)
            if name == si:
                state["text"] = _BoundedText()
            elif name == rph:
                state["phonetic"] += 1  # a reading aid (furigana), not part of the text
            elif name == t and not state["phonetic"]:
                state["in_t"] = True

        def end(name: str) -> None:
            name = _clark(name)
            if name == t:
                state["in_t"] = False
            elif name == rph:
                state["phonetic"] -= 1
            elif name == si and state["text"] is not None:
                text = unescape_xstring(state["text"].text())
                self._file.write(text.encode("utf-8", "surrogatepass"))
                self._offsets.append(self._file.tell())
                state["text"] = None

        def data(text: str) -> None:
            if state["in_t"] and state["text"] is not None:
                state["text"].add(text)

        parser = _xml_parser()
        parser.StartElementHandler, parser.EndElementHandler = start, end
        parser.CharacterDataHandler = data
        for _ in _feed(parser, source):
            pass

    def __len__(self) -> int:
        return len(self._offsets) - 1

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        if index < 0:
            index += len(self)
        start, end = self._offsets[index], self._offsets[index + 1]
        self._file.seek(start)
        return self._file.read(end - start).decode("utf-8", "surrogatepass")

    def close(self) -> None:
        self._file.close()


def _flat_sheet_class() -> type:
    """openpyxl 3.1's read-only worksheet, reading rows without keeping any (see ``parse``).

    openpyxl's sheet parser clears each row it has read but leaves the emptied element in the
    sheet's tree: about 90 bytes a row, 80 MB for 900,000 rows. These two overrides are
    openpyxl 3.1's ``WorkSheetParser.parse`` (rows only: the read-only values need nothing
    else) and ``ReadOnlyWorksheet._cells_by_row`` (unchanged but for the parser), pinned to
    ``openpyxl>=3.1,<3.2``; ``tests/test_async_import.py`` compares their rows with openpyxl's.
    """
    from openpyxl.worksheet._read_only import ReadOnlyWorksheet
    from openpyxl.worksheet._reader import CELL_TAG, INLINE_STRING, ROW_TAG, VALUE_TAG, WorkSheetParser
    from openpyxl.xml.constants import SHEET_MAIN_NS

    TEXT_TAG = f"{{{SHEET_MAIN_NS}}}t"

    class FlatParser(WorkSheetParser):
        def parse(self) -> Iterator[Any]:
            """Rows as openpyxl's ``parse_row`` gives them, read with expat a chunk at a time:
            no row is kept once read, no text past ``MAX_CELL`` + 1 characters, no cell of a row
            past ``MAX_COLUMNS`` (such a row is a ``RowProblem``)."""
            from xml.etree.ElementTree import Element, SubElement

            rows: list[Any] = []
            state: dict[str, Any] = {"row": None, "cell": None, "text": None, "wide": False}

            def start(name: str, attrs: dict) -> None:
                name = _clark(name)
                if name == ROW_TAG:
                    state["row"], state["wide"] = [], False
                    self._start_row(attrs)
                elif name == CELL_TAG and state["row"] is not None:
                    if len(state["row"]) >= MAX_COLUMNS:
                        state["wide"] = True
                        state["cell"] = None
                    else:
                        state["cell"] = Element(CELL_TAG, attrs)
                elif state["cell"] is not None and name in (VALUE_TAG, INLINE_STRING, TEXT_TAG):
                    parent = state["cell"].find(INLINE_STRING) if name == TEXT_TAG else state["cell"]
                    if parent is not None:
                        element = SubElement(parent, name)
                        if name != INLINE_STRING:
                            state["text"] = (element, _BoundedText())

            def end(name: str) -> None:
                name = _clark(name)
                if state["text"] is not None and name in (VALUE_TAG, TEXT_TAG):
                    element, text = state["text"]
                    element.text = unescape_xstring(text.text())
                    state["text"] = None
                elif name == CELL_TAG and state["cell"] is not None:
                    state["row"].append(self.parse_cell(state["cell"]))
                    state["cell"] = None
                elif name == ROW_TAG and state["row"] is not None:
                    if state["wide"]:  # in place of its values
                        problem = f"The row has more than {MAX_COLUMNS:,} cells; the rest were not read."
                        rows.append((self.row_counter, RowProblem(problem)))
                    else:
                        rows.append((self.row_counter, state["row"]))
                    state["row"] = None

            def data(text: str) -> None:
                if state["text"] is not None:
                    state["text"][1].add(text)

            parser = _xml_parser()
            parser.StartElementHandler, parser.EndElementHandler = start, end
            parser.CharacterDataHandler = data
            for _ in _feed(parser, self.source):
                yield from rows
                rows.clear()

        def _start_row(self, attrs: dict) -> None:  # openpyxl's parse_row, without the cells
            if "r" in attrs:
                try:
                    self.row_counter = int(attrs["r"])
                except ValueError:
                    value = float(attrs["r"])
                    if not value.is_integer():
                        raise ValueError(f"{attrs['r']} is not a valid row number") from None
                    self.row_counter = int(value)
            else:
                self.row_counter += 1
            self.col_counter = 0

    class _Found(Exception):
        pass

    class FlatSheet(ReadOnlyWorksheet):
        def _get_size(self) -> None:
            """openpyxl's, with expat stopping at ``<dimension>`` or ``<sheetData>``: openpyxl's
            own parse of a sheet without a dimension record built the whole sheet in memory."""
            from openpyxl.utils.cell import range_boundaries

            dimension = f"{{{SHEET_MAIN_NS}}}dimension"
            sheet_data = f"{{{SHEET_MAIN_NS}}}sheetData"
            found: dict[str, str] = {}

            def start(name: str, attrs: dict) -> None:
                name = _clark(name)
                if name == dimension:
                    found["ref"] = attrs.get("ref", "")
                    raise _Found
                if name == sheet_data:
                    raise _Found

            parser = _xml_parser()
            parser.StartElementHandler = start
            with self._get_source() as src:
                try:
                    for _ in _feed(parser, src):
                        pass
                except _Found:
                    pass
            if found.get("ref"):
                try:
                    bounds = range_boundaries(found["ref"])
                except (TypeError, ValueError):
                    return  # a damaged record: unsized, as openpyxl leaves it
                if None not in bounds:
                    self._min_column, self._min_row, self._max_column, self._max_row = bounds

        def _cells_by_row(self, min_col, min_row, max_col, max_row, values_only=False):  # noqa: ANN001
            filler = None if values_only else openpyxl_empty_cell()
            max_col = max_col or self.max_column
            max_row = max_row or self.max_row
            empty_row: tuple = ()
            if max_col is not None:
                empty_row = (filler,) * (max_col + 1 - min_col)
            counter = min_row
            idx = 1
            with self._get_source() as src:
                parser = FlatParser(
                    src,
                    self._shared_strings,
                    data_only=self.parent.data_only,
                    epoch=self.parent.epoch,
                    date_formats=self.parent._date_formats,
                    timedelta_formats=self.parent._timedelta_formats,
                )
                for idx, row in parser.parse():
                    if max_row is not None and idx > max_row:
                        break
                    for _ in range(counter, idx):  # some rows are missing
                        counter += 1
                        yield empty_row
                    if counter <= idx:
                        if not isinstance(row, RowProblem):
                            row = self._get_row(row, min_col, max_col, values_only)
                        counter += 1
                        yield row
            if max_row is not None and max_row < idx:
                for _ in range(counter, max_row + 1):
                    yield empty_row

    return FlatSheet


def openpyxl_empty_cell() -> Any:
    from openpyxl.cell.read_only import EMPTY_CELL

    return EMPTY_CELL


def _open_workbook(raw: IO[bytes]) -> Any:
    """openpyxl's read-only workbook: shared strings on disk (``DiskStrings``), rows not kept."""
    from openpyxl.reader.excel import SHARED_STRINGS, ExcelReader

    flat = _flat_sheet_class()

    class Reader(ExcelReader):
        def read_strings(self) -> None:
            part = self.package.find(SHARED_STRINGS)
            if part is not None:
                with self.archive.open(part.PartName[1:]) as source:
                    self.shared_strings = DiskStrings(source)

        def read_worksheets(self) -> None:  # openpyxl 3.1's read-only branch, with FlatSheet
            for sheet, rel in self.parser.find_sheets():
                if rel.target not in self.valid_files:
                    continue
                if "chartsheet" in rel.Type:
                    self.read_chartsheet(sheet, rel)
                    continue
                worksheet = flat(self.wb, sheet.name, rel.target, self.shared_strings)
                worksheet.sheet_state = sheet.state
                self.wb._sheets.append(worksheet)

    reader = Reader(raw, read_only=True, data_only=True)
    reader.read()
    book = reader.wb
    book._disk_strings = reader.shared_strings  # closed with the book
    return book


class XlsxReader:
    """Rows of one sheet of an XLSX workbook, read-only (streamed, shared strings on disk)."""

    def __init__(self, raw: IO[bytes], *, sheet: str | None = None) -> None:
        check_xlsx(raw)
        try:
            self._book = _open_workbook(raw)
        except Exception as exc:  # openpyxl raises many types for a damaged workbook
            raise FileRejected(f"The workbook cannot be opened: {exc}.") from None
        if sheet:
            if sheet not in self._book.sheetnames:
                names = ", ".join(self._book.sheetnames)
                raise FileRejected(
                    f"The workbook has no sheet {_shown(sheet)!r}; its sheets: {_shown(names, 500)}."
                )
            self._sheet = self._book[sheet]
        else:
            self._sheet = self._book.worksheets[0]
        self.total = max(0, (self._sheet.max_row or 1) - 1)
        self._rows = self._sheet.iter_rows(values_only=True)
        first = next(self._rows, ())
        if isinstance(first, RowProblem):
            raise FileRejected(f"The header row has more than {MAX_COLUMNS:,} cells.")
        self.header = ["" if v is None else str(v) for v in first]

    def __iter__(self) -> Iterator[tuple[int, list[Any] | RowProblem]]:
        for number, row in enumerate(self._rows, start=2):
            if isinstance(row, RowProblem):
                yield number, row
            else:
                yield number, ["" if v is None else v for v in row]

    def close(self) -> None:
        self._book.close()
        strings = getattr(self._book, "_disk_strings", None)
        if isinstance(strings, DiskStrings):
            strings.close()


#: What ``neutralize`` guards: a text a spreadsheet would run as a formula, also behind apostrophes
#: (so that the guard, undone by ``unneutralize``, never eats an apostrophe that was the text's own).
_GUARDED = re.compile("'*[=+\\-@\t\r]")


def neutralize(value: str) -> str:
    """A text a spreadsheet would run as a formula, made inert by one leading apostrophe (CSV)."""
    if value and _GUARDED.match(value):
        return "'" + value
    return value


def unneutralize(value: str) -> str:
    """Undo exactly what ``neutralize`` added: export -> import gives back the same text."""
    if value.startswith("'") and _GUARDED.match(value, 1):
        return value[1:]
    return value


def is_number(value: str) -> bool:
    """Does a spreadsheet read ``value`` as a number ("-5", "+1.5e3")? Such values need no guard."""
    try:
        float(value)
    except ValueError:
        return False
    return value.strip() == value and value.lower().lstrip("+-") not in ("inf", "infinity", "nan")


class CsvWriter:
    def __init__(self, out: IO[bytes]) -> None:
        # UTF-8 with a BOM: Excel then opens non-ASCII text correctly; the importer accepts both.
        self._text = io.TextIOWrapper(out, encoding="utf-8-sig", newline="", write_through=False)
        self._writer = csv.writer(self._text)

    def writerows(self, rows: Any) -> None:
        self._writer.writerows(rows)

    def close(self) -> None:
        self._text.flush()
        self._text.detach()


class XlsxWriter:
    """XLSX through XlsxWriter in constant-memory mode: each row goes to disk as it is written.

    Strings are never turned into formulas or links (XlsxWriter would for a leading '=' or
    'http://'), on top of the neutralization the exporter applies.
    """

    def __init__(self, out: IO[bytes], title: str = "Sheet1") -> None:
        import xlsxwriter

        self._book = xlsxwriter.Workbook(
            out,
            {
                "constant_memory": True,
                "strings_to_formulas": False,
                "strings_to_urls": False,
                "strings_to_numbers": False,
                "default_date_format": "yyyy-mm-dd",
                "remove_timezone": True,
            },
        )
        self._sheet = self._book.add_worksheet(title[:31])
        self._row = 0

    def writerows(self, rows: Any) -> None:
        write_row, row = self._sheet.write_row, self._row
        for values in rows:
            write_row(row, 0, values)
            row += 1
        self._row = row

    def close(self) -> None:
        self._book.close()
