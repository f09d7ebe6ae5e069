//! Primitive decoding shared by every OCDBT object: a bounds-checked byte
//! reader (LEB128 varints, fixed-width integers) and the envelope that
//! frames manifests, B+tree nodes and version-tree nodes (magic, length,
//! format version, optional zstd compression, CRC-32C).
//!
//! Everything here is pure: bytes in, values or an [`OcdbtError`] naming
//! the file and object out.

use std::io::Read;

use bytes::Bytes;

use super::OcdbtError;

/// Magic number of a manifest.
pub(crate) const MANIFEST_MAGIC: u32 = 0x0CDB_3A2A;
/// Magic number of a B+tree node.
pub(crate) const BTREE_NODE_MAGIC: u32 = 0x0CDB_20DE;
/// Magic number of a version-tree node.
pub(crate) const VERSION_NODE_MAGIC: u32 = 0x0CDB_1234;

/// The smallest possible envelope: magic, length, version, compression, CRC.
const MIN_ENVELOPE_BYTES: usize = 4 + 8 + 1 + 1 + 4;

/// Where an encoded object was read from; every decoding error names it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Origin<'a> {
    /// The storage key of the file holding the object.
    pub file: &'a str,
    /// What the object is, e.g. `"B+tree node"`.
    pub object: &'static str,
    /// Byte offset of the object in `file`.
    pub offset: u64,
}

impl Origin<'_> {
    /// A [`OcdbtError::Corrupt`] about this object.
    pub fn corrupt(&self, what: impl Into<String>) -> OcdbtError {
        OcdbtError::Corrupt { file: self.file.to_string(), object: self.object, offset: self.offset, what: what.into() }
    }

    /// A [`OcdbtError::Truncated`] about this object.
    pub fn truncated(&self, what: impl Into<String>) -> OcdbtError {
        OcdbtError::Truncated {
            file: self.file.to_string(),
            object: self.object,
            offset: self.offset,
            what: what.into(),
        }
    }

    /// A [`OcdbtError::Limit`] about this object.
    pub fn limit(&self, what: &'static str, value: u64, max: u64) -> OcdbtError {
        OcdbtError::Limit { file: self.file.to_string(), object: self.object, offset: self.offset, what, value, max }
    }
}

/// The largest end (offset + length) of any reference into a data file (TensorStore's limit).
const MAX_REFERENCE_END: u64 = i64::MAX as u64;

/// Checks that a reference `[offset, offset + length)` does not overflow and
/// ends at most at 2^63 − 1.
pub(crate) fn check_reference(origin: &Origin<'_>, offset: u64, length: u64) -> Result<(), OcdbtError> {
    match offset.checked_add(length) {
        Some(end) if end <= MAX_REFERENCE_END => Ok(()),
        _ => Err(origin.corrupt(format!("reference offset {offset} + length {length} exceeds 2^63-1"))),
    }
}

/// A cursor over a decoded body. Every read is bounds-checked and names the
/// field it was reading when it fails.
#[derive(Debug)]
pub(crate) struct Reader<'a> {
    data: &'a Bytes,
    pos: usize,
    origin: Origin<'a>,
}

impl<'a> Reader<'a> {
    /// Reads `data` from its start; errors are attributed to `origin`.
    pub fn new(data: &'a Bytes, origin: Origin<'a>) -> Self {
        Reader { data, pos: 0, origin }
    }

