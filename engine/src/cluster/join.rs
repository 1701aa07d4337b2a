//! Joining the cluster: Weir opens the TCP connections timely's exchange runs over, so that
//! every pair of processes first checks that they run the same cluster (decision 037).
//!
//! Timely's own handshake sends only the process index. Processes started with different
//! `--workers` then address workers that do not exist, and timely's receive thread panics
//! ("index out of bounds"). Here each connection starts with a hello both ways (Weir's
//! version, the process index, the hosts list, workers per process), and is handed to
//! timely only when the two agree. The convention is timely's: a process connects to every
//! process before it in the hosts list and accepts every process after it.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// Opens every hello; anything else on the cluster port is not a Weir process.
const MAGIC: &[u8; 8] = b"WEIRJOIN";
const MAX_HELLO: usize = 64 * 1024;
/// How long a connection may take to connect and say its whole hello before it is dropped.
const HELLO_TIMEOUT: Duration = Duration::from_secs(5);
const RETRY: Duration = Duration::from_millis(500);
/// How often "still waiting for process N" is logged.
const WAIT_REPORT: Duration = Duration::from_secs(30);

/// Moves whenever what processes exchange changes (the dataflow's streams and their
/// types), so builds that cannot run together do not join even at one crate version.
const PROTOCOL: u32 = 1;

/// What a process says about itself when it joins.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    pub protocol: u32,
    pub version: String,
    pub process: usize,
    pub hosts: Vec<String>,
    pub workers: usize,
}

impl Hello {
    pub fn new(process: usize, hosts: &[String], workers: usize) -> Hello {
        Hello {
            protocol: PROTOCOL,
            version: env!("CARGO_PKG_VERSION").to_string(),
            process,
            hosts: hosts.to_vec(),
            workers,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    /// Another process runs a cluster of a different shape: a configuration mistake that
    /// waiting does not fix.
    #[error("{0}")]
    Mismatch(String),
    #[error(
        "cannot listen for the cluster on {address} (this process's line in the hosts file): {source}"
    )]
    Listen {
        address: String,
        source: std::io::Error,
    },
    #[error("cannot start timely's network threads over the joined connections: {0}")]
    Network(std::io::Error),
    /// The other side of the join failed first.
    #[error("joining the cluster was abandoned")]
    Abandoned,
}

/// Connects to every other process, checking each says the same as `mine`. Blocks until
/// every process has joined. Returns one stream per process in hosts order, `None` at
/// this process's own index: what timely's networking is built from.
pub fn connect(mine: &Hello) -> Result<Vec<Option<TcpStream>>, JoinError> {
    let stop = AtomicBool::new(false);
    // Either side failing, a panic included, stops the other.
    let side = |f: &dyn Fn() -> Joined| {
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f))
            .unwrap_or(Err(JoinError::Abandoned));
        if r.is_err() {
            stop.store(true, Ordering::SeqCst);
        }
        r
    };
    let (before, after) = std::thread::scope(|s| {
        let before = s.spawn(|| side(&|| connect_before(mine, &stop)));
        let after = s.spawn(|| side(&|| accept_after(mine, &stop)));
        (joined(before), joined(after))
    });
    let (mut before, after) = match (before, after) {
        (Ok(b), Ok(a)) => (b, a),
        // The real error, not the other side's "abandoned".
        (Err(JoinError::Abandoned), Err(e)) | (Err(e), _) | (_, Err(e)) => return Err(e),
    };
    before.push(None);
    before.extend(after);
    Ok(before)
}

type Joined = Result<Vec<Option<TcpStream>>, JoinError>;

fn joined(handle: std::thread::ScopedJoinHandle<'_, Joined>) -> Joined {
    handle.join().unwrap_or(Err(JoinError::Abandoned))
}

