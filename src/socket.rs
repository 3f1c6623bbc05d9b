//! A websocket connection's socket, owned by its session (ARCHITECTURE.md,
//! "Sockets"). Reading fills a buffer shared by the whole thread and keeps
//! per connection only what a half-read frame needs; writing sends a
//! batch's frames in one vectored write straight from the buffers the room
//! shares with every session, and queues only what the socket did not take.
//! An idle connection holds no buffer at all.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::rc::Rc;
use std::time::{Duration, Instant};

use actix_rt::net::TcpStream;
use bytes::Bytes;
use futures_util::stream::{self, Stream};
use tokio::io::Interest;
use y_redis_protocol::websocket::{
    encode_close, encode_frame, encode_header, FrameError, FrameReader, Incoming, OPCODE_BINARY,
    OPCODE_PING, OPCODE_PONG,
};

use crate::own_messages::{OwnMessages, ECHO_KEEPALIVE};
use crate::streams::StreamEntry;

/// Bytes read per system call, into the thread's buffer.
const READ_CHUNK: usize = 64 * 1024;
/// Reads in a row before the connection lets the thread's other sockets
/// run: a client streaming a huge frame gets 256 KiB per turn.
const READS_PER_TURN: u32 = 4;
/// Pieces (headers and payloads) per vectored write.
const WRITE_SLICES: usize = 64;
/// How long a closing connection may take to write its last frames and
/// hear the client's end before its socket is dropped.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

thread_local! {
    static READ_BUFFER: RefCell<Vec<u8>> = RefCell::new(vec![0; READ_CHUNK]);
}

/// The reading side: whole messages and control frames, in order, until
/// the peer closes (or breaks the protocol: then one error, then the end).
pub fn incoming(
    stream: Rc<TcpStream>,
    early: Vec<u8>,
    max_message: usize,
) -> impl Stream<Item = Result<Incoming, FrameError>> {
    struct State {
        stream: Rc<TcpStream>,
        reader: FrameReader,
        ready: VecDeque<Incoming>,
        early: Vec<u8>,
        done: bool,
        reads_this_turn: u32,
    }
    let state = State {
        stream,
        reader: FrameReader::new(max_message),
        ready: VecDeque::new(),
        early,
        done: false,
        reads_this_turn: 0,
    };
    stream::unfold(state, |mut st| async move {
        loop {
            if let Some(message) = st.ready.pop_front() {
                if st.ready.is_empty() {
                    // An idle connection keeps no queue.
                    st.ready = VecDeque::new();
                }
                return Some((Ok(message), st));
            }
            if st.done {
                return None;
            }
            let State {
                reader,
                ready,
                early,
                ..
            } = &mut st;
            // Bytes the handshake read past the request come first.
            if !early.is_empty() {
                let bytes = std::mem::take(early);
                if let Err(e) = reader.feed(&bytes, |m| ready.push_back(m)) {
                    st.done = true;
                    return Some((Err(e), st));
                }
                continue;
            }
            if st.reads_this_turn == READS_PER_TURN {
                st.reads_this_turn = 0;
                tokio::task::yield_now().await;
            }
            st.reads_this_turn += 1;
            if st.stream.readable().await.is_err() {
                return None;
            }
            let read = READ_BUFFER.with(|buffer| -> io::Result<Option<Result<(), FrameError>>> {
                let mut buffer = buffer.borrow_mut();
                let n = read_draining(&st.stream, &mut buffer)?;
                if n == 0 {
                    return Ok(None);
                }
                if n < buffer.len() {
                    st.reads_this_turn = 0;
                }
                let State { reader, ready, .. } = &mut st;
                Ok(Some(reader.feed(&buffer[..n], |m| ready.push_back(m))))
            });
            match read {
                Ok(Some(Ok(()))) => {}
                Ok(Some(Err(e))) => {
                    st.done = true;
                    return Some((Err(e), st));
                }
                // The peer closed its side.
                Ok(None) => return None,
                // Drained: the next bytes start a new turn.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => st.reads_this_turn = 0,
                Err(_) => return None,
            }
        }
    })
}

