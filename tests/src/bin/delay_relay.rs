//! A UDP and TCP relay that delays every datagram and every chunk of a TCP stream by a fixed
//! time before it passes it on. The network-namespace tests run it in the router namespace to
//! add delay to a WAN link, because the test kernels have no netem qdisc.
//!
//! Usage: `fleetmesh-delay-relay --delay-ms MS [--udp LISTEN=TARGET]... [--tcp LISTEN=TARGET]...`
//! where LISTEN and TARGET are `IP:PORT`. Each UDP client (source address) gets its own upstream
//! socket, so replies find their way back. The relay prints its counters every second while
//! they change, one line each: `forwarded udp_datagrams=N tcp_bytes=M`.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// Largest UDP payload the relay reads; QUIC datagrams are far smaller.
const DATAGRAM_LEN_MAX: usize = 65_535;

/// Size of one read from a TCP stream.
const TCP_CHUNK_LEN: usize = 16 * 1024;

static UDP_DATAGRAMS: AtomicU64 = AtomicU64::new(0);
static TCP_BYTES: AtomicU64 = AtomicU64::new(0);

/// One `LISTEN=TARGET` mapping from the command line.
struct Mapping {
    listen: SocketAddr,
    target: SocketAddr,
}

/// A datagram waiting in the delay line.
struct HeldDatagram {
    due: Instant,
    socket: Arc<UdpSocket>,
    /// `None` sends on a connected socket.
    destination: Option<SocketAddr>,
    payload: Vec<u8>,
}

fn main() -> Result<()> {
    let (delay, udp, tcp) = parse_args(std::env::args().skip(1))?;

    // One delay line serves every UDP mapping. The delay is constant, so the queue is already
    // in due order.
    let (delay_line_tx, delay_line_rx) = mpsc::channel::<HeldDatagram>();
    thread::spawn(move || send_held_datagrams(delay_line_rx));

    for mapping in udp {
        let socket = UdpSocket::bind(mapping.listen)
            .with_context(|| format!("binding UDP {}", mapping.listen))?;
        let delay_line = delay_line_tx.clone();
        thread::spawn(move || {
            if let Err(err) = relay_udp(Arc::new(socket), mapping.target, delay, delay_line) {
                eprintln!("UDP relay to {} stopped: {err:#}", mapping.target);
            }
        });
    }
    for mapping in tcp {
        let listener = TcpListener::bind(mapping.listen)
            .with_context(|| format!("binding TCP {}", mapping.listen))?;
        thread::spawn(move || relay_tcp(listener, mapping.target, delay));
    }
    println!("relaying with a delay of {} ms", delay.as_millis());

    let mut printed = (0, 0);
    loop {
        thread::sleep(Duration::from_secs(1));
        let counts = (
            UDP_DATAGRAMS.load(Ordering::Relaxed),
            TCP_BYTES.load(Ordering::Relaxed),
        );
        if counts != printed {
            println!(
                "forwarded udp_datagrams={} tcp_bytes={}",
                counts.0, counts.1
            );
            printed = counts;
        }
    }
}

fn parse_args(
    args: impl Iterator<Item = String>,
) -> Result<(Duration, Vec<Mapping>, Vec<Mapping>)> {
    let mut delay = None;
    let mut udp = Vec::new();
    let mut tcp = Vec::new();
    let mut args = args.peekable();
    while let Some(flag) = args.next() {
        let value = args
            .next()
            .with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--delay-ms" => {
                let ms: u64 = value.parse().with_context(|| {
                    format!("invalid --delay-ms {value:?}: expected milliseconds")
                })?;
                delay = Some(Duration::from_millis(ms));
            }
            "--udp" => udp.push(parse_mapping(&value)?),
            "--tcp" => tcp.push(parse_mapping(&value)?),
            _ => bail!("unknown option {flag:?}; expected --delay-ms, --udp or --tcp"),
        }
    }
    let delay = delay.context("missing --delay-ms")?;
    Ok((delay, udp, tcp))
}

fn parse_mapping(text: &str) -> Result<Mapping> {
    let (listen, target) = text
        .split_once('=')
        .with_context(|| format!("invalid mapping {text:?}: expected LISTEN=TARGET"))?;
    Ok(Mapping {
        listen: listen
            .parse()
            .with_context(|| format!("invalid listen address {listen:?}: expected IP:PORT"))?,
        target: target
            .parse()
            .with_context(|| format!("invalid target address {target:?}: expected IP:PORT"))?,
    })
}

