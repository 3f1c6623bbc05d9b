//! WebSocket framing (RFC 6455) for a server, without I/O: reading the
//! frames a client sends, however the bytes arrive, and writing frame
//! headers for what the server sends (ARCHITECTURE.md, "Sockets").
//!
//! The server owns its sockets: a connection keeps no buffer while it is
//! idle, and a frame that fans out to many clients is written from one
//! shared buffer with a small header per client.

use thiserror::Error;

pub const OPCODE_CONTINUATION: u8 = 0x0;
pub const OPCODE_TEXT: u8 = 0x1;
pub const OPCODE_BINARY: u8 = 0x2;
pub const OPCODE_CLOSE: u8 = 0x8;
pub const OPCODE_PING: u8 = 0x9;
pub const OPCODE_PONG: u8 = 0xa;

/// A frame header is at most 2 + 8 + 4 bytes.
pub const MAX_HEADER_BYTES: usize = 14;
/// Control frames carry at most this much.
pub const MAX_CONTROL_PAYLOAD: usize = 125;

/// Why the client's bytes are not a WebSocket stream we accept. Each maps
/// to a close code (1002 protocol error, 1009 too big).
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum FrameError {
    #[error("unmasked frame from a client")]
    Unmasked,
    #[error("reserved bits set (no extension was agreed)")]
    ReservedBits,
    #[error("unknown opcode {0:#x}")]
    UnknownOpcode(u8),
    #[error("control frame fragmented or longer than 125 bytes")]
    BadControlFrame,
    #[error("continuation without a message to continue")]
    UnexpectedContinuation,
    #[error("new message before the last one was finished")]
    UnfinishedMessage,
    #[error("message of {0} bytes is larger than allowed")]
    TooLarge(u64),
}

impl FrameError {
    /// The close code a server answers this with.
    pub fn close_code(&self) -> u16 {
        match self {
            FrameError::TooLarge(_) => 1009,
            _ => 1002,
        }
    }
}

/// A whole message or control frame from the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incoming {
    Binary(Vec<u8>),
    Text,
    Ping(Vec<u8>),
    Pong,
    Close(Option<(u16, String)>),
}

/// The frame being read.
#[derive(Debug)]
struct Frame {
    fin: bool,
    opcode: u8,
    mask: [u8; 4],
    len: usize,
    /// Payload bytes read so far (unmasked).
    read: usize,
}

/// Reads client frames from bytes as they arrive. Keeps only what a frame
/// still being read needs: at most a header's worth of bytes, and the
/// payload of the message being assembled.
#[derive(Debug, Default)]
pub struct FrameReader {
    max_message: usize,
    header: Vec<u8>,
    frame: Option<Frame>,
    /// The payload of a data message being assembled (across fragments).
    message: Vec<u8>,
    /// The opcode of the message in `message` (binary or text), if any.
    message_opcode: Option<u8>,
    /// The payload of a control frame being read.
    control: Vec<u8>,
}

impl FrameReader {
    pub fn new(max_message: usize) -> Self {
        FrameReader {
            max_message,
            ..FrameReader::default()
        }
    }

    /// Whether nothing is half-read (the reader holds no bytes).
    pub fn is_idle(&self) -> bool {
        self.frame.is_none() && self.header.is_empty() && self.message_opcode.is_none()
    }

    /// Heap bytes the reader holds.
    pub fn held_bytes(&self) -> usize {
        self.header.capacity() + self.message.capacity() + self.control.capacity()
    }

    /// Feeds `bytes`; complete messages are handed to `emit` as they end.
    /// Stops at the first error (the connection is then closed).
    pub fn feed(
        &mut self,
        mut bytes: &[u8],
        mut emit: impl FnMut(Incoming),
    ) -> Result<(), FrameError> {
        while !bytes.is_empty() {
            let Some(frame) = self.frame.as_mut() else {
                bytes = self.read_header(bytes)?;
                if self.frame.as_ref().is_some_and(|f| f.len == 0) {
                    self.finish_frame(&mut emit)?;
                }
                continue;
            };
            let take = (frame.len - frame.read).min(bytes.len());
            let (chunk, rest) = bytes.split_at(take);
            let target = if frame.opcode >= OPCODE_CLOSE {
                &mut self.control
            } else {
                &mut self.message
            };
            let start = target.len();
            target.extend_from_slice(chunk);
            unmask(&mut target[start..], frame.mask, frame.read);
            frame.read += take;
            bytes = rest;
            if frame.read == frame.len {
                self.finish_frame(&mut emit)?;
            }
        }
        Ok(())
    }

