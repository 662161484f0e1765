//! Checksums computed from the bytes as the copy reads them: never a second
//! read of the source.
//!
//! A file below [`PIECED_FROM_BYTES`] is hashed whole. A larger one is
//! copied in pieces of [`PIECE_BYTES`] by several workers at once, in any
//! order, so its checksum is the hash of its pieces' hashes, in order (the
//! way S3 builds multipart ETags): the same whether the file was copied in
//! one go or killed and resumed, because the pieces a resume does not copy
//! again are hashed from the durable temporary instead. `ferry verify`
//! computes the same function over a destination.

use std::fmt;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

use serde::Serialize;

/// Files this large or larger are copied, and hashed, in pieces.
pub const PIECED_FROM_BYTES: u64 = 32 << 20;
/// The size of a piece (the engine's range).
pub const PIECE_BYTES: u64 = 16 << 20;

/// Which hash.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ChecksumAlgo {
    /// XXH3-128: fast, not cryptographic. The default.
    Xxh3,
    /// BLAKE3-256: cryptographic.
    Blake3,
}

impl ChecksumAlgo {
    pub fn parse(s: &str) -> Option<ChecksumAlgo> {
        match s {
            "xxh3" | "xxh3-128" => Some(ChecksumAlgo::Xxh3),
            "blake3" => Some(ChecksumAlgo::Blake3),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ChecksumAlgo::Xxh3 => "xxh3",
            ChecksumAlgo::Blake3 => "blake3",
        }
    }

    /// Bytes of a digest.
    pub fn digest_len(self) -> usize {
        match self {
            ChecksumAlgo::Xxh3 => 16,
            ChecksumAlgo::Blake3 => 32,
        }
    }
}

impl fmt::Display for ChecksumAlgo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A digest and the hash that made it. `Copy`: it travels with every
/// finished file through the engine's channels.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Checksum {
    pub algo: ChecksumAlgo,
    bytes: [u8; 32],
}

impl Checksum {
    /// From a stored digest; `None` when its length does not fit the algo.
    pub fn from_digest(algo: ChecksumAlgo, digest: &[u8]) -> Option<Checksum> {
        if digest.len() != algo.digest_len() {
            return None;
        }
        let mut bytes = [0; 32];
        bytes[..digest.len()].copy_from_slice(digest);
        Some(Checksum { algo, bytes })
    }

    pub fn digest(&self) -> &[u8] {
        &self.bytes[..self.algo.digest_len()]
    }

    /// From its `Display` form, `xxh3:0123…`.
    pub fn parse(text: &str) -> Option<Checksum> {
        let (algo, hex) = text.split_once(':')?;
        let algo = ChecksumAlgo::parse(algo)?;
        if hex.len() != 2 * algo.digest_len() {
            return None;
        }
        let mut bytes = [0; 32];
        for (byte, pair) in bytes.iter_mut().zip(hex.as_bytes().chunks_exact(2)) {
            let digit = |c: u8| char::from(c).to_digit(16);
            *byte = (digit(pair[0])? * 16 + digit(pair[1])?) as u8;
        }
        Some(Checksum { algo, bytes })
    }
}

/// `xxh3:0123…`: what status, events and verify show.
impl fmt::Display for Checksum {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Hex by table, written once: the committer prints one per file
        // (`core::fmt` byte by byte was a twentieth of its instructions).
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut text = [0u8; 64];
        for (pair, b) in text.chunks_exact_mut(2).zip(self.digest()) {
            pair[0] = HEX[usize::from(b >> 4)];
            pair[1] = HEX[usize::from(b & 0xf)];
        }
        let hex = &text[..2 * self.digest().len()];
        f.write_str(self.algo.as_str())?;
        f.write_str(":")?;
        f.write_str(std::str::from_utf8(hex).expect("hex digits are ASCII"))
    }
}

impl fmt::Debug for Checksum {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl Serialize for Checksum {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Checksum {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Checksum, D::Error> {
        let text = String::deserialize(d)?;
        Checksum::parse(&text)
            .ok_or_else(|| serde::de::Error::custom(format!("not a checksum: {text:?}")))
    }
}

/// A running hash of one file, or of one piece of it.
pub enum Hasher {
    Xxh3(Box<xxhash_rust::xxh3::Xxh3>),
    Blake3(Box<blake3::Hasher>),
}

impl Hasher {
    pub fn new(algo: ChecksumAlgo) -> Hasher {
        match algo {
            ChecksumAlgo::Xxh3 => Hasher::Xxh3(Box::default()),
            ChecksumAlgo::Blake3 => Hasher::Blake3(Box::default()),
        }
    }

    pub fn update(&mut self, bytes: &[u8]) {
        match self {
            Hasher::Xxh3(h) => h.update(bytes),
            Hasher::Blake3(h) => {
                h.update(bytes);
            }
        }
    }

    /// A hole of the source reads as zeros, and is hashed as such.
    pub fn update_zeros(&mut self, mut len: u64) {
        static ZEROS: [u8; 64 << 10] = [0; 64 << 10];
        while len > 0 {
            let n = len.min(ZEROS.len() as u64) as usize;
            self.update(&ZEROS[..n]);
            len -= n as u64;
        }
    }