    /// Where the bytes came from.
    pub fn origin(&self) -> &Origin<'a> {
        &self.origin
    }

    /// Bytes not yet consumed.
    pub fn remaining(&self) -> usize {
        self.data.len() - self.pos
    }

    fn end_of_data(&self, field: &str) -> OcdbtError {
        self.origin.truncated(format!("body ends at byte {} while reading {field}", self.data.len()))
    }

    /// `n` raw bytes (a cheap slice of the body).
    pub fn bytes(&mut self, n: usize, field: &str) -> Result<Bytes, OcdbtError> {
        if n > self.remaining() {
            return Err(self.end_of_data(field));
        }
        let out = self.data.slice(self.pos..self.pos + n);
        self.pos += n;
        Ok(out)
    }

    fn array<const N: usize>(&mut self, field: &str) -> Result<[u8; N], OcdbtError> {
        let mut out = [0u8; N];
        if N > self.remaining() {
            return Err(self.end_of_data(field));
        }
        out.copy_from_slice(&self.data[self.pos..self.pos + N]);
        self.pos += N;
        Ok(out)
    }

    /// One byte.
    pub fn u8(&mut self, field: &str) -> Result<u8, OcdbtError> {
        Ok(self.array::<1>(field)?[0])
    }

    /// A little-endian `i32`.
    pub fn i32_le(&mut self, field: &str) -> Result<i32, OcdbtError> {
        Ok(i32::from_le_bytes(self.array(field)?))
    }

    /// A little-endian `u64`.
    pub fn u64_le(&mut self, field: &str) -> Result<u64, OcdbtError> {
        Ok(u64::from_le_bytes(self.array(field)?))
    }

    /// An unsigned LEB128 varint of at most `max_bytes` bytes whose value fits in `max_bits`.
    fn varint_bounded(&mut self, field: &str, max_bytes: usize, max_bits: u32) -> Result<u64, OcdbtError> {
        let start = self.pos;
        let mut value: u64 = 0;
        for i in 0..max_bytes {
            let byte = self.u8(field)?;
            let shift = 7 * i as u32;
            let group = u64::from(byte & 0x7f);
            // Bits that would land at or above `max_bits` make the varint overflow.
            let fits =
                if shift >= max_bits { group == 0 } else { max_bits - shift >= 7 || group >> (max_bits - shift) == 0 };
            if !fits {
                break;
            }
            value |= group << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(self.origin.corrupt(format!("varint {field} at body byte {start} overflows {max_bits} bits")))
    }

    /// A varint64 (≤ 10 bytes).
    pub fn varint(&mut self, field: &str) -> Result<u64, OcdbtError> {
        self.varint_bounded(field, 10, 64)
    }

    /// A varint32 (≤ 5 bytes, value ≤ 2^32 − 1).
    pub fn varint32(&mut self, field: &str) -> Result<u32, OcdbtError> {
        // Lossless: the value was checked to fit in 32 bits.
        self.varint_bounded(field, 5, 32).map(|v| v as u32)
    }

    /// A varint whose value must be ≤ 65535 (key and path lengths).
    pub fn varint16(&mut self, field: &str) -> Result<usize, OcdbtError> {
        let start = self.pos;
        let value = self.varint(field)?;
        if value > u64::from(u16::MAX) {
            return Err(self.origin.corrupt(format!("{field} at body byte {start} is {value}, more than 65535")));
        }
        Ok(value as usize)
    }

    /// An element count: checked against `max` and against the bytes left,
    /// given that each element needs at least `min_bytes_each` bytes, so that
    /// no allocation is ever sized by an unchecked number.
    pub fn count(&mut self, field: &'static str, max: u64, min_bytes_each: usize) -> Result<usize, OcdbtError> {
        let n = self.varint(field)?;
        if n > max {
            return Err(self.origin.limit(field, n, max));
        }
        let needed = n.saturating_mul(min_bytes_each as u64);
        if needed > self.remaining() as u64 {
            return Err(self
                .origin
                .truncated(format!("{field} is {n} but only {} bytes of the body remain", self.remaining())));
        }
        Ok(n as usize)
    }

    /// `n` values read by `read`, column-wise.
    pub fn column<T>(
        &mut self,
        n: usize,
        mut read: impl FnMut(&mut Self) -> Result<T, OcdbtError>,
    ) -> Result<Vec<T>, OcdbtError> {
        let mut out = Vec::with_capacity(n.min(self.remaining()));
        for _ in 0..n {
            out.push(read(self)?);
        }
        Ok(out)
    }

    /// Checks that the whole body was consumed.
    pub fn finish(self) -> Result<(), OcdbtError> {
        match self.remaining() {
            0 => Ok(()),
            extra => Err(self.origin.corrupt(format!("{extra} unexpected trailing bytes after the last field"))),
        }
    }
}

/// Verifies the envelope of an encoded object and returns its (decompressed) body.
///
/// `encoded` must be exactly the object (its length field is compared with
/// `encoded.len()`); the CRC-32C is checked before any other field but the
/// length is trusted; a zstd body must be one frame ending exactly before the
/// CRC and may decompress to at most `max_decoded` bytes.
/// Largest length field taken at face value (256 TiB).
const MAX_PLAUSIBLE_OBJECT_BYTES: u64 = 1 << 48;