    /// Reads (part of) a header; answers the bytes after it.
    fn read_header<'a>(&mut self, bytes: &'a [u8]) -> Result<&'a [u8], FrameError> {
        // Usually the whole header is there: nothing to keep.
        if self.header.is_empty() {
            if let Some((frame, header_len)) = parse_header(bytes)? {
                self.start_frame(frame)?;
                return Ok(&bytes[header_len..]);
            }
        }
        let before = self.header.len();
        let take = (MAX_HEADER_BYTES - before).min(bytes.len());
        self.header.extend_from_slice(&bytes[..take]);
        let Some((frame, header_len)) = parse_header(&self.header)? else {
            // Not all of it yet: keep what came.
            return Ok(&bytes[take..]);
        };
        self.header = Vec::new();
        let consumed = header_len - before;
        self.start_frame(frame)?;
        Ok(&bytes[consumed..])
    }

    fn start_frame(&mut self, frame: Frame) -> Result<(), FrameError> {
        match frame.opcode {
            OPCODE_CLOSE | OPCODE_PING | OPCODE_PONG => {
                if !frame.fin || frame.len > MAX_CONTROL_PAYLOAD {
                    return Err(FrameError::BadControlFrame);
                }
                self.control.clear();
            }
            OPCODE_CONTINUATION => {
                if self.message_opcode.is_none() {
                    return Err(FrameError::UnexpectedContinuation);
                }
            }
            OPCODE_BINARY | OPCODE_TEXT => {
                if self.message_opcode.is_some() {
                    return Err(FrameError::UnfinishedMessage);
                }
                self.message_opcode = Some(frame.opcode);
            }
            other => return Err(FrameError::UnknownOpcode(other)),
        }
        if frame.opcode < OPCODE_CLOSE {
            let total = self.message.len() as u64 + frame.len as u64;
            if total > self.max_message as u64 {
                return Err(FrameError::TooLarge(total));
            }
            // The size is known: one allocation for the whole frame.
            self.message.reserve_exact(frame.len);
        }
        self.frame = Some(frame);
        Ok(())
    }

    fn finish_frame(&mut self, emit: &mut impl FnMut(Incoming)) -> Result<(), FrameError> {
        let Some(frame) = self.frame.take() else {
            return Ok(());
        };
        match frame.opcode {
            OPCODE_PING => emit(Incoming::Ping(std::mem::take(&mut self.control))),
            OPCODE_PONG => emit(Incoming::Pong),
            OPCODE_CLOSE => {
                let payload = std::mem::take(&mut self.control);
                let reason = (payload.len() >= 2).then(|| {
                    let code = u16::from_be_bytes([payload[0], payload[1]]);
                    (code, String::from_utf8_lossy(&payload[2..]).into_owned())
                });
                emit(Incoming::Close(reason));
            }
            _ if frame.fin => {
                let message = std::mem::take(&mut self.message);
                match self.message_opcode.take() {
                    Some(OPCODE_TEXT) => emit(Incoming::Text),
                    _ => emit(Incoming::Binary(message)),
                }
            }
            _ => {}
        }
        Ok(())
    }
}