fn send_held_datagrams(delay_line: Receiver<HeldDatagram>) {
    for datagram in delay_line {
        let wait = datagram.due.saturating_duration_since(Instant::now());
        thread::sleep(wait);
        let sent = match datagram.destination {
            Some(destination) => datagram.socket.send_to(&datagram.payload, destination),
            None => datagram.socket.send(&datagram.payload),
        };
        // UDP may lose datagrams; a failed send is one more loss, like on a real link.
        if sent.is_ok() {
            UDP_DATAGRAMS.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Relays datagrams from clients of `listener` to `target` and the replies back.
fn relay_udp(
    listener: Arc<UdpSocket>,
    target: SocketAddr,
    delay: Duration,
    delay_line: Sender<HeldDatagram>,
) -> Result<()> {
    let mut upstreams: HashMap<SocketAddr, Arc<UdpSocket>> = HashMap::new();
    let mut buffer = vec![0u8; DATAGRAM_LEN_MAX];
    loop {
        let (len, client) = listener.recv_from(&mut buffer)?;
        let upstream = match upstreams.get(&client) {
            Some(upstream) => Arc::clone(upstream),
            None => {
                let bind: SocketAddr = if target.is_ipv4() {
                    "0.0.0.0:0".parse()?
                } else {
                    "[::]:0".parse()?
                };
                let upstream = Arc::new(UdpSocket::bind(bind)?);
                upstream.connect(target)?;
                let replies = Arc::clone(&upstream);
                let listener = Arc::clone(&listener);
                let delay_line = delay_line.clone();
                thread::spawn(move || {
                    relay_udp_replies(replies, listener, client, delay, delay_line)
                });
                upstreams.insert(client, Arc::clone(&upstream));
                upstream
            }
        };
        let datagram = HeldDatagram {
            due: Instant::now() + delay,
            socket: upstream,
            destination: None,
            payload: buffer[..len].to_vec(),
        };
        if delay_line.send(datagram).is_err() {
            bail!("the delay line stopped");
        }
    }
}

fn relay_udp_replies(
    upstream: Arc<UdpSocket>,
    listener: Arc<UdpSocket>,
    client: SocketAddr,
    delay: Duration,
    delay_line: Sender<HeldDatagram>,
) {
    let mut buffer = vec![0u8; DATAGRAM_LEN_MAX];
    loop {
        // A connected UDP socket reports ICMP errors from earlier sends here; they end nothing.
        let Ok(len) = upstream.recv(&mut buffer) else {
            continue;
        };
        let datagram = HeldDatagram {
            due: Instant::now() + delay,
            socket: Arc::clone(&listener),
            destination: Some(client),
            payload: buffer[..len].to_vec(),
        };
        if delay_line.send(datagram).is_err() {
            return;
        }
    }
}

/// Accepts TCP clients and relays each to a new connection to `target`.
fn relay_tcp(listener: TcpListener, target: SocketAddr, delay: Duration) {
    for client in listener.incoming() {
        let Ok(client) = client else {
            continue;
        };
        thread::spawn(move || {
            let Ok(upstream) = TcpStream::connect_timeout(&target, Duration::from_secs(10)) else {
                let _ = client.shutdown(Shutdown::Both);
                return;
            };
            let _ = client.set_nodelay(true);
            let _ = upstream.set_nodelay(true);
            let (Ok(client_reader), Ok(upstream_reader)) =
                (client.try_clone(), upstream.try_clone())
            else {
                return;
            };
            thread::spawn(move || pipe_with_delay(client_reader, upstream, delay));
            pipe_with_delay(upstream_reader, client, delay);
        });
    }
}

/// Copies `from` to `to`, writing each chunk `delay` after it was read. At the end of `from`,
/// it shuts down the write side of `to` once the held chunks are written.
fn pipe_with_delay(mut from: TcpStream, mut to: TcpStream, delay: Duration) {
    let (chunks_tx, chunks_rx) = mpsc::channel::<(Instant, Vec<u8>)>();
    let writer = thread::spawn(move || {
        for (due, chunk) in chunks_rx {
            thread::sleep(due.saturating_duration_since(Instant::now()));
            if to.write_all(&chunk).is_err() {
                break;
            }
            TCP_BYTES.fetch_add(chunk.len() as u64, Ordering::Relaxed);
        }
        let _ = to.shutdown(Shutdown::Write);
    });
    let mut buffer = vec![0u8; TCP_CHUNK_LEN];
    loop {
        match from.read(&mut buffer) {
            Ok(0) | Err(_) => break,
            Ok(len) => {
                if chunks_tx
                    .send((Instant::now() + delay, buffer[..len].to_vec()))
                    .is_err()
                {
                    break;
                }
            }
        }
    }
    drop(chunks_tx);
    let _ = writer.join();
}