/// Connections to processes `0..mine.process`, dialled until each answers.
fn connect_before(mine: &Hello, stop: &AtomicBool) -> Joined {
    let mut streams = Vec::with_capacity(mine.process);
    for (index, address) in mine.hosts.iter().enumerate().take(mine.process) {
        let mut reported = None::<Instant>;
        let stream = loop {
            if stop.load(Ordering::SeqCst) {
                return Err(JoinError::Abandoned);
            }
            match dial(address, mine) {
                Ok((stream, theirs)) => {
                    check(mine, &theirs, index)?;
                    break stream;
                }
                Err(why) => {
                    if reported.is_none_or(|t| t.elapsed() >= WAIT_REPORT) {
                        tracing::info!(process = index, %address, %why, "waiting for a process of the cluster");
                        reported = Some(Instant::now());
                    }
                    std::thread::sleep(RETRY);
                }
            }
        };
        streams.push(Some(stream));
    }
    Ok(streams)
}

fn dial(address: &str, mine: &Hello) -> Result<(TcpStream, Hello), String> {
    let target = address
        .to_socket_addrs()
        .map_err(|e| e.to_string())?
        .next()
        .ok_or_else(|| format!("{address} resolves to no address"))?;
    // Bounded, so a host that drops packets does not hold off `stop` for minutes.
    let mut stream =
        TcpStream::connect_timeout(&target, HELLO_TIMEOUT).map_err(|e| e.to_string())?;
    prepare(&stream).map_err(|e| e.to_string())?;
    write_hello(&mut stream, mine).map_err(|e| e.to_string())?;
    let theirs = read_hello(&mut stream)?;
    ready(&stream).map_err(|e| e.to_string())?;
    Ok((stream, theirs))
}

/// Connections from processes `mine.process + 1..`, accepted until each has said hello.
fn accept_after(mine: &Hello, stop: &AtomicBool) -> Joined {
    let later = mine.hosts.len().saturating_sub(mine.process + 1);
    let mut streams: Vec<Option<TcpStream>> = (0..later).map(|_| None).collect();
    if later == 0 {
        return Ok(streams);
    }
    let address = &mine.hosts[mine.process];
    let listen_error = |source| JoinError::Listen {
        address: address.clone(),
        source,
    };
    let listener = TcpListener::bind(address).map_err(listen_error)?;
    listener.set_nonblocking(true).map_err(listen_error)?;
    while streams.iter().any(Option::is_none) {
        if stop.load(Ordering::SeqCst) {
            return Err(JoinError::Abandoned);
        }
        let (mut stream, peer) = match listener.accept() {
            Ok(accepted) => accepted,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(RETRY / 5);
                continue;
            }
            Err(e) => {
                tracing::warn!(error = %e, "accepting a cluster connection failed");
                std::thread::sleep(RETRY);
                continue;
            }
        };
        let theirs = match prepare(&stream)
            .map_err(|e| e.to_string())
            .and_then(|()| read_hello(&mut stream))
        {
            Ok(h) => h,
            Err(why) => {
                // A stranger on the cluster port is dropped; it does not stop the join.
                tracing::warn!(%peer, %why, "dropped a connection to the cluster port that is not a Weir process");
                continue;
            }
        };
        // Answered before checking: the joining side finds a mismatch itself and stops.
        // This side only drops the connection, since any hello may reach this port and
        // only the one that dialled is sure which process it meant.
        if let Err(e) = write_hello(&mut stream, mine) {
            tracing::warn!(%peer, error = %e, "a joining process went away during its hello");
            continue;
        }
        let index = theirs.process;
        if let Err(JoinError::Mismatch(why)) = check(mine, &theirs, index) {
            tracing::error!(%peer, "a process that does not fit the cluster tried to join: {why}");
            continue;
        }
        let Some(slot) = index.checked_sub(mine.process + 1) else {
            tracing::warn!(%peer, process = index, "dropped a join from a process before this one (it should be dialled, not dial)");
            continue;
        };
        if let Err(e) = ready(&stream) {
            tracing::warn!(%peer, error = %e, "dropped a joining connection");
            continue;
        }
        // A process that restarted while the cluster formed replaces its earlier stream.
        streams[slot] = Some(stream);
    }
    Ok(streams)
}