    pub fn finish(self) -> Checksum {
        match self {
            Hasher::Xxh3(h) => {
                Checksum::from_digest(ChecksumAlgo::Xxh3, &h.digest128().to_be_bytes())
            }
            Hasher::Blake3(h) => {
                Checksum::from_digest(ChecksumAlgo::Blake3, h.finalize().as_bytes())
            }
        }
        .expect("digest lengths match their algorithm")
    }
}

/// The checksum of a file copied in pieces: the hash of its pieces'
/// digests, in order.
pub fn combine(algo: ChecksumAlgo, pieces: &[Checksum]) -> Checksum {
    let mut hasher = Hasher::new(algo);
    for piece in pieces {
        assert_eq!(piece.algo, algo, "pieces of one file share one algorithm");
        hasher.update(piece.digest());
    }
    hasher.finish()
}

/// The number of pieces of a file of `size` bytes (1 when it is hashed whole).
pub fn pieces(size: u64) -> u64 {
    if size < PIECED_FROM_BYTES {
        1
    } else {
        size.div_ceil(PIECE_BYTES)
    }
}

/// Hashes `[start, end)` of `file` as read now.
pub fn hash_range(
    file: &File,
    algo: ChecksumAlgo,
    start: u64,
    end: u64,
    buffer: &mut Vec<u8>,
) -> io::Result<Checksum> {
    const BUFFER_BYTES: usize = 4 << 20;
    let want =
        usize::try_from(end.saturating_sub(start)).map_or(BUFFER_BYTES, |n| n.min(BUFFER_BYTES));
    if buffer.len() < want {
        buffer.resize(want, 0);
    }
    let mut hasher = Hasher::new(algo);
    let mut pos = start;
    while pos < end {
        let want = ((end - pos) as usize).min(buffer.len());
        let n = file.read_at(&mut buffer[..want], pos)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("it ends at byte {pos}, before {end}"),
            ));
        }
        hasher.update(&buffer[..n]);
        pos += n as u64;
    }
    Ok(hasher.finish())
}

/// The checksum of a file on disk, as the copy would have computed it.
/// `from_disk` first drops the file's cached pages, so that what is read is
/// what the disk holds, not what the copy left in memory.
pub fn of_file(path: &Path, algo: ChecksumAlgo, from_disk: bool) -> io::Result<Checksum> {
    use std::os::unix::fs::OpenOptionsExt;
    // Never through a symlink, and never blocked by a FIFO put there.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags((rustix::fs::OFlags::NOFOLLOW | rustix::fs::OFlags::NONBLOCK).bits() as i32)
        .open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "it is not a regular file",
        ));
    }
    let size = meta.len();
    if from_disk {
        // Clean pages only (the caller made the file durable first).
        rustix::fs::fadvise(&file, 0, None, rustix::fs::Advice::DontNeed)?;
    }
    let mut buffer = Vec::new();
    if size < PIECED_FROM_BYTES {
        return hash_range(&file, algo, 0, size, &mut buffer);
    }
    let mut digests = Vec::with_capacity(pieces(size) as usize);
    let mut start = 0;
    while start < size {
        let end = (start + PIECE_BYTES).min(size);
        digests.push(hash_range(&file, algo, start, end, &mut buffer)?);
        start = end;
    }
    Ok(combine(algo, &digests))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn displays_and_round_trips() {
        let mut h = Hasher::new(ChecksumAlgo::Xxh3);
        h.update(b"abc");
        let c = h.finish();
        assert_eq!(c.digest().len(), 16);
        assert!(c.to_string().starts_with("xxh3:"));
        assert_eq!(Checksum::from_digest(c.algo, c.digest()), Some(c));
        assert_eq!(Checksum::parse(&c.to_string()), Some(c));
        assert_eq!(Checksum::parse("xxh3:abc"), None);
        assert_eq!(Checksum::parse("blake3:00"), None);
        assert_eq!(
            Checksum::from_digest(ChecksumAlgo::Blake3, c.digest()),
            None
        );
        let mut b = Hasher::new(ChecksumAlgo::Blake3);
        b.update(b"abc");
        assert_eq!(b.finish().digest().len(), 32);
    }

    /// The table-written hex is what `{:02x}` per byte writes, and reads
    /// back in either case; anything else is refused.
    #[test]
    fn hex_is_lower_case_two_digits_a_byte_and_reads_back() {
        for algo in [ChecksumAlgo::Xxh3, ChecksumAlgo::Blake3] {
            let digest: Vec<u8> = (0..algo.digest_len() as u8)
                .map(|i| i.wrapping_mul(37).wrapping_add(3))
                .collect();
            let c = Checksum::from_digest(algo, &digest).unwrap();
            let expected: String = digest.iter().map(|b| format!("{b:02x}")).collect();
            assert_eq!(c.to_string(), format!("{algo}:{expected}"));
            assert_eq!(Checksum::parse(&c.to_string()), Some(c));
            let upper = format!("{algo}:{}", expected.to_uppercase());
            assert_eq!(Checksum::parse(&upper), Some(c));
            let not_hex = format!("{algo}:{}", "zz".repeat(algo.digest_len()));
            assert_eq!(Checksum::parse(&not_hex), None);
            let short = format!("{algo}:{}", &expected[2..]);
            assert_eq!(Checksum::parse(&short), None);
        }
        assert_eq!(Checksum::parse("xxh3:+f"), None);
    }

    #[test]
    fn zeros_hash_like_zero_bytes() {
        for algo in [ChecksumAlgo::Xxh3, ChecksumAlgo::Blake3] {
            let mut a = Hasher::new(algo);
            a.update(b"x");
            a.update_zeros(100_000);
            let mut b = Hasher::new(algo);
            b.update(b"x");
            b.update(&vec![0; 100_000]);
            assert_eq!(a.finish(), b.finish());
        }
    }
}
