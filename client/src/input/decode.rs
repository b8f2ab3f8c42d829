//! Text files in the encodings CRM exports come in, streamed to UTF-8.
//!
//! A BOM decides first (UTF-8, UTF-16LE, UTF-16BE). Without one the file is
//! read as UTF-8; if the first window of bytes holding non-ASCII text is not
//! valid UTF-8, the file is Windows-1252 (Excel's "CSV" on a Western
//! Windows), which only changes how the non-ASCII bytes read, since
//! everything before that window was ASCII, the same in both. `--encoding`
//! forces any WHATWG label instead. Bytes that a BOM's or a forced encoding
//! cannot decode stop the read with the line they are on; a file taken as
//! UTF-8 without being forced is passed through untouched, so a stray
//! invalid byte further on only makes its cell invalid (`not-utf8`).

use encoding_rs::{Decoder, DecoderResult, Encoding, UTF_8, WINDOWS_1252};
use std::io::{self, Read};
use std::sync::{Arc, Mutex};

/// Raw bytes read at a time; also the window that decides UTF-8 or not.
const WINDOW: usize = 64 << 10;

/// How a file's encoding was chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detection {
    /// A byte-order mark.
    Bom,
    /// No BOM, and the bytes are UTF-8 (or ASCII).
    Utf8,
    /// No BOM, and the bytes are not UTF-8: read as Windows-1252.
    Fallback,
    /// Given with `--encoding`.
    Forced,
}

/// The encoding a reader settled on: the encoding and how it was chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decoded {
    /// The encoding.
    pub encoding: &'static Encoding,
    /// How it was chosen.
    pub detection: Detection,
}

impl Decoded {
    /// The encoding's WHATWG name (`UTF-8`, `UTF-16LE`, `windows-1252`, …).
    pub fn name(&self) -> &'static str {
        self.encoding.name()
    }
}

/// The encoding of a [`DecodingReader`] as it stands, readable by whoever
/// owns the reader (it decides on the way, so a pure-ASCII header may be
/// followed by a decision further down).
#[derive(Debug, Clone)]
pub struct DecodedAs(Arc<Mutex<Decoded>>);

impl DecodedAs {
    fn new(encoding: &'static Encoding, detection: Detection) -> Self {
        Self(Arc::new(Mutex::new(Decoded {
            encoding,
            detection,
        })))
    }

