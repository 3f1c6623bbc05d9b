//! lib0's binary encoding, the way npm `lib0/decoding` reads it: variable
//! length unsigned and signed integers, length-prefixed byte arrays and
//! UTF-8 strings, big-endian floats. Every read is bounds-checked and fails
//! with a [`DecodeError`] instead of reading past the end.

use thiserror::Error;

/// The largest integer lib0 reads: JavaScript's `Number.MAX_SAFE_INTEGER`.
pub const MAX_SAFE_INTEGER: u64 = (1 << 53) - 1;

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum DecodeError {
    #[error("unexpected end of message")]
    UnexpectedEnd,
    #[error("variable-length integer overflows 53 bits")]
    VarIntOverflow,
    #[error("{0} trailing bytes after the message")]
    TrailingBytes(usize),
    #[error("string is not valid UTF-8")]
    InvalidUtf8,
}

/// A lib0 decoder over a byte slice.
#[derive(Debug, Clone)]
pub struct Decoder<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Decoder<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Decoder { buf, pos: 0 }
    }

    pub fn read_u8(&mut self) -> Result<u8, DecodeError> {
        let byte = *self.buf.get(self.pos).ok_or(DecodeError::UnexpectedEnd)?;
        self.pos += 1;
        Ok(byte)
    }

    /// An unsigned varint; lib0 numbers are JavaScript numbers, so at most 2^53 - 1.
    pub fn read_var_uint(&mut self) -> Result<u64, DecodeError> {
        let mut value: u64 = 0;
        let mut shift = 0u32;
        loop {
            let byte = self.read_u8()?;
            if shift > 49 {
                return Err(DecodeError::VarIntOverflow);
            }
            value |= u64::from(byte & 0x7f) << shift;
            if byte < 0x80 {
                if value > MAX_SAFE_INTEGER {
                    return Err(DecodeError::VarIntOverflow);
                }
                return Ok(value);
            }
            shift += 7;
        }
    }

    /// lib0's signed varint: sign in bit 6 of the first byte, 6 value bits,
    /// then 7 bits per byte. Returns (negative, magnitude).
    pub fn read_var_int(&mut self) -> Result<(bool, u64), DecodeError> {
        let first = self.read_u8()?;
        let negative = first & 0x40 != 0;
        let mut value = u64::from(first & 0x3f);
        if first & 0x80 == 0 {
            return Ok((negative, value));
        }
        let mut shift = 6u32;
        loop {
            let byte = self.read_u8()?;
            if shift > 49 {
                return Err(DecodeError::VarIntOverflow);
            }
            value |= u64::from(byte & 0x7f) << shift;
            if value > MAX_SAFE_INTEGER {
                return Err(DecodeError::VarIntOverflow);
            }
            if byte < 0x80 {
                return Ok((negative, value));
            }
            shift += 7;
        }
    }

    pub fn read_bytes(&mut self, len: usize) -> Result<&'a [u8], DecodeError> {
        let end = self
            .pos
            .checked_add(len)
            .ok_or(DecodeError::UnexpectedEnd)?;
        let bytes = self
            .buf
            .get(self.pos..end)
            .ok_or(DecodeError::UnexpectedEnd)?;
        self.pos = end;
        Ok(bytes)
    }

    pub fn read_var_bytes(&mut self) -> Result<&'a [u8], DecodeError> {
        let len = usize::try_from(self.read_var_uint()?).map_err(|_| DecodeError::UnexpectedEnd)?;
        self.read_bytes(len)
    }

    /// A length-prefixed string; strictly UTF-8 (yrs refuses what is not).
    pub fn read_var_string(&mut self) -> Result<&'a str, DecodeError> {
        std::str::from_utf8(self.read_var_bytes()?).map_err(|_| DecodeError::InvalidUtf8)
    }

    pub fn read_f32(&mut self) -> Result<f32, DecodeError> {
        let bytes = self.read_bytes(4)?;
        Ok(f32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
    }

    pub fn read_f64(&mut self) -> Result<f64, DecodeError> {
        let mut raw = [0u8; 8];
        raw.copy_from_slice(self.read_bytes(8)?);
        Ok(f64::from_be_bytes(raw))
    }

    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    pub fn finish(&self) -> Result<(), DecodeError> {
        match self.remaining() {
            0 => Ok(()),
            n => Err(DecodeError::TrailingBytes(n)),
        }
    }
}

pub fn write_var_uint(out: &mut Vec<u8>, mut value: u64) {
    while value > 0x7f {
        out.push(0x80 | (value & 0x7f) as u8);
        value >>= 7;
    }
    out.push(value as u8);
}

pub fn write_var_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    write_var_uint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn var_uint_round_trips_and_refuses_overflow() {
        for value in [0, 1, 127, 128, 300, 1 << 32, MAX_SAFE_INTEGER] {
            let mut out = Vec::new();
            write_var_uint(&mut out, value);
            let mut decoder = Decoder::new(&out);
            assert_eq!(decoder.read_var_uint(), Ok(value));
            assert_eq!(decoder.finish(), Ok(()));
        }
        let mut out = Vec::new();
        write_var_uint(&mut out, MAX_SAFE_INTEGER + 1);
        assert_eq!(
            Decoder::new(&out).read_var_uint(),
            Err(DecodeError::VarIntOverflow)
        );
        assert_eq!(
            Decoder::new(&[0x80]).read_var_uint(),
            Err(DecodeError::UnexpectedEnd)
        );
    }

    #[test]
    fn var_int_reads_lib0_signs() {
        // lib0 writeVarInt(-1) = 0x41, writeVarInt(64) = 0x80 0x01, writeVarInt(-200) = 0xc8 0x03
        assert_eq!(Decoder::new(&[0x41]).read_var_int(), Ok((true, 1)));
        assert_eq!(Decoder::new(&[0x80, 0x01]).read_var_int(), Ok((false, 64)));
        assert_eq!(Decoder::new(&[0xc8, 0x03]).read_var_int(), Ok((true, 200)));
    }
}
