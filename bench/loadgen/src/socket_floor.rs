//! `socket-floor`: what writing fan-out frames to loopback sockets costs,
//! with no server around it. It bounds from below what any server on this
//! machine spends per delivered MB (bench/README.md, "The floor").
//!
//! The process accepts `--conns` loopback TCP connections from a reader
//! child (this binary again, with `--read-from`), which reads and discards.
//! `--threads` writer threads (as many as the server has HTTP workers) own
//! a share of the sockets each and write with plain blocking calls: no
//! event loop, no framing work, nothing but the system calls. Every
//! `--per-write / --rate` seconds each socket gets one `write` of
//! `--per-write` websocket frames of `--frame-bytes` bytes, so every
//! connection receives `--rate` frames a second. The figures are the
//! writer's CPU-seconds (utime + stime of this process, /proc/self/stat)
//! over `--duration` seconds, the MB written, and their ratio.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use clap::Parser;

#[derive(Parser, Debug, Clone)]
#[command(about = "CPU floor of writing fan-out frames to loopback sockets")]
struct Args {
    /// Connections (readers).
    #[arg(long, default_value_t = 1000)]
    conns: usize,
    /// Frames per second each connection receives.
    #[arg(long, default_value_t = 120.0)]
    rate: f64,
    /// Frames written per `write` call (1: one system call per frame).
    #[arg(long, default_value_t = 1)]
    per_write: usize,
    /// Bytes per frame, websocket header included.
    #[arg(long, default_value_t = 50)]
    frame_bytes: usize,
    /// Writer threads.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Seconds measured (after one second of warm-up).
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Run as the reader: connect `--conns` sockets to this address.
    #[arg(long)]
    read_from: Option<SocketAddr>,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    match args.read_from {
        Some(addr) => read_all(addr, args.conns),
        None => write_all(&args),
    }
}

/// CPU-seconds this process has used (user + system).
fn own_cpu_seconds() -> Result<f64, Box<dyn std::error::Error>> {
    let stat = std::fs::read_to_string("/proc/self/stat")?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat.rsplit_once(')').ok_or("unreadable /proc/self/stat")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let (Some(utime), Some(stime)) = (fields.get(11), fields.get(12)) else {
        return Err("unreadable /proc/self/stat".into());
    };
    let ticks = utime.parse::<f64>()? + stime.parse::<f64>()?;
    Ok(ticks / 100.0)
}

fn read_all(addr: SocketAddr, conns: usize) -> Result<(), Box<dyn std::error::Error>> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_io()
        .build()?;
    runtime.block_on(async move {
        let mut readers = Vec::with_capacity(conns);
        for _ in 0..conns {
            let mut stream = tokio::net::TcpStream::connect(addr).await?;
            readers.push(tokio::spawn(async move {
                use tokio::io::AsyncReadExt;
                let mut buffer = vec![0u8; 64 * 1024];
                while let Ok(n) = stream.read(&mut buffer).await {
                    if n == 0 {
                        break;
                    }
                }
            }));
        }
        for reader in readers {
            reader.await?;
        }
        Ok::<_, Box<dyn std::error::Error>>(())
    })?;
    println!("figure reader CPU-seconds: {:.2}", own_cpu_seconds()?);
    Ok(())
}

fn write_all(args: &Args) -> Result<(), Box<dyn std::error::Error>> {
    if args.conns == 0 || args.threads == 0 || args.per_write == 0 || args.rate <= 0.0 {
        return Err("--conns, --threads, --per-write and --rate must be above zero".into());
    }
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let mut reader = Command::new(std::env::current_exe()?)
        .args([
            "--read-from",
            &addr.to_string(),
            "--conns",
            &args.conns.to_string(),
        ])
        .stdout(Stdio::piped())
        .spawn()?;
    let mut sockets = Vec::with_capacity(args.conns);
    for _ in 0..args.conns {
        let (socket, _) = listener.accept()?;
        socket.set_nodelay(true)?;
        sockets.push(socket);
    }

    let frame = {
        let mut frame = vec![b'x'; args.frame_bytes.max(2)];
        frame[0] = 0x82; // FIN + binary
        frame[1] = (args.frame_bytes.max(2) - 2).min(125) as u8;
        frame
    };
    let batch = frame.repeat(args.per_write);
    let tick = Duration::from_secs_f64(args.per_write as f64 / args.rate);
    let warmup = Duration::from_secs(1);
    let measured = Duration::from_secs(args.duration);
    let start = Instant::now() + Duration::from_millis(100);

    let share = args.conns.div_ceil(args.threads);
    let mut threads = Vec::new();
    let mut sockets = sockets.into_iter();
    for _ in 0..args.threads {
        let mut own: Vec<TcpStream> = sockets.by_ref().take(share).collect();
        let batch = batch.clone();
        threads.push(std::thread::spawn(move || {
            // Counts writes made inside the measured window.
            let mut writes = 0u64;
            let mut next = start;
            loop {
                let now = Instant::now();
                if now < next {
                    std::thread::sleep(next - now);
                }
                let elapsed = next.saturating_duration_since(start);
                if elapsed >= warmup + measured {
                    break;
                }
                for socket in &mut own {
                    if socket.write_all(&batch).is_err() {
                        return writes;
                    }
                }
                if elapsed >= warmup {
                    writes += own.len() as u64;
                }
                next += tick;
            }
            writes
        }));
    }
    std::thread::sleep((start + warmup).saturating_duration_since(Instant::now()));
    let cpu_before = own_cpu_seconds()?;
    let began = Instant::now();
    let mut writes = 0u64;
    for thread in threads {
        writes += thread.join().map_err(|_| "a writer thread panicked")?;
    }
    let cpu = own_cpu_seconds()? - cpu_before;
    let seconds = began.elapsed().as_secs_f64();
    drop(sockets);

    let mb = (writes * batch.len() as u64) as f64 / 1e6;
    println!("figure connections: {}", args.conns);
    println!("figure frames per write: {}", args.per_write);
    println!("figure writes per second: {:.0}", writes as f64 / seconds);
    println!(
        "figure frames per second: {:.0} (asked {:.0})",
        (writes * args.per_write as u64) as f64 / seconds,
        args.rate * args.conns as f64
    );
    println!("figure MB written: {mb:.1}");
    println!("figure writer CPU-seconds: {cpu:.2}");
    println!("figure writer CPU-s per MB: {:.4}", cpu / mb);
    println!(
        "figure writer CPU µs per write: {:.2}",
        cpu * 1e6 / writes.max(1) as f64
    );
    let mut out = String::new();
    if let Some(mut stdout) = reader.stdout.take() {
        stdout.read_to_string(&mut out)?;
    }
    reader.wait()?;
    print!("{out}");
    Ok(())
}
