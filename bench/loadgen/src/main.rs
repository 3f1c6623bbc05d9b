//! `fanout`: a load generator for y-websocket servers (y-redis, @y/redis, or
//! any other), for the fan-out benchmarks in `bench/README.md`.
//!
//! Per room, `--writers` clients each insert `--payload` characters into a
//! shared Y.Text `--rate` times per second (real Yjs updates, built with
//! yrs), and every `--probe-ms` send an awareness state carrying the send
//! time. `--readers` clients per room only listen: they count the inserted
//! characters that reach them (so merged updates count the same as single
//! ones) and time the probes. Probes and updates take the same path through
//! a server, so probe latency is the queueing a message meets there.
//!
//! Timeline: connect everyone (`--connect-concurrency` at a time), warm up
//! for `--warmup` seconds with the writers running, then measure for
//! `--duration` seconds. Prints one `figure <name>: <value>` line per figure.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use y_redis_protocol::awareness::AwarenessEntries;
use y_redis_protocol::lib0::{write_var_bytes, write_var_uint, Decoder};
use yrs::{GetString, ReadTxn, StateVector, Text, Transact};

#[derive(Parser, Debug, Clone)]
#[command(about = "Fan-out load generator for y-websocket servers")]
struct Args {
    /// Server base URL (ws://host:port); repeat to spread clients round-robin.
    #[arg(long = "url", required = true)]
    urls: Vec<String>,
    #[arg(long, default_value_t = 10)]
    rooms: usize,
    /// Listening clients per room.
    #[arg(long, default_value_t = 10)]
    readers: usize,
    /// Writing clients per room.
    #[arg(long, default_value_t = 1)]
    writers: usize,
    /// More rooms with `readers` readers each and no writer: they only cost
    /// the servers what serving a quiet room costs.
    #[arg(long, default_value_t = 0)]
    quiet_rooms: usize,
    /// Updates per second per writer.
    #[arg(long, default_value_t = 10.0)]
    rate: f64,
    /// Characters inserted per update.
    #[arg(long, default_value_t = 32)]
    payload: usize,
    /// Milliseconds between a writer's awareness probes.
    #[arg(long, default_value_t = 100)]
    probe_ms: u64,
    /// Seconds of warm-up (writers running, nothing recorded).
    #[arg(long, default_value_t = 2)]
    warmup: u64,
    /// Seconds measured.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Appended to every room URL, e.g. `?yauth=<token>`.
    #[arg(long, default_value = "")]
    query: String,
    /// Room name prefix (a random tag is appended).
    #[arg(long, default_value = "fanout")]
    room_prefix: String,
    /// Connections opened at once.
    #[arg(long, default_value_t = 200)]
    connect_concurrency: usize,
    /// Spread the writers' schedules evenly over one probe period and one
    /// update period. By default every writer starts in step (as the
    /// reference generator does): all probes leave in the same millisecond,
    /// so latency includes draining each burst.
    #[arg(long)]
    spread: bool,
}

/// Bytes a client reads per system call.
const READ_BUFFER: usize = 4 * 1024;

/// Runs of this character are payload; shorter runs may be varints.
const PAYLOAD_CHAR: u8 = b'x';
const MIN_PAYLOAD_RUN: usize = 8;

#[derive(Default)]
struct Counters {
    updates_sent: AtomicU64,
    chars_sent: AtomicU64,
    chars_received: AtomicU64,
    doc_frames_received: AtomicU64,
    doc_bytes_received: AtomicU64,
    probes_sent: AtomicU64,
    connect_errors: AtomicU64,
    dropped_connections: AtomicU64,
}

struct Run {
    args: Args,
    counters: Counters,
    latency_us: Mutex<Histogram<u64>>,
}

/// The measured window (after connecting and warming up): updates count
/// when they arrive inside it, probes when they were sent inside it.
#[derive(Clone, Copy)]
struct Window {
    from: Instant,
    until: Instant,
    /// The same bounds on the clock probes carry (µs since the epoch).
    from_us: u64,
    until_us: u64,
}

impl Window {
    fn new(from: Instant, until: Instant) -> Self {
        let (now, now_us) = (Instant::now(), micros_now());
        let on_clock = |at: Instant| now_us + at.saturating_duration_since(now).as_micros() as u64;
        Window {
            from,
            until,
            from_us: on_clock(from),
            until_us: on_clock(until),
        }
    }