    fn set(&self, decoded: Decoded) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = decoded;
    }

    /// The encoding so far (final once the reader reached the end).
    pub fn get(&self) -> Decoded {
        *self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The encoding to read a file in: found out, or given.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum EncodingChoice {
    /// BOM, else UTF-8, else Windows-1252.
    #[default]
    Auto,
    /// This one (a BOM of the same encoding is skipped).
    Forced(&'static Encoding),
}

impl EncodingChoice {
    /// A WHATWG label (`utf-8`, `latin1`, `windows-1252`, `utf-16le`, …), or
    /// `Auto` for none; `None` for a label that names no usable encoding.
    pub fn from_label(label: Option<&str>) -> Option<Self> {
        let Some(label) = label else {
            return Some(Self::Auto);
        };
        match Encoding::for_label(label.trim().as_bytes()) {
            // The "replacement" encoding decodes nothing: never what is meant.
            Some(e) if e != encoding_rs::REPLACEMENT => Some(Self::Forced(e)),
            _ => None,
        }
    }
}

/// Bytes the chosen encoding cannot decode, on line `line` of the file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: bytes that are not valid {encoding}; give the file's encoding with --encoding NAME")]
pub struct DecodeError {
    /// The line (1-based) the bad bytes are on.
    pub line: u64,
    /// The encoding's name.
    pub encoding: &'static str,
}

impl DecodeError {
    /// The `DecodeError` an I/O error of a [`DecodingReader`] carries.
    pub fn of(e: &io::Error) -> Option<&DecodeError> {
        e.get_ref().and_then(|inner| inner.downcast_ref())
    }
}

enum Mode {
    /// ASCII so far, no BOM: UTF-8 or Windows-1252 not decided yet.
    Undecided,
    /// UTF-8 not forced: bytes passed on as they are.
    PassThrough,
    /// Decoded to UTF-8; malformed input is an error.
    Decode(Box<Decoder>),
    /// The decoder was flushed at the end of the input.
    Done,
}

/// A reader of UTF-8 over a file in another (or an unknown) encoding.
pub struct DecodingReader<R> {
    inner: R,
    mode: Mode,
    /// Raw bytes read but not yet decoded or passed on.
    raw: Vec<u8>,
    /// Output waiting to be read, from `out_pos`.
    out: Vec<u8>,
    out_pos: usize,
    /// The inner reader reached its end.
    eof: bool,
    /// Line breaks in the output so far (for error messages).
    lines: LineBreaks,
    decided: DecodedAs,
}

impl<R: Read> DecodingReader<R> {
    /// A reader of `inner` in `choice`; its BOM (if any) is read at once.
    pub fn new(mut inner: R, choice: EncodingChoice) -> io::Result<Self> {
        let mut raw = Vec::with_capacity(WINDOW);
        let eof = fill(&mut inner, &mut raw, 3)?;
        let (mode, decided) = match choice {
            EncodingChoice::Forced(e) => (
                Mode::Decode(Box::new(e.new_decoder_with_bom_removal())),
                DecodedAs::new(e, Detection::Forced),
            ),
            EncodingChoice::Auto => match Encoding::for_bom(&raw) {
                Some((e, bom)) => {
                    raw.drain(..bom);
                    let mode = if e == UTF_8 {
                        Mode::PassThrough
                    } else {
                        Mode::Decode(Box::new(e.new_decoder_without_bom_handling()))
                    };
                    (mode, DecodedAs::new(e, Detection::Bom))
                }
                None => (Mode::Undecided, DecodedAs::new(UTF_8, Detection::Utf8)),
            },
        };
        Ok(Self {
            inner,
            mode,
            raw,
            out: Vec::new(),
            out_pos: 0,
            eof,
            lines: LineBreaks::default(),
            decided,
        })
    }

    /// The encoding as decided so far.
    pub fn decided(&self) -> DecodedAs {
        self.decided.clone()
    }

    /// Read more raw bytes (up to a window); notes the end.
    fn read_raw(&mut self) -> io::Result<()> {
        if !self.eof {
            let want = self.raw.len() + WINDOW;
            self.eof = fill(&mut self.inner, &mut self.raw, want)?;
        }
        Ok(())
    }

    /// Fill `out` with the next output; leaves it empty only at the end.
    fn produce(&mut self) -> io::Result<()> {
        self.out.clear();
        self.out_pos = 0;
        loop {
            if matches!(self.mode, Mode::Decode(_)) && self.raw.is_empty() {
                self.read_raw()?;
            }
            match &mut self.mode {
                Mode::Done => return Ok(()),
                Mode::PassThrough => {
                    self.out.append(&mut self.raw);
                    if self.out.is_empty() && !self.eof {
                        self.read_raw()?;
                        self.out.append(&mut self.raw);
                    }
                    return Ok(());
                }
                Mode::Undecided => {
                    // Decide on a whole window after the first non-ASCII byte.
                    let non_ascii = !self.raw.is_ascii();
                    if !self.eof && (self.raw.is_empty() || non_ascii && self.raw.len() < WINDOW) {
                        self.read_raw()?;
                    }
                    self.decide();
                    if !self.out.is_empty() || self.eof && self.raw.is_empty() {
                        return Ok(());
                    }
                }
                Mode::Decode(decoder) => {
                    let last = self.eof;
                    let room = decoder
                        .max_utf8_buffer_length_without_replacement(self.raw.len())
                        .unwrap_or(self.raw.len() * 3 + 16);
                    self.out.resize(room, 0);
                    let (result, read, written) =
                        decoder.decode_to_utf8_without_replacement(&self.raw, &mut self.out, last);
                    self.out.truncate(written);
                    self.raw.drain(..read);
                    if let DecoderResult::Malformed(..) = result {
                        self.lines.count(&self.out);
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            DecodeError {
                                line: self.lines.line(),
                                encoding: self.decided.get().name(),
                            },
                        ));
                    }
                    self.lines.count(&self.out);
                    if last && self.raw.is_empty() {
                        self.mode = Mode::Done;
                    }
                    if !self.out.is_empty() || matches!(self.mode, Mode::Done) {
                        return Ok(());
                    }
                }
            }
        }
    }

    /// In `Undecided` mode: pass on the ASCII prefix of `raw`, and decide at
    /// the first non-ASCII byte from the window that follows it.
    fn decide(&mut self) {
        let Some(first) = self.raw.iter().position(|b| !b.is_ascii()) else {
            self.out.append(&mut self.raw);
            return;
        };
        let utf8 = match std::str::from_utf8(&self.raw[first..]) {
            Ok(_) => true,
            Err(e) if e.error_len().is_some() => false,
            // Valid up to a sequence cut by the window's end: valid so far.
            Err(e) if e.valid_up_to() > 0 => true,
            // The first sequence itself is cut: wait for more bytes.
            Err(_) if !self.eof => {
                self.out.extend(self.raw.drain(..first));
                return;
            }
            Err(_) => false,
        };
        self.out.extend(self.raw.drain(..first));
        if utf8 {
            self.mode = Mode::PassThrough;
        } else {
            self.mode = Mode::Decode(Box::new(WINDOWS_1252.new_decoder_without_bom_handling()));
            self.decided.set(Decoded {
                encoding: WINDOWS_1252,
                detection: Detection::Fallback,
            });
        }
    }
}