/// Agreement on everything that decides which worker owns which partition. `index` is
/// where the hosts file puts the other process.
fn check(mine: &Hello, theirs: &Hello, index: usize) -> Result<(), JoinError> {
    let address = mine.hosts.get(index).map_or("?", String::as_str);
    let who = format!("process {} ({address})", theirs.process);
    let why = if theirs.protocol != mine.protocol || theirs.version != mine.version {
        format!(
            "{who} runs Weir {} (cluster protocol {}), this process runs {} (protocol {}): every process of a cluster runs the same build",
            theirs.version, theirs.protocol, mine.version, mine.protocol
        )
    } else if theirs.hosts != mine.hosts {
        format!(
            "{who} was started with another hosts file ({}), this process with ({}): every process needs the same hosts file (`cluster.hosts`), lines in the same order",
            theirs.hosts.join(", "),
            mine.hosts.join(", ")
        )
    } else if theirs.process >= mine.hosts.len() {
        format!(
            "a process says it is process {}, but the hosts file names {}",
            theirs.process,
            mine.hosts.len()
        )
    } else if theirs.process == mine.process {
        format!(
            "another process also runs as process {} (`cluster.process`, --process): each process of a cluster needs its own index",
            mine.process
        )
    } else if theirs.process != index {
        format!(
            "the process at {address} says it is process {}, the hosts file makes it process {index}: check its --process (`cluster.process`)",
            theirs.process
        )
    } else if theirs.workers != mine.workers {
        format!(
            "{who} runs {} worker(s), this process runs {}: every process of a cluster needs the same `engine.workers` (--workers); restart the one that differs",
            theirs.workers, mine.workers
        )
    } else {
        return Ok(());
    };
    Err(JoinError::Mismatch(why))
}

/// Reads are bounded by `read_by`'s deadline; writes here.
fn prepare(stream: &TcpStream) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_nodelay(true)?;
    stream.set_write_timeout(Some(HELLO_TIMEOUT))
}

/// Timely's threads block on these streams for as long as the cluster runs.
fn ready(stream: &TcpStream) -> std::io::Result<()> {
    stream.set_read_timeout(None)?;
    stream.set_write_timeout(None)
}

fn write_hello(stream: &mut TcpStream, hello: &Hello) -> std::io::Result<()> {
    let body = serde_json::to_vec(hello).map_err(std::io::Error::other)?;
    let len = u32::try_from(body.len()).map_err(std::io::Error::other)?;
    let mut frame = Vec::with_capacity(12 + body.len());
    frame.extend_from_slice(MAGIC);
    frame.extend_from_slice(&len.to_be_bytes());
    frame.extend_from_slice(&body);
    stream.write_all(&frame)
}