/// Reads into `buffer`. A read that leaves room in the buffer drained the
/// socket: tokio is told so (as its own `AsyncRead` does), so that the next
/// read waits for the socket to become readable again instead of making a
/// system call only to hear `EAGAIN`, one per incoming frame otherwise.
/// (tokio forgets the readiness only if no new one came meanwhile.)
fn read_draining(stream: &TcpStream, buffer: &mut [u8]) -> io::Result<usize> {
    let mut drained = None;
    let read = stream.try_io(Interest::READABLE, || {
        let n = stream.try_read(buffer)?;
        if n > 0 && n < buffer.len() {
            drained = Some(n);
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(n)
    });
    match (read, drained) {
        (_, Some(n)) => Ok(n),
        (read, None) => read,
    }
}

/// What a flush achieved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flush {
    /// Everything queued is written.
    Done,
    /// The socket took what it could; wait until it is writable again.
    Blocked,
    /// The connection is gone.
    Failed,
}

/// The writing side: frames queued as (header, payload) pieces.
pub struct Outgoing {
    stream: Rc<TcpStream>,
    pieces: VecDeque<Bytes>,
    queued: usize,
    /// A write failed: the connection is gone.
    failed: bool,
    /// A close frame is queued (or the socket was shut): nothing may follow.
    closed: bool,
    /// When the socket last took bytes (or had nothing to take).
    progress: Instant,
}

impl Outgoing {
    pub fn new(stream: Rc<TcpStream>) -> Self {
        Outgoing {
            stream,
            pieces: VecDeque::new(),
            queued: 0,
            failed: false,
            closed: false,
            progress: Instant::now(),
        }
    }

    /// Bytes waiting for the socket.
    pub fn queued(&self) -> usize {
        self.queued
    }

    /// How long the socket has taken nothing while bytes waited.
    pub fn stalled_for(&self) -> std::time::Duration {
        if self.queued == 0 {
            std::time::Duration::ZERO
        } else {
            self.progress.elapsed()
        }
    }

    /// Queues a binary message (shared with other sessions: not copied).
    pub fn binary(&mut self, payload: Bytes) {
        let mut header = [0u8; 10];
        let n = encode_header(&mut header, OPCODE_BINARY, payload.len());
        self.push(Bytes::copy_from_slice(&header[..n]));
        self.push(payload);
    }