    fn now_inside(&self) -> bool {
        let now = Instant::now();
        now >= self.from && now < self.until
    }

    /// Whether a probe sent at `sent_us` counts: probes are counted by
    /// when they were sent, so a late one still counts as received.
    fn sent_inside(&self, sent_us: u64) -> bool {
        (self.from_us..self.until_us).contains(&sent_us)
    }
}

fn micros_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// Characters in runs of at least `MIN_PAYLOAD_RUN` payload characters.
fn payload_chars(frame: &[u8]) -> u64 {
    let mut total = 0;
    let mut run = 0;
    for &b in frame {
        if b == PAYLOAD_CHAR {
            run += 1;
            continue;
        }
        if run >= MIN_PAYLOAD_RUN {
            total += run as u64;
        }
        run = 0;
    }
    if run >= MIN_PAYLOAD_RUN {
        total += run as u64;
    }
    total
}

/// Probe send times found in an awareness message (`1, varUint8Array(update)`).
fn probe_times(frame: &[u8]) -> Vec<u64> {
    let mut d = Decoder::new(frame);
    let (Ok(1), Ok(update)) = (d.read_var_uint(), d.read_var_bytes()) else {
        return Vec::new();
    };
    let Ok(entries) = AwarenessEntries::new(update) else {
        return Vec::new();
    };
    entries
        .map_while(Result::ok)
        .filter_map(|(_, _, state)| {
            state
                .strip_prefix("{\"sent\":")?
                .strip_suffix('}')?
                .parse()
                .ok()
        })
        .collect()
}

fn sync_update_frame(update: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(update.len() + 4);
    write_var_uint(&mut frame, 0);
    write_var_uint(&mut frame, 2);
    write_var_bytes(&mut frame, update);
    frame
}