/// Parses a client frame header; None while `bytes` holds only part of it.
fn parse_header(bytes: &[u8]) -> Result<Option<(Frame, usize)>, FrameError> {
    let [first, second, ..] = *bytes else {
        return Ok(None);
    };
    if first & 0x70 != 0 {
        return Err(FrameError::ReservedBits);
    }
    if second & 0x80 == 0 {
        return Err(FrameError::Unmasked);
    }
    let (len, at) = match second & 0x7f {
        126 => match bytes.get(2..4) {
            Some(b) => (u64::from(u16::from_be_bytes([b[0], b[1]])), 4),
            None => return Ok(None),
        },
        127 => match bytes.get(2..10) {
            Some(b) => {
                let mut raw = [0u8; 8];
                raw.copy_from_slice(b);
                (u64::from_be_bytes(raw), 10)
            }
            None => return Ok(None),
        },
        n => (u64::from(n), 2),
    };
    let Some(mask) = bytes.get(at..at + 4) else {
        return Ok(None);
    };
    let len = usize::try_from(len).map_err(|_| FrameError::TooLarge(len))?;
    Ok(Some((
        Frame {
            fin: first & 0x80 != 0,
            opcode: first & 0x0f,
            mask: [mask[0], mask[1], mask[2], mask[3]],
            len,
            read: 0,
        },
        at + 4,
    )))
}

/// Unmasks `data`, which starts `offset` bytes into its frame's payload.
pub fn unmask(data: &mut [u8], mask: [u8; 4], offset: usize) {
    let rotated = u32::from_ne_bytes(mask).rotate_right(8 * (offset % 4) as u32);
    let key = u64::from(rotated) | (u64::from(rotated) << 32);
    let key_bytes = key.to_ne_bytes();
    let mut chunks = data.chunks_exact_mut(8);
    for chunk in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        chunk.copy_from_slice(&(u64::from_ne_bytes(word) ^ key).to_ne_bytes());
    }
    for (i, byte) in chunks.into_remainder().iter_mut().enumerate() {
        *byte ^= key_bytes[i % 8];
    }
}

/// Writes the header of an unmasked, final server frame; answers its length.
pub fn encode_header(out: &mut [u8; 10], opcode: u8, len: usize) -> usize {
    out[0] = 0x80 | opcode;
    if len < 126 {
        out[1] = len as u8;
        2
    } else if let Ok(short) = u16::try_from(len) {
        out[1] = 126;
        out[2..4].copy_from_slice(&short.to_be_bytes());
        4
    } else {
        out[1] = 127;
        out[2..10].copy_from_slice(&(len as u64).to_be_bytes());
        10
    }
}

/// A whole server frame (header and payload), for control frames and the like.
pub fn encode_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut header = [0u8; 10];
    let n = encode_header(&mut header, opcode, payload.len());
    let mut out = Vec::with_capacity(n + payload.len());
    out.extend_from_slice(&header[..n]);
    out.extend_from_slice(payload);
    out
}

/// A close frame with `code` and `reason` (cut to fit a control frame).
pub fn encode_close(code: u16, reason: &str) -> Vec<u8> {
    let mut end = reason.len().min(MAX_CONTROL_PAYLOAD - 2);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let mut payload = Vec::with_capacity(2 + end);
    payload.extend_from_slice(&code.to_be_bytes());
    payload.extend_from_slice(&reason.as_bytes()[..end]);
    encode_frame(OPCODE_CLOSE, &payload)
}