    /// Sends frames encoded by [`binary_frame`] (shared: not copied). With
    /// nothing queued they go straight from the shared buffers to the
    /// socket; only what it does not take is queued.
    pub fn frames(&mut self, frames: &[Bytes]) {
        if self.closed {
            return;
        }
        let mut rest = frames;
        if self.pieces.is_empty() && !self.failed {
            while !rest.is_empty() {
                let mut slices = [IoSlice::new(&[]); WRITE_SLICES];
                let count = rest.len().min(WRITE_SLICES);
                for (slot, frame) in slices.iter_mut().zip(rest) {
                    *slot = IoSlice::new(frame);
                }
                match self.stream.try_write_vectored(&slices[..count]) {
                    Ok(0) => {
                        self.failed = true;
                        return;
                    }
                    Ok(mut n) => {
                        self.progress = Instant::now();
                        while let Some((first, others)) = rest.split_first() {
                            if n < first.len() {
                                self.push(first.slice(n..));
                                rest = others;
                                break;
                            }
                            n -= first.len();
                            rest = others;
                        }
                        if !self.pieces.is_empty() {
                            break;
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(_) => {
                        self.failed = true;
                        return;
                    }
                }
            }
        }
        for frame in rest {
            self.push(frame.clone());
        }
    }

    pub fn ping(&mut self) {
        self.push(Bytes::from(encode_frame(OPCODE_PING, b"")));
    }

    pub fn pong(&mut self, payload: &[u8]) {
        self.push(Bytes::from(encode_frame(OPCODE_PONG, payload)));
    }

    pub fn close(&mut self, code: u16, reason: &str) {
        self.push(Bytes::from(encode_close(code, reason)));
        self.closed = true;
    }

    fn push(&mut self, piece: Bytes) {
        if self.closed {
            return;
        }
        if self.queued == 0 {
            self.progress = Instant::now();
        }
        self.queued += piece.len();
        self.pieces.push_back(piece);
    }

    /// Writes as much as the socket takes, several frames per system call.
    pub fn flush(&mut self) -> Flush {
        if self.failed {
            return Flush::Failed;
        }
        while !self.pieces.is_empty() {
            let mut slices = [IoSlice::new(&[]); WRITE_SLICES];
            let mut count = 0;
            for (slot, piece) in slices.iter_mut().zip(&self.pieces) {
                *slot = IoSlice::new(piece);
                count += 1;
            }
            match self.stream.try_write_vectored(&slices[..count]) {
                Ok(0) => return Flush::Failed,
                Ok(mut n) => {
                    self.queued -= n;
                    self.progress = Instant::now();
                    while let Some(front) = self.pieces.front_mut() {
                        if n < front.len() {
                            let _ = front.split_to(n);
                            break;
                        }
                        n -= front.len();
                        self.pieces.pop_front();
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Flush::Blocked,
                Err(_) => return Flush::Failed,
            }
        }
        // Nothing queued: an idle connection keeps no buffer (deliveries go
        // straight to the socket; only what it does not take is queued).
        self.pieces = VecDeque::new();
        Flush::Done
    }

    /// Drops what is queued and shuts the socket (a client that stopped reading).
    pub fn abort(&mut self) {
        self.pieces.clear();
        self.queued = 0;
        self.closed = true;
        shutdown(&self.stream);
    }

    pub fn stream(&self) -> &Rc<TcpStream> {
        &self.stream
    }
}

/// A session's [`Outgoing`], shared with its room (they run on one
/// thread): the room writes deliveries straight to the socket and wakes the
/// session only when it has something to do, so a delivery to a reader
/// costs one system call and no actor message.
pub struct Outlet {
    outgoing: RefCell<Outgoing>,
    /// The session wants to hear of every delivery (it has updates in
    /// flight or held, which a delivery may settle).
    watching: Cell<bool>,
    /// The client's own messages on their way through Redis, which
    /// deliveries leave out.
    own: RefCell<OwnMessages>,
    /// When the client last got a data frame (see [`ECHO_KEEPALIVE`]).
    last_data: Cell<Instant>,
}

/// What a delivery wrote.
pub struct Delivered {
    /// The session must act: it watches deliveries, or the socket did not
    /// take everything (the session waits for it and cuts off a client
    /// that stopped reading), or the connection is gone.
    pub wake: bool,
    pub frames: usize,
    pub bytes: usize,
}

impl Outlet {
    pub fn new(stream: Rc<TcpStream>) -> Rc<Self> {
        Rc::new(Outlet {
            outgoing: RefCell::new(Outgoing::new(stream)),
            watching: Cell::new(false),
            own: RefCell::default(),
            last_data: Cell::new(Instant::now()),
        })
    }

    /// Writes a delivery's frames, `frames[i]` carrying `entries[i]`
    /// (frames past the entries are not from the stream), except the
    /// client's own messages (see [`OwnMessages`]).
    pub fn deliver(&self, frames: &[Bytes], entries: &[&StreamEntry], now: Instant) -> Delivered {
        let mut out = self.outgoing.borrow_mut();
        let mut own = self.own.borrow_mut();
        // A copy of the list only once a frame is left out after others.
        let mut kept: Option<Vec<Bytes>> = None;
        if !own.is_empty() {
            let keepalive = now.saturating_duration_since(self.last_data.get()) >= ECHO_KEEPALIVE;
            for (i, frame) in frames.iter().enumerate() {
                let skip = entries.get(i).is_some_and(|e| own.take(e)) && !keepalive;
                match (&mut kept, skip) {
                    (None, true) => kept = Some(frames[..i].to_vec()),
                    (Some(kept), false) => kept.push(frame.clone()),
                    _ => {}
                }
            }
            if let Some(last) = entries.last() {
                own.forget_through(last.id);
            }
        }
        let frames = kept.as_deref().unwrap_or(frames);
        if !frames.is_empty() {
            out.frames(frames);
            self.last_data.set(now);
        }
        Delivered {
            wake: self.watching.get() || out.queued > 0 || out.failed,
            frames: frames.len(),
            bytes: frames.iter().map(Bytes::len).sum(),
        }
    }

    /// The client's own messages on their way to Redis (see
    /// [`OwnMessages::sending`]).
    pub fn own(&self) -> std::cell::RefMut<'_, OwnMessages> {
        self.own.borrow_mut()
    }

    pub fn is_watching(&self) -> bool {
        self.watching.get()
    }

    pub fn set_watching(&self, watching: bool) {
        self.watching.set(watching);
    }

    /// The session's own use of the socket (its sends, flushes, checks).
    pub fn outgoing(&self) -> std::cell::RefMut<'_, Outgoing> {
        self.outgoing.borrow_mut()
    }
}

/// A whole binary frame for `payload`: what a batch's message becomes once,
/// for every session that receives it.
pub fn binary_frame(payload: &[u8]) -> Bytes {
    Bytes::from(encode_frame(OPCODE_BINARY, payload))
}

/// Ends a stopped session's connection politely: writes what is still
/// queued (its close frame last), sends FIN, and discards what the client
/// still sends until it closes too, all within `CLOSE_GRACE` (2 s). Dropping a
/// socket with unread bytes makes the kernel send a reset, which can
/// destroy the close frame before the client reads it.
pub async fn linger(outlet: Rc<Outlet>) {
    let stream = outlet.outgoing().stream().clone();
    let finish = async {
        loop {
            // The borrow ends here: the room may still write (and be ignored).
            let flushed = outlet.outgoing().flush();
            match flushed {
                Flush::Done => break,
                Flush::Failed => return,
                Flush::Blocked => {
                    if stream.writable().await.is_err() {
                        return;
                    }
                }
            }
        }
        shut(&stream, std::net::Shutdown::Write);
        loop {
            if stream.readable().await.is_err() {
                return;
            }
            // Into the thread's buffer: a thousand closing sockets hold none.
            let read = READ_BUFFER.with(|buffer| stream.try_read(&mut buffer.borrow_mut()));
            match read {
                Ok(0) => return,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => return,
            }
        }
    };
    let _ = tokio::time::timeout(CLOSE_GRACE, finish).await;
}

/// Shuts both directions of the socket; the reading side then ends.
pub fn shutdown(stream: &TcpStream) {
    shut(stream, std::net::Shutdown::Both);
}

fn shut(stream: &TcpStream, how: std::net::Shutdown) {
    use std::os::fd::AsFd;
    if let Ok(fd) = stream.as_fd().try_clone_to_owned() {
        let _ = std::net::TcpStream::from(fd).shutdown(how);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(ms: u64, message: &'static [u8]) -> StreamEntry {
        let id = y_redis_protocol::StreamId { ms, seq: 0 };
        let message = Bytes::from_static(message);
        StreamEntry { id, message }
    }

    /// A socket pair: the outlet's end, and the client's end to read from.
    async fn connected() -> (Rc<Outlet>, tokio::net::TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let address = listener.local_addr().expect("address");
        let (client, server) =
            tokio::join!(tokio::net::TcpStream::connect(address), listener.accept());
        let server = server.expect("accept").0;
        (Outlet::new(Rc::new(server)), client.expect("connect"))
    }

    async fn read_available(client: &mut tokio::net::TcpStream) -> Vec<u8> {
        use tokio::io::AsyncReadExt;
        let mut got = vec![0; 1024];
        let n = tokio::time::timeout(Duration::from_secs(5), client.read(&mut got))
            .await
            .expect("the frames arrive")
            .expect("read");
        got.truncate(n);
        got
    }

    #[tokio::test]
    async fn a_delivery_leaves_out_own_messages_until_the_client_has_heard_nothing_for_a_while() {
        let (outlet, mut client) = connected().await;
        let (mine, theirs) = (entry(1, b"mine"), entry(2, b"theirs"));
        let frames = [binary_frame(&mine.message), binary_frame(&theirs.message)];
        let start = Instant::now();
        outlet.own().sending(std::slice::from_ref(&mine.message));
        let delivered = outlet.deliver(&frames, &[&mine, &theirs], start);
        assert_eq!((delivered.frames, delivered.bytes), (1, frames[1].len()));
        assert_eq!(read_available(&mut client).await, frames[1].to_vec());

        // Own messages go out when nothing went out for ECHO_KEEPALIVE.
        let again = entry(3, b"mine again");
        outlet.own().sending(std::slice::from_ref(&again.message));
        let frames = [binary_frame(&again.message)];
        let later = start + ECHO_KEEPALIVE;
        assert_eq!(outlet.deliver(&frames, &[&again], later).frames, 1);
        assert_eq!(read_available(&mut client).await, frames[0].to_vec());
        assert!(
            outlet.own().is_empty(),
            "an own message sent anyway is forgotten"
        );

        // Left out after a frame that goes.
        let (theirs, mine) = (entry(4, b"theirs again"), entry(5, b"mine once more"));
        outlet.own().sending(std::slice::from_ref(&mine.message));
        let frames = [binary_frame(&theirs.message), binary_frame(&mine.message)];
        assert_eq!(outlet.deliver(&frames, &[&theirs, &mine], later).frames, 1);
        assert_eq!(read_available(&mut client).await, frames[0].to_vec());
    }
}