fn probe_frame(client: u64, clock: u64, sent_us: u64) -> Vec<u8> {
    let state = format!("{{\"sent\":{sent_us}}}");
    let mut update = Vec::with_capacity(state.len() + 16);
    write_var_uint(&mut update, 1);
    write_var_uint(&mut update, client);
    write_var_uint(&mut update, clock);
    write_var_bytes(&mut update, state.as_bytes());
    let mut frame = Vec::with_capacity(update.len() + 4);
    write_var_uint(&mut frame, 1);
    write_var_bytes(&mut frame, &update);
    frame
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(run: &Run, url: &str, gate: &Semaphore) -> Option<Socket> {
    let _permit = gate.acquire().await.ok()?;
    // A small read buffer: tungstenite zero-fills it before every read, and
    // the default 128 KiB made that the generator's main cost. No Nagle,
    // as the `ws` package (y-websocket's socket) does.
    let config = WebSocketConfig::default().read_buffer_size(READ_BUFFER);
    match tokio_tungstenite::connect_async_with_config(url, Some(config), true).await {
        Ok((socket, _)) => Some(socket),
        Err(e) => {
            if run.counters.connect_errors.fetch_add(1, Relaxed) < 3 {
                eprintln!("fanout: cannot connect {url}: {e}");
            }
            None
        }
    }
}

/// Listens until `stop`, counting payload and timing probes. Counts stay
/// local until the end: a shared counter per frame would cost more than
/// reading the frame.
async fn reader(run: Arc<Run>, mut socket: Socket, window: Window, stop: Instant) {
    let mut latencies = Vec::new();
    let (mut frames, mut bytes, mut chars) = (0u64, 0u64, 0u64);
    let deadline = tokio::time::sleep_until(stop.into());
    tokio::pin!(deadline);
    loop {
        let next = tokio::select! {
            next = socket.next() => next,
            () = &mut deadline => break,
        };
        let frame = match next {
            Some(Ok(Message::Binary(frame))) => frame,
            Some(Ok(_)) => continue,
            _ => {
                run.counters.dropped_connections.fetch_add(1, Relaxed);
                break;
            }
        };
        match frame.first() {
            Some(0) if window.now_inside() => {
                frames += 1;
                bytes += frame.len() as u64;
                chars += payload_chars(&frame);
            }
            Some(1) => {
                let now = micros_now();
                latencies.extend(
                    probe_times(&frame)
                        .into_iter()
                        .filter(|&sent| window.sent_inside(sent))
                        .map(|sent| now.saturating_sub(sent).max(1)),
                );
                if latencies.len() >= 256 {
                    record(&run, &mut latencies);
                }
            }
            _ => {}
        }
    }
    record(&run, &mut latencies);
    let c = &run.counters;
    c.doc_frames_received.fetch_add(frames, Relaxed);
    c.doc_bytes_received.fetch_add(bytes, Relaxed);
    c.chars_received.fetch_add(chars, Relaxed);
}

fn record(run: &Run, latencies: &mut Vec<u64>) {
    let mut histogram = run.latency_us.lock().unwrap_or_else(|e| e.into_inner());
    for latency in latencies.drain(..) {
        let _ = histogram.record(latency);
    }
}

/// Sends inserts at the rate and probes every `probe_ms` until `stop`.
/// `phase` (0 to 1) shifts its schedule by that share of each period.
async fn writer(run: Arc<Run>, socket: Socket, start: Instant, phase: f64, window: Window) {
    let stop = window.until;
    let (mut sink, mut stream) = socket.split();
    // Incoming traffic (the room's updates) is read and dropped.
    let drain = tokio::spawn(async move { while let Some(Ok(_)) = stream.next().await {} });
    let doc = yrs::Doc::new();
    let text = doc.get_or_insert_text("text");
    let client = doc.client_id().get();
    let chunk = (PAYLOAD_CHAR as char).to_string().repeat(run.args.payload);
    let period = Duration::from_secs_f64(1.0 / run.args.rate);
    let probe_period = Duration::from_millis(run.args.probe_ms);
    let (mut next_update, mut next_probe) = (
        start + period.mul_f64(phase),
        start + probe_period.mul_f64(phase),
    );
    let mut clock = 0;
    let mut before = StateVector::default();
    while Instant::now() < stop {
        tokio::time::sleep_until(next_update.min(next_probe).into()).await;
        let now = Instant::now();
        if now >= next_probe {
            clock += 1;
            let sent = micros_now();
            if sink
                .send(Message::Binary(probe_frame(client, clock, sent).into()))
                .await
                .is_err()
            {
                break;
            }
            if window.sent_inside(sent) {
                run.counters.probes_sent.fetch_add(1, Relaxed);
            }
            next_probe += probe_period;
        }
        if now >= next_update {
            let update = {
                let mut txn = doc.transact_mut();
                // Appending keeps the writer's own document one squashed
                // block, so computing each diff stays cheap.
                let at = text.len(&txn);
                text.insert(&mut txn, at, &chunk);
                txn.encode_diff_v1(&before)
            };
            before = doc.transact().state_vector();
            if sink
                .send(Message::Binary(sync_update_frame(&update).into()))
                .await
                .is_err()
            {
                break;
            }
            if window.now_inside() {
                run.counters.updates_sent.fetch_add(1, Relaxed);
                run.counters
                    .chars_sent
                    .fetch_add(run.args.payload as u64, Relaxed);
            }
            next_update += period;
        }
    }
    let _ = text.get_string(&doc.transact());
    let _ = sink.close().await;
    drain.abort();
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let tag = format!("{:x}", micros_now() & 0xff_ffff);
    let run = Arc::new(Run {
        counters: Counters::default(),
        latency_us: Mutex::new(
            Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("histogram bounds"),
        ),
        args,
    });
    let args = &run.args;
    let gate = Arc::new(Semaphore::new(args.connect_concurrency.max(1)));
    let url = |i: usize, room: usize| {
        format!(
            "{}/{}-{}-{}{}",
            args.urls[i % args.urls.len()],
            args.room_prefix,
            tag,
            room,
            args.query
        )
    };
    // Readers first, so the first probes find them in place.
    let connect_started = Instant::now();
    let mut readers = Vec::new();
    let mut writers = Vec::new();
    let mut i = 0;
    for room in 0..args.rooms + args.quiet_rooms {
        for _ in 0..args.readers {
            let (run, gate, url) = (run.clone(), gate.clone(), url(i, room));
            readers.push(tokio::spawn(
                async move { connect(&run, &url, &gate).await },
            ));
            i += 1;
        }
    }
    for room in 0..args.rooms {
        for _ in 0..args.writers {
            let (run, gate, url) = (run.clone(), gate.clone(), url(i, room));
            writers.push(tokio::spawn(
                async move { connect(&run, &url, &gate).await },
            ));
            i += 1;
        }
    }
    let mut reader_sockets = Vec::new();
    for task in readers {
        reader_sockets.extend(task.await.ok().flatten());
    }
    let mut writer_sockets = Vec::new();
    for task in writers {
        writer_sockets.extend(task.await.ok().flatten());
    }
    let connected = reader_sockets.len() + writer_sockets.len();
    let connect_secs = connect_started.elapsed().as_secs_f64();
    let start = Instant::now();
    let measure_from = start + Duration::from_secs(args.warmup);
    let stop = measure_from + Duration::from_secs(args.duration);
    let window = Window::new(measure_from, stop);
    // Markers for a script that measures server and Redis CPU over the window.
    let markers = tokio::spawn(async move {
        tokio::time::sleep_until(measure_from.into()).await;
        println!("mark measure-start");
        tokio::time::sleep_until(stop.into()).await;
        println!("mark measure-end");
    });
    let mut tasks = Vec::new();
    for socket in reader_sockets {
        tasks.push(tokio::spawn(reader(
            run.clone(),
            socket,
            window,
            stop + Duration::from_millis(500),
        )));
    }
    let writers = writer_sockets.len().max(1);
    for (i, socket) in writer_sockets.into_iter().enumerate() {
        let phase = if args.spread {
            i as f64 / writers as f64
        } else {
            0.0
        };
        tasks.push(tokio::spawn(writer(
            run.clone(),
            socket,
            start,
            phase,
            window,
        )));
    }
    for task in tasks {
        let _ = task.await;
    }
    let _ = markers.await;

    let c = &run.counters;
    let secs = args.duration as f64;
    let offered = c.chars_sent.load(Relaxed) as f64 * args.readers as f64;
    let delivered = c.chars_received.load(Relaxed) as f64;
    let histogram = run.latency_us.lock().unwrap_or_else(|e| e.into_inner());
    let ms = |q: f64| histogram.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "config rooms={} quiet_rooms={} readers={} writers={} rate={} payload={} probe_ms={} duration={}s urls={}",
        args.rooms,
        args.quiet_rooms,
        args.readers,
        args.writers,
        args.rate,
        args.payload,
        args.probe_ms,
        args.duration,
        args.urls.len()
    );
    println!("figure connections: {connected} in {connect_secs:.1} s");
    println!(
        "figure connection errors: {}",
        c.connect_errors.load(Relaxed)
    );
    println!(
        "figure dropped connections: {}",
        c.dropped_connections.load(Relaxed)
    );
    println!(
        "figure updates sent/s: {:.0}",
        c.updates_sent.load(Relaxed) as f64 / secs
    );
    println!("figure chars offered to readers/s: {:.0}", offered / secs);
    println!(
        "figure chars delivered to readers/s: {:.0}",
        delivered / secs
    );
    println!(
        "figure delivery ratio: {:.4}",
        if offered > 0.0 {
            delivered / offered
        } else {
            0.0
        }
    );
    println!(
        "figure doc frames delivered/s: {:.0}",
        c.doc_frames_received.load(Relaxed) as f64 / secs
    );
    println!(
        "figure doc bytes delivered/s: {:.0}",
        c.doc_bytes_received.load(Relaxed) as f64 / secs
    );
    println!(
        "figure probes: {} sent, {} received",
        c.probes_sent.load(Relaxed),
        histogram.len()
    );
    println!(
        "figure probe latency ms: p50 {:.2} p90 {:.2} p99 {:.2} max {:.2}",
        ms(0.5),
        ms(0.9),
        ms(0.99),
        histogram.max() as f64 / 1000.0
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_is_counted_in_runs() {
        assert_eq!(payload_chars(b"\x00xxxxxxxx\x01xx\x02xxxxxxxxxx"), 18);
        assert_eq!(payload_chars(b"xxxxxxx"), 0);
    }

    #[test]
    fn probes_round_trip() {
        let sent = micros_now();
        assert_eq!(probe_times(&probe_frame(7, 1, sent)), vec![sent]);
    }

    #[test]
    fn probes_count_by_when_they_were_sent() {
        let from = Instant::now() + Duration::from_secs(5);
        let window = Window::new(from, from + Duration::from_secs(10));
        let at = |secs: u64| micros_now() + secs * 1_000_000;
        assert!(!window.sent_inside(at(0)));
        assert!(window.sent_inside(at(6)));
        assert!(!window.sent_inside(at(16)));
    }
}