impl<R: Read> Read for DecodingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let drained = self.out_pos == self.out.len() && self.raw.is_empty();
        if drained && matches!(self.mode, Mode::PassThrough) {
            return self.inner.read(buf); // UTF-8: no copy at all.
        }
        if self.out_pos == self.out.len() {
            self.produce()?;
        }
        let n = buf.len().min(self.out.len() - self.out_pos);
        buf[..n].copy_from_slice(&self.out[self.out_pos..self.out_pos + n]);
        self.out_pos += n;
        Ok(n)
    }
}

/// Read into `buf` until it holds `want` bytes or the end; true at the end.
fn fill(inner: &mut impl Read, buf: &mut Vec<u8>, want: usize) -> io::Result<bool> {
    let mut chunk = [0u8; 8192];
    while buf.len() < want {
        let n = match inner.read(&mut chunk[..(want - buf.len()).min(8192)]) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if n == 0 {
            return Ok(true);
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Ok(false)
}

/// Counts line breaks of decoded text: LF, CRLF and a lone CR each end a
/// line (Excel on old Macs wrote lone CRs), also across buffers.
#[derive(Debug, Default, Clone)]
pub(crate) struct LineBreaks {
    breaks: u64,
    after_cr: bool,
}

impl LineBreaks {
    /// Count the breaks in the next bytes; calls `at(i)` with the offset in
    /// `bytes` of each break (the CR of a CRLF).
    pub(crate) fn scan(&mut self, bytes: &[u8], mut at: impl FnMut(usize)) {
        for (i, &b) in bytes.iter().enumerate() {
            match b {
                b'\r' => {
                    self.breaks += 1;
                    at(i);
                    self.after_cr = true;
                }
                b'\n' if self.after_cr => self.after_cr = false,
                b'\n' => {
                    self.breaks += 1;
                    at(i);
                }
                _ => self.after_cr = false,
            }
        }
    }

    fn count(&mut self, bytes: &[u8]) {
        self.scan(bytes, |_| {});
    }

    /// The 1-based line the next byte is on.
    pub(crate) fn line(&self) -> u64 {
        self.breaks + 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn decode(bytes: &[u8], choice: EncodingChoice) -> (io::Result<String>, Decoded) {
        let mut r = DecodingReader::new(bytes, choice).unwrap();
        let mut out = Vec::new();
        let res = r
            .read_to_end(&mut out)
            .map(|_| String::from_utf8_lossy(&out).into_owned());
        (res, r.decided().get())
    }

    fn utf16(text: &str, big_endian: bool) -> Vec<u8> {
        let mut out = if big_endian {
            vec![0xFE, 0xFF]
        } else {
            vec![0xFF, 0xFE]
        };
        for unit in text.encode_utf16() {
            let b = if big_endian {
                unit.to_be_bytes()
            } else {
                unit.to_le_bytes()
            };
            out.extend_from_slice(&b);
        }
        out
    }

    #[test]
    fn boms_choose_the_encoding() {
        let (text, how) = decode(b"\xEF\xBB\xBFt\xC3\xA9l", EncodingChoice::Auto);
        assert_eq!(
            (text.unwrap().as_str(), how.name(), how.detection),
            ("tél", "UTF-8", Detection::Bom)
        );
        for be in [false, true] {
            let (text, how) = decode(&utf16("Téléphone;e\r\n", be), EncodingChoice::Auto);
            assert_eq!(text.unwrap(), "Téléphone;e\r\n");
            assert_eq!(how.name(), if be { "UTF-16BE" } else { "UTF-16LE" });
        }
    }

    #[test]
    fn invalid_utf8_falls_back_to_windows_1252() {
        let (text, how) = decode(b"email;T\xE9l\xE9phone\r\na;\x80\r\n", EncodingChoice::Auto);
        assert_eq!(text.unwrap(), "email;Téléphone\r\na;€\r\n");
        assert_eq!(
            (how.name(), how.detection),
            ("windows-1252", Detection::Fallback)
        );
        let (text, how) = decode(b"plain ascii\n", EncodingChoice::Auto);
        assert_eq!(
            (text.unwrap().as_str(), how.detection),
            ("plain ascii\n", Detection::Utf8)
        );
    }

    #[test]
    fn a_late_non_ascii_byte_still_decides() {
        let mut bytes = b"email\n".repeat(30_000);
        bytes.extend_from_slice(b"caf\xE9\n");
        let (text, how) = decode(&bytes, EncodingChoice::Auto);
        assert!(text.unwrap().ends_with("email\ncafé\n"));
        assert_eq!(how.detection, Detection::Fallback);
    }

    #[test]
    fn invalid_bytes_in_a_forced_encoding_name_their_line() {
        let forced = EncodingChoice::from_label(Some("utf-8")).unwrap();
        let (res, _) = decode(b"a\nb\r\nc\rd \xE9 e\n", forced);
        let e = res.unwrap_err();
        let d = DecodeError::of(&e).expect("a DecodeError");
        assert_eq!((d.line, d.encoding), (4, "UTF-8"));
        assert!(e.to_string().contains("line 4"), "{e}");
    }

    #[test]
    fn labels() {
        assert_eq!(EncodingChoice::from_label(None), Some(EncodingChoice::Auto));
        assert_eq!(
            EncodingChoice::from_label(Some(" Latin1 ")),
            Some(EncodingChoice::Forced(WINDOWS_1252))
        );
        assert_eq!(EncodingChoice::from_label(Some("klingon")), None);
        assert_eq!(EncodingChoice::from_label(Some("iso-2022-kr")), None);
    }

    proptest! {
        #[test]
        fn utf8_round_trips(text in "\\PC{0,300}", lf in any::<bool>()) {
            let text = if lf { text } else { text.replace('\n', "\r\n") };
            let (out, how) = decode(text.as_bytes(), EncodingChoice::Auto);
            prop_assert_eq!(out.unwrap(), text);
            prop_assert_eq!(how.name(), "UTF-8");
        }

        #[test]
        fn utf16_round_trips(text in "\\PC{0,300}", be in any::<bool>()) {
            let (out, _) = decode(&utf16(&text, be), EncodingChoice::Auto);
            prop_assert_eq!(out.unwrap(), text);
        }

        #[test]
        // Accented letters only: their bytes are UTF-8 lead bytes never
        // followed by a continuation byte, so the text is never valid UTF-8
        // (`€` and the like are in the example test above).
        fn windows_1252_round_trips(text in "[ -~àâäçéèêëîïôöùûüÿÀÉÈÇ]{0,300}") {
            let (bytes, _, unmappable) = WINDOWS_1252.encode(&text);
            prop_assert!(!unmappable);
            let (out, how) = decode(&bytes, EncodingChoice::Auto);
            prop_assert_eq!(out.unwrap(), text.clone());
            let expected = if text.is_ascii() { "UTF-8" } else { "windows-1252" };
            prop_assert_eq!(how.name(), expected);
            let forced = EncodingChoice::Forced(WINDOWS_1252);
            prop_assert_eq!(decode(&bytes, forced).0.unwrap(), text);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2000), label in prop_oneof![Just(None), Just(Some("utf-8")), Just(Some("utf-16be")), Just(Some("shift_jis"))]) {
            let choice = EncodingChoice::from_label(label).unwrap();
            let _ = decode(&bytes, choice);
        }
    }
}