/// A frame as a client sends it (masked with `mask`), `fin` false for the
/// first pieces of a fragmented message: what tests and fuzzers feed the server.
pub fn encode_client_frame(fin: bool, opcode: u8, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
    let mut out = vec![(u8::from(fin) << 7) | opcode];
    match payload.len() {
        n if n < 126 => out.push(0x80 | n as u8),
        n if n <= 0xffff => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&mask);
    let start = out.len();
    out.extend_from_slice(payload);
    unmask(&mut out[start..], mask, 0);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_all(reader: &mut FrameReader, bytes: &[u8], step: usize) -> Vec<Incoming> {
        let mut got = Vec::new();
        for chunk in bytes.chunks(step.max(1)) {
            reader.feed(chunk, |m| got.push(m)).expect("valid frames");
        }
        got
    }

    #[test]
    fn frames_arrive_in_any_pieces() {
        let big: Vec<u8> = (0..70_000u32).map(|i| (i % 251) as u8).collect();
        let mut stream = encode_client_frame(true, OPCODE_BINARY, b"hello", [1, 2, 3, 4]);
        stream.extend(encode_client_frame(true, OPCODE_PING, b"p", [9, 8, 7, 6]));
        stream.extend(encode_client_frame(
            false,
            OPCODE_BINARY,
            &big[..300],
            [5, 6, 7, 8],
        ));
        stream.extend(encode_client_frame(
            true,
            OPCODE_CONTINUATION,
            &big[300..],
            [1, 1, 2, 3],
        ));
        stream.extend(encode_client_frame(true, OPCODE_PING, b"", [9, 8, 7, 6]));
        stream.extend(encode_client_frame(
            true,
            OPCODE_CLOSE,
            &[0x03, 0xe8, b'b', b'y', b'e'],
            [0, 0, 0, 1],
        ));
        for step in [1, 2, 3, 7, 64, 1000, stream.len()] {
            let mut reader = FrameReader::new(1 << 20);
            let got = read_all(&mut reader, &stream, step);
            assert_eq!(
                got,
                vec![
                    Incoming::Binary(b"hello".to_vec()),
                    Incoming::Ping(b"p".to_vec()),
                    Incoming::Binary(big.clone()),
                    Incoming::Ping(Vec::new()),
                    Incoming::Close(Some((1000, "bye".into()))),
                ],
                "in pieces of {step}"
            );
            assert!(reader.is_idle());
        }
    }

    #[test]
    fn protocol_errors_are_refused() {
        let mut reader = FrameReader::new(100);
        let unmasked = [0x82, 0x01, 0x00];
        assert_eq!(reader.feed(&unmasked, |_| {}), Err(FrameError::Unmasked));
        let too_big = encode_client_frame(true, OPCODE_BINARY, &[0u8; 101], [1, 2, 3, 4]);
        assert_eq!(
            FrameReader::new(100).feed(&too_big[..10], |_| {}),
            Err(FrameError::TooLarge(101)),
            "refused from the header, before the payload"
        );
        let long_ping = encode_client_frame(true, OPCODE_PING, &[0u8; 126], [1, 2, 3, 4]);
        assert_eq!(
            FrameReader::new(1000).feed(&long_ping, |_| {}),
            Err(FrameError::BadControlFrame)
        );
        let orphan = encode_client_frame(true, OPCODE_CONTINUATION, b"x", [1, 2, 3, 4]);
        assert_eq!(
            FrameReader::new(1000).feed(&orphan, |_| {}),
            Err(FrameError::UnexpectedContinuation)
        );
        assert_eq!(
            FrameReader::new(1000).feed(&[0xc2, 0x80, 0, 0, 0, 0], |_| {}),
            Err(FrameError::ReservedBits)
        );
    }

    #[test]
    fn headers_are_encoded_for_every_length() {
        let mut header = [0u8; 10];
        assert_eq!(encode_header(&mut header, OPCODE_BINARY, 5), 2);
        assert_eq!(&header[..2], &[0x82, 5]);
        assert_eq!(encode_header(&mut header, OPCODE_BINARY, 300), 4);
        assert_eq!(&header[..4], &[0x82, 126, 1, 44]);
        assert_eq!(encode_header(&mut header, OPCODE_BINARY, 70_000), 10);
        assert_eq!(header[1], 127);
        let close = encode_close(4400, &"é".repeat(100));
        assert!(close.len() <= 2 + 125);
    }

    #[test]
    fn unmasking_any_offset() {
        let mask = [0x11, 0x22, 0x33, 0x44];
        let plain: Vec<u8> = (0..40).collect();
        let mut masked = plain.clone();
        unmask(&mut masked, mask, 0);
        for split in 0..masked.len() {
            let mut copy = masked.clone();
            let (a, b) = copy.split_at_mut(split);
            unmask(a, mask, 0);
            unmask(b, mask, split);
            assert_eq!(copy, plain, "split at {split}");
        }
    }
}
