//! The byte layout of the embedded store's records, written by hand so the file format
//! is exactly what is written here (fixed-width little-endian integers, then the bytes
//! that vary), with nothing a dependency upgrade could change.
//!
//! ```text
//!   kv value:   create u64 | mod u64 | version u64 | lease u64 (0 = none) | value…
//!   log entry:  0u8 | create u64 | version u64 | lease u64 | key len u32 | key | value…   (put)
//!               1u8 | key…                                                             (delete)
//! ```

use crate::{Error, Result};

/// One key's stored state, as in the `kv` table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Record {
    pub create: u64,
    pub modified: u64,
    pub version: u64,
    /// 0 when the key is under no lease.
    pub lease: u64,
    pub value: Vec<u8>,
}

/// One change, as in the `log` table (its revision is the table key).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Change {
    Put {
        key: String,
        create: u64,
        version: u64,
        lease: u64,
        value: Vec<u8>,
    },
    Delete {
        key: String,
    },
}

const PUT: u8 = 0;
const DELETE: u8 = 1;

pub(super) fn encode_record(
    create: u64,
    modified: u64,
    version: u64,
    lease: u64,
    value: &[u8],
) -> Vec<u8> {
    let mut out = Vec::with_capacity(32 + value.len());
    for n in [create, modified, version, lease] {
        out.extend_from_slice(&n.to_le_bytes());
    }
    out.extend_from_slice(value);
    out
}

pub(super) fn decode_record(bytes: &[u8]) -> Result<Record> {
    let mut r = Reader::new(bytes, "key record");
    Ok(Record {
        create: r.u64()?,
        modified: r.u64()?,
        version: r.u64()?,
        lease: r.u64()?,
        value: r.rest().to_vec(),
    })
}

pub(super) fn encode_put(
    key: &str,
    create: u64,
    version: u64,
    lease: u64,
    value: &[u8],
) -> Vec<u8> {
    let key_len = u32::try_from(key.len()).expect("keys are far shorter than 4 GiB");
    let mut out = Vec::with_capacity(1 + 28 + key.len() + value.len());
    out.push(PUT);
    for n in [create, version, lease] {
        out.extend_from_slice(&n.to_le_bytes());
    }
    out.extend_from_slice(&key_len.to_le_bytes());
    out.extend_from_slice(key.as_bytes());
    out.extend_from_slice(value);
    out
}

pub(super) fn encode_delete(key: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + key.len());
    out.push(DELETE);
    out.extend_from_slice(key.as_bytes());
    out
}

pub(super) fn decode_change(bytes: &[u8]) -> Result<Change> {
    let mut r = Reader::new(bytes, "log entry");
    match r.u8()? {
        PUT => {
            let create = r.u64()?;
            let version = r.u64()?;
            let lease = r.u64()?;
            let key_len = r.u32()? as usize;
            let key = r.string(key_len)?;
            Ok(Change::Put {
                key,
                create,
                version,
                lease,
                value: r.rest().to_vec(),
            })
        }
        DELETE => {
            let len = r.remaining();
            Ok(Change::Delete {
                key: r.string(len)?,
            })
        }
        other => Err(Error::Corrupt(format!("log entry of unknown kind {other}"))),
    }
}

/// Reads fixed-width fields off the front of a record, failing on truncation.
struct Reader<'a> {
    bytes: &'a [u8],
    what: &'static str,
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8], what: &'static str) -> Reader<'a> {
        Reader { bytes, what }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if self.bytes.len() < n {
            return Err(Error::Corrupt(format!("{} is truncated", self.what)));
        }
        let (head, tail) = self.bytes.split_at(n);
        self.bytes = tail;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self) -> Result<u32> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes(b.try_into().expect("4 bytes")))
    }

    fn u64(&mut self) -> Result<u64> {
        let b = self.take(8)?;
        Ok(u64::from_le_bytes(b.try_into().expect("8 bytes")))
    }

    fn string(&mut self, n: usize) -> Result<String> {
        let what = self.what;
        let b = self.take(n)?;
        String::from_utf8(b.to_vec())
            .map_err(|_| Error::Corrupt(format!("{what} has a key that is not UTF-8")))
    }

    fn remaining(&self) -> usize {
        self.bytes.len()
    }

    fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip() {
        let bytes = encode_record(3, 9, 4, 0, b"value");
        assert_eq!(
            decode_record(&bytes).unwrap(),
            Record {
                create: 3,
                modified: 9,
                version: 4,
                lease: 0,
                value: b"value".to_vec()
            }
        );
    }

    #[test]
    fn changes_round_trip() {
        let put = encode_put("clusters/a", 2, 1, 7, b"");
        assert_eq!(
            decode_change(&put).unwrap(),
            Change::Put {
                key: "clusters/a".into(),
                create: 2,
                version: 1,
                lease: 7,
                value: vec![]
            }
        );
        let delete = encode_delete("clusters/a");
        assert_eq!(
            decode_change(&delete).unwrap(),
            Change::Delete {
                key: "clusters/a".into()
            }
        );
    }

    #[test]
    fn truncated_and_unknown_data_is_corrupt_not_a_panic() {
        let put = encode_put("k", 2, 1, 0, b"v");
        for cut in 0..(1 + 24 + 4 + 1) {
            assert!(
                matches!(decode_change(&put[..cut]), Err(Error::Corrupt(_))),
                "cut at {cut}"
            );
        }
        assert!(matches!(decode_record(&[0; 31]), Err(Error::Corrupt(_))));
        assert!(
            matches!(decode_change(&[9, b'k']), Err(Error::Corrupt(m)) if m.contains("unknown kind 9"))
        );
        assert!(
            matches!(decode_change(&[DELETE, 0xff]), Err(Error::Corrupt(m)) if m.contains("UTF-8"))
        );
    }
}
