//! Writing netlink messages and attributes into one growing buffer: nlmsghdr + nfgenmsg headers, attributes
//! (padded to 4 bytes), nests (flagged NLA_F_NESTED, as libnftnl does) whose lengths are patched when they
//! close, and the small type-length-value format nft stores in set userdata.

use super::sys::*;

/// A nest's 16-bit length overflowed: the caller must split its content across messages.
#[derive(Debug, PartialEq, Eq)]
pub struct NestTooLong;

/// A buffer of netlink messages, one batch.
#[derive(Debug, Default)]
pub struct Writer {
    buf: Vec<u8>,
}

/// Where an open message or nest starts, to patch its length when it closes.
#[derive(Clone, Copy, Debug)]
#[must_use]
pub struct Mark(usize);

fn pad4(n: usize) -> usize {
    (n + 3) & !3
}

impl Writer {
    pub fn with_capacity(capacity: usize) -> Writer {
        Writer { buf: Vec::with_capacity(capacity) }
    }

    pub fn into_bytes(self) -> Vec<u8> {
        self.buf
    }

    /// Start a message: nlmsghdr (its length patched by `end_msg`) followed by nfgenmsg.
    pub fn begin_msg(&mut self, ty: u16, flags: u16, seq: u32, family: u8, res_id: u16) -> Mark {
        let start = self.buf.len();
        self.buf.extend_from_slice(&0u32.to_ne_bytes());
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(&flags.to_ne_bytes());
        self.buf.extend_from_slice(&seq.to_ne_bytes());
        self.buf.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel fills it in
        self.buf.push(family);
        self.buf.push(NFNETLINK_V0);
        // nfgenmsg.res_id is big-endian; it names the subsystem of a batch.
        self.buf.extend_from_slice(&res_id.to_be_bytes());
        Mark(start)
    }

    pub fn end_msg(&mut self, m: Mark) {
        let len = u32::try_from(self.buf.len() - m.0).expect("a netlink message fits in u32");
        self.buf[m.0..m.0 + 4].copy_from_slice(&len.to_ne_bytes());
    }

    /// Drop everything written since `m` (a message or nest that turned out not to fit).
    pub fn truncate(&mut self, m: Mark) {
        self.buf.truncate(m.0);
    }

    pub fn put(&mut self, ty: u16, data: &[u8]) {
        let len = 4 + data.len();
        let len16 = u16::try_from(len).expect("a flat attribute fits in u16");
        self.buf.extend_from_slice(&len16.to_ne_bytes());
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(data);
        self.buf.resize(self.buf.len() + pad4(len) - len, 0);
    }

    /// A NUL-terminated string, as the kernel's NLA_STRING policies expect from nft.
    pub fn put_str(&mut self, ty: u16, s: &str) {
        let len = 4 + s.len() + 1;
        let len16 = u16::try_from(len).expect("a name fits in u16");
        self.buf.extend_from_slice(&len16.to_ne_bytes());
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(s.as_bytes());
        self.buf.push(0);
        self.buf.resize(self.buf.len() + pad4(len) - len, 0);
    }

    /// nf_tables' u32 attributes are big-endian.
    pub fn put_be32(&mut self, ty: u16, v: u32) {
        self.put(ty, &v.to_be_bytes());
    }

    pub fn put_be64(&mut self, ty: u16, v: u64) {
        self.put(ty, &v.to_be_bytes());
    }

    pub fn begin_nest(&mut self, ty: u16) -> Mark {
        let start = self.buf.len();
        self.buf.extend_from_slice(&0u16.to_ne_bytes());
        self.buf.extend_from_slice(&(ty | NLA_F_NESTED).to_ne_bytes());
        Mark(start)
    }

    /// Close a nest; fails (leaving the nest open) when its length does not fit the 16-bit attribute length.
    pub fn try_end_nest(&mut self, m: Mark) -> Result<(), NestTooLong> {
        let len = u16::try_from(self.buf.len() - m.0).map_err(|_| NestTooLong)?;
        self.buf[m.0..m.0 + 2].copy_from_slice(&len.to_ne_bytes());
        Ok(())
    }

    /// Close a nest whose content is bounded by construction (an expression, a key).
    pub fn end_nest(&mut self, m: Mark) {
        self.try_end_nest(m).expect("a bounded nest fits in u16");
    }

    /// The bytes written since `m`.
    pub fn since(&self, m: Mark) -> usize {
        self.buf.len() - m.0
    }

    /// `NFTA_DATA_VALUE` inside a nest of type `ty` (cmp data, keys, immediate values).
    pub fn put_value(&mut self, ty: u16, value: &[u8]) {
        let n = self.begin_nest(ty);
        self.put(NFTA_DATA_VALUE, value);
        self.end_nest(n);
    }
}

/// libnftnl's userdata TLVs: a one-byte type, a one-byte length, the value (no padding). Nests are TLVs whose
/// value is more TLVs.
#[derive(Debug, Default)]
pub struct Udata(Vec<u8>);

impl Udata {
    pub fn new() -> Udata {
        Udata::default()
    }

    pub fn put(mut self, ty: u8, value: &[u8]) -> Udata {
        self.0.push(ty);
        self.0.push(u8::try_from(value.len()).expect("userdata values are short"));
        self.0.extend_from_slice(value);
        self
    }

    /// nftnl_udata_put_u32 stores host byte order.
    pub fn u32(self, ty: u8, v: u32) -> Udata {
        self.put(ty, &v.to_ne_bytes())
    }

    pub fn nest(self, ty: u8, inner: Udata) -> Udata {
        let bytes = inner.0;
        self.put(ty, &bytes)
    }

    pub fn into_bytes(self) -> Vec<u8> {
        self.0
    }
}