pub(crate) fn decode_envelope(
    encoded: &Bytes,
    magic: u32,
    origin: Origin<'_>,
    max_decoded: u64,
) -> Result<Bytes, OcdbtError> {
    let len = encoded.len();
    if len < MIN_ENVELOPE_BYTES {
        return Err(origin.truncated(format!("{len} bytes, less than the minimum of {MIN_ENVELOPE_BYTES}")));
    }
    let found = u32::from_be_bytes([encoded[0], encoded[1], encoded[2], encoded[3]]);
    if found != magic {
        return Err(origin.corrupt(format!("magic number {found:#010x}, expected {magic:#010x}")));
    }
    let mut length_field = [0u8; 8];
    length_field.copy_from_slice(&encoded[4..12]);
    let length = u64::from_le_bytes(length_field);
    if length != len as u64 {
        // TensorStore 0.1.34/0.1.35 wrote objects without the length field:
        // version 0 and compression 0/1 follow the magic directly, then a
        // zstd frame or a body starting with random bytes (the uuid), so the
        // four bytes after them are not all zero.
        let pre_release = encoded[4] == 0 && encoded[5] <= 1 && encoded[6..10].iter().any(|&b| b != 0);
        if pre_release && length > len as u64 {
            return Err(OcdbtError::Unsupported {
                file: origin.file.to_string(),
                object: origin.object,
                offset: origin.offset,
                what: "no length field: pre-release encoding of TensorStore 0.1.34/0.1.35".into(),
            });
        }
        // No object of a real database comes near 2^48 bytes; such a length
        // field is garbage, not a short read.
        if length > MAX_PLAUSIBLE_OBJECT_BYTES {
            return Err(origin.limit("length field", length, MAX_PLAUSIBLE_OBJECT_BYTES));
        }
        return Err(if length > len as u64 {
            origin.truncated(format!("length field says {length} bytes but only {len} are present"))
        } else {
            origin.corrupt(format!("length field says {length} bytes but the object has {len}"))
        });
    }
    let mut crc_field = [0u8; 4];
    crc_field.copy_from_slice(&encoded[len - 4..]);
    let stored = u32::from_le_bytes(crc_field);
    let computed = crc32c::crc32c(&encoded[..len - 4]);
    if stored != computed {
        return Err(OcdbtError::Checksum {
            file: origin.file.to_string(),
            object: origin.object,
            offset: origin.offset,
            stored,
            computed,
        });
    }
    let inner = encoded.slice(12..len - 4);
    let mut header = Reader::new(&inner, origin);
    let version = header.varint32("format version")?;
    if version != 0 {
        return Err(OcdbtError::Version {
            file: origin.file.to_string(),
            object: origin.object,
            offset: origin.offset,
            found: u64::from(version),
        });
    }
    let compression = header.varint32("compression format")?;
    let payload = inner.slice(inner.len() - header.remaining()..);
    match compression {
        0 => {
            if payload.len() as u64 > max_decoded {
                return Err(origin.limit("decoded body size", payload.len() as u64, max_decoded));
            }
            Ok(payload)
        }
        1 => inflate_zstd(&payload, origin, max_decoded).map(Bytes::from),
        other => Err(origin.corrupt(format!("unknown compression format {other}"))),
    }
}