/// Fills `buf` by `deadline`: one limit for the whole hello, so a connection that trickles
/// bytes cannot hold the accept loop past it.
fn read_by(stream: &mut TcpStream, buf: &mut [u8], deadline: Instant) -> std::io::Result<()> {
    let mut filled = 0;
    while filled < buf.len() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(std::io::ErrorKind::TimedOut.into());
        }
        stream.set_read_timeout(Some(left))?;
        match stream.read(&mut buf[filled..]) {
            Ok(0) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn read_hello(stream: &mut TcpStream) -> Result<Hello, String> {
    let deadline = Instant::now() + HELLO_TIMEOUT;
    let mut head = [0u8; 12];
    read_by(stream, &mut head, deadline).map_err(|e| format!("no hello: {e}"))?;
    let (magic, len) = head.split_at(8);
    if magic != MAGIC {
        return Err(
            "it does not speak Weir's cluster protocol (an older Weir or another program?)".into(),
        );
    }
    let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
    if len > MAX_HELLO {
        return Err(format!("a hello of {len} bytes is too long"));
    }
    let mut body = vec![0u8; len];
    read_by(stream, &mut body, deadline).map_err(|e| format!("hello cut short: {e}"))?;
    serde_json::from_slice(&body).map_err(|e| format!("unreadable hello: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `n` distinct free ports: each listener is held until all are picked.
    fn hosts(n: usize) -> Vec<String> {
        let held: Vec<TcpListener> = (0..n)
            .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind"))
            .collect();
        held.iter()
            .map(|l| l.local_addr().expect("addr").to_string())
            .collect()
    }

    fn join_all(hellos: Vec<Hello>) -> Vec<Result<Vec<Option<TcpStream>>, JoinError>> {
        let threads: Vec<_> = hellos
            .into_iter()
            .map(|h| std::thread::spawn(move || connect(&h)))
            .collect();
        threads
            .into_iter()
            .map(|t| t.join().expect("no panic"))
            .collect()
    }

    #[test]
    fn three_processes_of_one_shape_join_with_a_stream_to_each_other() {
        let h = hosts(3);
        let results = join_all((0..3).map(|i| Hello::new(i, &h, 2)).collect());
        for (i, r) in results.into_iter().enumerate() {
            let streams = r.expect("joined");
            assert_eq!(streams.len(), 3);
            for (j, s) in streams.iter().enumerate() {
                assert_eq!(s.is_some(), i != j, "process {i}, stream {j}");
            }
        }
    }

    /// Process 0 waits for process 1; `odd` (as process 1) must be refused by itself, and
    /// process 0 must go on to join a right process 1.
    fn refused_then_joined(h: &[String], odd: Hello, needle: &str) {
        let first = Hello::new(0, h, 2);
        let waiting = std::thread::spawn(move || connect(&first));
        match connect(&odd) {
            Err(JoinError::Mismatch(why)) => assert!(why.contains(needle), "{why}"),
            other => panic!("expected a mismatch, got {other:?}"),
        }
        let right = connect(&Hello::new(1, h, 2)).expect("a right process 1 joins");
        assert!(right[0].is_some());
        let first = waiting.join().expect("no panic").expect("process 0 joined");
        assert!(first[1].is_some());
    }

    #[test]
    fn another_worker_count_is_refused_by_the_joining_process_naming_the_setting() {
        let h = hosts(2);
        refused_then_joined(
            &h,
            Hello::new(1, &h, 1),
            "runs 2 worker(s), this process runs 1: every process of a cluster needs the same `engine.workers`",
        );
    }

    #[test]
    fn another_hosts_file_or_build_is_refused() {
        let h = hosts(2);
        let mut other = h.clone();
        other.push("127.0.0.1:1".into());
        refused_then_joined(&h, Hello::new(1, &other, 2), "hosts file");
        let h = hosts(2);
        let mut newer = Hello::new(1, &h, 2);
        newer.protocol += 1;
        refused_then_joined(&h, newer, "same build");
    }

    #[test]
    fn a_hello_naming_a_process_beyond_the_hosts_file_is_dropped_without_panic() {
        let h = hosts(2);
        let first = Hello::new(0, &h, 2);
        let waiting = std::thread::spawn(move || connect(&first));
        let mut bogus = Hello::new(1, &h, 2);
        bogus.process = 99;
        let mut stream = loop {
            match TcpStream::connect(&h[0]) {
                Ok(s) => break s,
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        };
        write_hello(&mut stream, &bogus).expect("write");
        let _answer = read_hello(&mut stream).expect("process 0 answers before checking");
        let joined = connect(&Hello::new(1, &h, 2)).expect("the real process 1 joins");
        assert!(joined[0].is_some());
        assert!(waiting.join().expect("no panic").is_ok());
    }

    #[test]
    fn a_stranger_on_the_cluster_port_is_dropped_and_the_join_goes_on() {
        let h = hosts(2);
        let first = Hello::new(0, &h, 2);
        let waiting = std::thread::spawn(move || connect(&first));
        let mut stranger = loop {
            match TcpStream::connect(&h[0]) {
                Ok(s) => break s,
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        };
        stranger
            .write_all(b"GET / HTTP/1.1\r\n\r\n")
            .expect("write");
        let joined = connect(&Hello::new(1, &h, 2)).expect("the second process joins");
        assert!(joined[0].is_some());
        let first = waiting.join().expect("no panic").expect("joined");
        assert!(first[1].is_some());
    }
}