/// Decompresses exactly one zstd frame, refusing output beyond `max_decoded` bytes.
fn inflate_zstd(frame: &[u8], origin: Origin<'_>, max_decoded: u64) -> Result<Vec<u8>, OcdbtError> {
    use zstd::zstd_safe;

    let frame_len = zstd_safe::find_frame_compressed_size(frame)
        .map_err(|code| origin.corrupt(format!("invalid zstd frame: {}", zstd_safe::get_error_name(code))))?;
    if frame_len != frame.len() {
        return Err(origin
            .corrupt(format!("{} bytes follow the zstd frame (only one frame is allowed)", frame.len() - frame_len)));
    }
    if let Ok(Some(declared)) = zstd_safe::get_frame_content_size(frame) {
        if declared > max_decoded {
            return Err(origin.limit("declared decompressed size", declared, max_decoded));
        }
    }
    let decoder = zstd::stream::read::Decoder::with_buffer(frame)
        .map_err(|e| origin.corrupt(format!("zstd: {e}")))?
        .single_frame();
    let mut body = Vec::new();
    decoder
        .take(max_decoded.saturating_add(1))
        .read_to_end(&mut body)
        .map_err(|e| origin.corrupt(format!("zstd: {e}")))?;
    if body.len() as u64 > max_decoded {
        return Err(origin.limit("decompressed size", body.len() as u64, max_decoded));
    }
    Ok(body)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::ErrorKind;

    pub(crate) const ORIGIN: Origin<'static> = Origin { file: "db/d/file", object: "test object", offset: 7 };

    /// Encodes `body` the way TensorStore does (test helper for every decoder).
    pub(crate) fn envelope(magic: u32, body: &[u8], zstd: bool) -> Bytes {
        let mut inner = vec![0u8];
        if zstd {
            inner.push(1);
            inner.extend(zstd::bulk::compress(body, 0).unwrap());
        } else {
            inner.push(0);
            inner.extend_from_slice(body);
        }
        let len = 4 + 8 + inner.len() + 4;
        let mut out = magic.to_be_bytes().to_vec();
        out.extend((len as u64).to_le_bytes());
        out.extend(inner);
        let crc = crc32c::crc32c(&out);
        out.extend(crc.to_le_bytes());
        Bytes::from(out)
    }

    /// LEB128 encoding of `v`.
    pub(crate) fn varint(mut v: u64) -> Vec<u8> {
        let mut out = Vec::new();
        loop {
            let byte = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                out.push(byte);
                return out;
            }
            out.push(byte | 0x80);
        }
    }

    fn read_varint(bytes: &[u8]) -> Result<u64, OcdbtError> {
        let data = Bytes::copy_from_slice(bytes);
        Reader::new(&data, ORIGIN).varint("v")
    }

    #[test]
    fn varints_decode_and_overflow_is_an_error() {
        assert_eq!(read_varint(&[0]).unwrap(), 0);
        assert_eq!(read_varint(&[0x96, 0x03]).unwrap(), 406);
        assert_eq!(read_varint(&[0xff; 9].iter().copied().chain([1]).collect::<Vec<_>>()).unwrap(), u64::MAX);
        // Non-canonical (over-long) encodings are accepted, as by TensorStore.
        assert_eq!(read_varint(&[0x80, 0x80, 0x00]).unwrap(), 0);
        for bad in [&[0xff; 10][..], &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02], &[0x80; 11]] {
            assert_eq!(read_varint(bad).unwrap_err().kind(), ErrorKind::Corrupt, "{bad:?}");
        }
        assert_eq!(read_varint(&[0x80]).unwrap_err().kind(), ErrorKind::Truncated);
        for v in [0, 1, 127, 128, 300, 1 << 35, u64::MAX] {
            assert_eq!(read_varint(&varint(v)).unwrap(), v);
        }
    }

    #[test]
    fn varint32_and_varint16_bounds() {
        let data = Bytes::from_static(&[0xff, 0xff, 0xff, 0xff, 0x0f, 0xff, 0xff, 0xff, 0xff, 0x1f]);
        let mut r = Reader::new(&data, ORIGIN);
        assert_eq!(r.varint32("a").unwrap(), u32::MAX);
        assert_eq!(r.varint32("b").unwrap_err().kind(), ErrorKind::Corrupt);
        let data = Bytes::from_static(&[0xff, 0xff, 0x03, 0x80, 0x80, 0x04]);
        let mut r = Reader::new(&data, ORIGIN);
        assert_eq!(r.varint16("a").unwrap(), 65535);
        let err = r.varint16("b").unwrap_err();
        assert!(err.to_string().contains("more than 65535"), "{err}");
    }

    #[test]
    fn counts_are_checked_against_limits_and_remaining_bytes() {
        let data = Bytes::from(varint(u64::MAX));
        assert_eq!(Reader::new(&data, ORIGIN).count("n", 1 << 20, 1).unwrap_err().kind(), ErrorKind::Limit);
        let mut bytes = varint(5);
        bytes.extend([0; 9]);
        let data = Bytes::from(bytes);
        assert_eq!(Reader::new(&data, ORIGIN).count("n", 100, 2).unwrap_err().kind(), ErrorKind::Truncated);
        assert_eq!(Reader::new(&data, ORIGIN).count("n", 100, 1).unwrap(), 5);
    }

    #[test]
    fn envelope_round_trips_raw_and_zstd() {
        for zstd in [false, true] {
            let encoded = envelope(BTREE_NODE_MAGIC, b"hello body", zstd);
            let body = decode_envelope(&encoded, BTREE_NODE_MAGIC, ORIGIN, 1 << 20).unwrap();
            assert_eq!(&body[..], b"hello body");
        }
    }

    #[test]
    fn envelope_errors() {
        let good = envelope(MANIFEST_MAGIC, b"some body bytes", false);
        let decode = |b: &[u8]| decode_envelope(&Bytes::copy_from_slice(b), MANIFEST_MAGIC, ORIGIN, 1 << 20);

        // Any flipped byte after the length field is a checksum error.
        for i in 12..good.len() {
            let mut bad = good.to_vec();
            bad[i] ^= 0x01;
            assert_eq!(decode(&bad).unwrap_err().kind(), ErrorKind::Checksum, "byte {i}");
        }
        let mut bad = good.to_vec();
        bad[0] = 0x0d;
        let err = decode(&bad).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Corrupt);
        assert!(err.to_string().contains("db/d/file: test object at offset 7"), "{err}");
        assert!(err.to_string().contains("magic"), "{err}");

        // Truncation: shorter than the length field says, or shorter than any envelope.
        for cut in [0, 5, 15, good.len() - 1] {
            assert_eq!(decode(&good[..cut]).unwrap_err().kind(), ErrorKind::Truncated, "cut {cut}");
        }
        // Longer than the length field says.
        let mut long = good.to_vec();
        long.push(0);
        assert_eq!(decode(&long).unwrap_err().kind(), ErrorKind::Corrupt);

        // Format version 1 (with a valid CRC) is reported as such.
        let mut v1 = good.to_vec();
        v1[12] = 1;
        let n = v1.len();
        let crc = crc32c::crc32c(&v1[..n - 4]);
        v1[n - 4..].copy_from_slice(&crc.to_le_bytes());
        let err = decode(&v1).unwrap_err();
        assert!(matches!(err, OcdbtError::Version { found: 1, .. }), "{err}");
        assert!(err.to_string().contains("maximum supported version is 0"), "{err}");

        // Unknown compression format.
        let mut c2 = good.to_vec();
        c2[13] = 2;
        let crc = crc32c::crc32c(&c2[..n - 4]);
        c2[n - 4..].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(decode(&c2).unwrap_err().kind(), ErrorKind::Corrupt);
    }

    #[test]
    fn zstd_bodies_are_bounded_and_single_framed() {
        let big = vec![0u8; 100_000];
        let encoded = envelope(BTREE_NODE_MAGIC, &big, true);
        let err = decode_envelope(&encoded, BTREE_NODE_MAGIC, ORIGIN, 1000).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Limit);

        // Two concatenated frames are rejected.
        let frame = zstd::bulk::compress(b"abc", 0).unwrap();
        let mut body = vec![0u8, 1];
        body.extend(&frame);
        body.extend(&frame);
        let len = 12 + body.len() + 4;
        let mut out = BTREE_NODE_MAGIC.to_be_bytes().to_vec();
        out.extend((len as u64).to_le_bytes());
        out.extend(body);
        let crc = crc32c::crc32c(&out);
        out.extend(crc.to_le_bytes());
        let err = decode_envelope(&Bytes::from(out), BTREE_NODE_MAGIC, ORIGIN, 1 << 20).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Corrupt);

        // Garbage instead of a frame.
        let mut out = BTREE_NODE_MAGIC.to_be_bytes().to_vec();
        out.extend(21u64.to_le_bytes());
        out.extend([0, 1, 1, 2, 3]);
        let crc = crc32c::crc32c(&out);
        out.extend(crc.to_le_bytes());
        let err = decode_envelope(&Bytes::from(out), BTREE_NODE_MAGIC, ORIGIN, 1 << 20).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Corrupt);
    }

    #[test]
    fn pre_release_encoding_is_unsupported() {
        // magic, version 0, compression 0, body, no length and no CRC.
        let mut old = MANIFEST_MAGIC.to_be_bytes().to_vec();
        old.extend([0, 0, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9]);
        let err = decode_envelope(&Bytes::from(old), MANIFEST_MAGIC, ORIGIN, 1 << 20).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Unsupported);
    }
}
